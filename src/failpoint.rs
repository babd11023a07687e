//! Fault injection for tests of supervision: a named point in a thread panics when armed, so a
//! test can prove that the daemon notices a dead thread and that nothing leaks.
//!
//! Armed by `CTSENTRY_FAILPOINTS=name[@file][:count],…` (the first `count` hits fire; every hit
//! without a count; with `@file`, only hits on the file of that name) or by [`arm`] in unit
//! tests. Only debug builds (`cargo test`, `cargo build`) honour it: in a release build, as the
//! `.deb` installs it, nothing fires, so a box in service cannot be made to fail this way.
//!
//! Points ([`hit`] panics; at [`fires`] the caller chooses what fails):
//! - `scp-serve`: a DICOM association's thread, before the association is read (panics);
//! - `scp-accept`: the receiver's accept loop, after a connection is accepted (panics);
//! - `export-run`: the exporter thread, before each pass over its spool (panics);
//! - `worker-panic@file`, `worker-abort@file`: a scoring worker reading that file panics, or the
//!   whole process aborts;
//! - `engine-fail@file`: the engine call holding that file fails.

#[cfg(debug_assertions)]
use std::collections::HashMap;
#[cfg(debug_assertions)]
use std::sync::Mutex;

/// A point's key: its name and, for points on a file, the file's name.
#[cfg(debug_assertions)]
type Key = (String, Option<String>);

/// Armed points → hits left to fire on (`None`: every hit).
#[cfg(debug_assertions)]
static ARMED: Mutex<Option<HashMap<Key, Option<u32>>>> = Mutex::new(None);

#[cfg(debug_assertions)]
fn parse(spec: &str) -> HashMap<Key, Option<u32>> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (point, count) = match p.rsplit_once(':') {
                Some((point, n)) => (point, n.parse().ok()),
                None => (p, None),
            };
            let key = match point.split_once('@') {
                Some((name, file)) => (name.to_string(), Some(file.to_string())),
                None => (point.to_string(), None),
            };
            (key, count)
        })
        .collect()
}

#[cfg(debug_assertions)]
fn with_armed<T>(f: impl FnOnce(&mut HashMap<Key, Option<u32>>) -> T) -> T {
    let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
    f(armed.get_or_insert_with(|| std::env::var("CTSENTRY_FAILPOINTS").map(|s| parse(&s)).unwrap_or_default()))
}

/// Whether point `name` fires now (on `file`, for points on a file), counting the hit.
pub fn fires(name: &str, file: Option<&str>) -> bool {
    #[cfg(debug_assertions)]
    {
        with_armed(|points| {
            let keys = [(name.to_string(), file.map(str::to_string)), (name.to_string(), None)];
            let Some(key) = keys.iter().find(|k| points.contains_key(*k)) else { return false };
            let left = points.get_mut(key).expect("found above");
            match left {
                None => true,
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                Some(_) => false,
            }
        })
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = (name, file);
        false
    }
}

/// Panics when point `name` fires; otherwise does nothing.
pub fn hit(name: &str) {
    if fires(name, None) {
        panic!("failpoint {name} (CTSENTRY_FAILPOINTS)");
    }
}

/// Arms `name` for the next `count` hits (debug builds only; for unit tests).
pub fn arm(name: &str, count: u32) {
    #[cfg(debug_assertions)]
    with_armed(|points| points.insert((name.to_string(), None), Some(count)));
    #[cfg(not(debug_assertions))]
    let _ = (name, count);
}

/// The message of a thread's panic payload (what `panic!` was given), for the log.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_panics_as_often_as_it_was_armed() {
        assert_eq!(
            parse("a, b:2,c@x.dcm:1"),
            HashMap::from([(("a".to_string(), None), None), (("b".to_string(), None), Some(2)), (("c".to_string(), Some("x.dcm".to_string())), Some(1))])
        );
        arm("test-point", 2);
        for _ in 0..2 {
            let p = std::panic::catch_unwind(|| hit("test-point")).expect_err("armed");
            assert_eq!(panic_message(p.as_ref()), "failpoint test-point (CTSENTRY_FAILPOINTS)");
        }
        hit("test-point");
        hit("never-armed");
    }
}
