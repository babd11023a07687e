//! Fault injection for tests of supervision: a named point in a thread panics when armed, so a
//! test can prove that the daemon notices a dead thread and that nothing leaks.
//!
//! Armed by `CTSENTRY_FAILPOINTS=name[:count],…` (the first `count` hits panic; every hit
//! without a count) or by [`arm`] in unit tests. Only debug builds (`cargo test`, `cargo
//! build`) honour it: in a release build, as the `.deb` installs it, [`hit`] does nothing, so a
//! box in service cannot be made to fail this way.
//!
//! Points: `scp-serve` (a DICOM association's thread, before the association is read),
//! `scp-accept` (the receiver's accept loop, after a connection is accepted), `export-run` (the
//! exporter thread, before each pass over its spool).

#[cfg(debug_assertions)]
use std::collections::HashMap;
#[cfg(debug_assertions)]
use std::sync::Mutex;

/// Armed points: name → hits left to panic on (`None`: every hit).
#[cfg(debug_assertions)]
static ARMED: Mutex<Option<HashMap<String, Option<u32>>>> = Mutex::new(None);

#[cfg(debug_assertions)]
fn parse(spec: &str) -> HashMap<String, Option<u32>> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()),
            None => (p.to_string(), None),
        })
        .collect()
}

/// Panics when `name` is armed (and has hits left); otherwise does nothing.
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    {
        let fire = {
            let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
            let points = armed.get_or_insert_with(|| std::env::var("CTSENTRY_FAILPOINTS").map(|s| parse(&s)).unwrap_or_default());
            match points.get_mut(name) {
                Some(None) => true,
                Some(Some(n)) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if fire {
            panic!("failpoint {name} (CTSENTRY_FAILPOINTS)");
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Arms `name` for the next `count` hits (debug builds only; for unit tests).
pub fn arm(name: &str, count: u32) {
    #[cfg(debug_assertions)]
    {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        let points = armed.get_or_insert_with(|| std::env::var("CTSENTRY_FAILPOINTS").map(|s| parse(&s)).unwrap_or_default());
        points.insert(name.to_string(), Some(count));
    }
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
        assert_eq!(parse("a, b:2,"), HashMap::from([("a".to_string(), None), ("b".to_string(), Some(2))]));
        arm("test-point", 2);
        for _ in 0..2 {
            let p = std::panic::catch_unwind(|| hit("test-point")).expect_err("armed");
            assert_eq!(panic_message(p.as_ref()), "failpoint test-point (CTSENTRY_FAILPOINTS)");
        }
        hit("test-point");
        hit("never-armed");
    }
}
