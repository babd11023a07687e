//! Alert sinks on real kernel objects: the serial sink on a pseudo-terminal (the reading side
//! parses and checksum-verifies every message, acknowledges, drops and reconnects the line), and
//! the LED sink on a directory tree shaped like /sys/class/leds.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ctsentry::alert::led::{Lamp, LedSink, LedState, SysfsLeds};
use ctsentry::alert::protocol::{self, Line};
use ctsentry::alert::serial::SerialSink;
use ctsentry::alert::{AlertSink, Alerts, Cleared, Event, FaultKind, Health, SeriesKey, Stage};
use ctsentry::config::SerialSettings;
use serialport::TTYPort;

mod common;
use common::{led_tree, look, plug, read_lines};

fn settings(port: &Path, ack: bool) -> SerialSettings {
    SerialSettings {
        enabled: true,
        port: port.display().to_string(),
        baud: 115200,
        data_bits: 8,
        parity: 'N',
        stop_bits: 1,
        heartbeat_seconds: 3600.0,
        ack,
        ack_timeout_seconds: 0.15,
    }
}

fn ack(port: &mut TTYPort, seq: &str) {
    let mut l = Line::new();
    protocol::format_ack(seq.parse().unwrap(), &mut l);
    port.write_all(l.as_bytes()).unwrap();
}

fn key() -> SeriesKey {
    SeriesKey::of("1.2.826.0.1.3680043.8.498.77", 1)
}

#[test]
fn every_message_arrives_parsed_and_checksummed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyCTS");
    let mut master = plug(&link);
    let alerts = Alerts::start(vec![Box::new(SerialSink::new(settings(&link, false), "0.1.0;tiny-1"))]);
    let events = [
        Event::Ready { latched: None },
        Event::Scoring { busy: true }, // LED only: not on the line
        Event::Alert { key: key(), positives: 3, slices: 20, max_prob: 0.93, stage: Stage::Early },
        Event::Alert { key: key(), positives: 9, slices: 60, max_prob: 0.97, stage: Stage::Final },
        Event::Negative { key: SeriesKey::of("x", 2), positives: 0, slices: 150, max_prob: 0.2 },
        Event::Fault { kind: FaultKind::Disk },
        Event::Clear { what: Cleared::Fault(FaultKind::Disk) },
        Event::Clear { what: Cleared::Ack },
    ];
    for e in events {
        assert!(alerts.emit(e));
    }
    let mut buf = Vec::new();
    let lines = read_lines(&mut master, &mut buf, 7, Duration::from_secs(5));
    let k = key().to_string();
    let want: Vec<Vec<&str>> = vec![
        vec!["CTSEN", "1", "READY", "0.1.0;tiny-1", "CLEAR"],
        vec!["CTSEN", "2", "ALERT", &k, "3", "20", "0.930", "EARLY"],
        vec!["CTSEN", "3", "ALERT", &k, "9", "60", "0.970", "FINAL"],
        vec!["CTSEN", "4", "NEGATIVE", "2d711642.2", "0", "150", "0.200", "FINAL"],
        vec!["CTSEN", "5", "FAULT", "DISK"],
        vec!["CTSEN", "6", "CLEAR", "DISK"],
        vec!["CTSEN", "7", "CLEAR", "ACK"],
    ];
    assert_eq!(lines, want);
    // The series key is the hash of the UID, never a name.
    assert_eq!(k.len(), 8);
    alerts.stop();
}

#[test]
fn heartbeats_report_health() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyCTS");
    let mut master = plug(&link);
    let mut cfg = settings(&link, false);
    cfg.heartbeat_seconds = 1.0;
    let alerts = Alerts::start(vec![Box::new(SerialSink::new(cfg, "v"))]);
    alerts.emit(Event::Fault { kind: FaultKind::Engine });
    alerts.emit(Event::Alert { key: key(), positives: 2, slices: 2, max_prob: 0.9, stage: Stage::Early });
    let mut buf = Vec::new();
    let lines = read_lines(&mut master, &mut buf, 3, Duration::from_secs(4));
    assert_eq!(lines[2][2..], ["HEARTBEAT".to_string(), "FAULT".into(), "LATCHED".into(), key().to_string()], "{lines:?}");
    let _ = Health::Ok;
    alerts.stop();
}

#[test]
fn ack_mode_repeats_with_backoff_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyCTS");
    let mut master = plug(&link);
    // The sink's timer ticks every 100 ms: a 0.2 s first wait keeps the doubling measurable.
    let alerts = Alerts::start(vec![Box::new(SerialSink::new(SerialSettings { ack_timeout_seconds: 0.2, ..settings(&link, true) }, "v"))]);
    alerts.emit(Event::Alert { key: key(), positives: 2, slices: 5, max_prob: 0.8, stage: Stage::Early });
    alerts.emit(Event::Fault { kind: FaultKind::Engine });
    let mut buf = Vec::new();
    // Not acknowledged: the same message (same seq) again after 0.2 s, 0.4 s, 0.8 s ...
    let t0 = Instant::now();
    let mut times = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let l = read_lines(&mut master, &mut buf, 1, Duration::from_secs(3));
        assert_eq!(l.len(), 1, "a repeat must come");
        times.push(t0.elapsed().as_secs_f64());
        seen.push(l[0].clone());
    }
    assert!(seen.iter().all(|f| f[1] == "1" && f[2] == "ALERT"), "{seen:?}");
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] > gaps[0] * 1.5 && gaps[2] > gaps[1] * 1.5, "back-off doubles: {gaps:?}");
    // A corrupt ACK is ignored; a good one releases the next message.
    master.write_all(b"$CTACK,1*00\r\n").unwrap();
    ack(&mut master, "1");
    let l = read_lines(&mut master, &mut buf, 1, Duration::from_secs(3));
    assert_eq!(l[0][1..], ["2", "FAULT", "ENGINE"], "{l:?}");
    ack(&mut master, "2");
    alerts.stop();
}

#[test]
fn port_unplugged_and_replugged_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyCTS");
    let mut master = plug(&link);
    let sink = SerialSink::new(settings(&link, true), "v");
    let up = sink.port_up();
    let alerts = Alerts::start(vec![Box::new(sink)]);
    let mut buf = Vec::new();
    let mut received = Vec::new();
    for i in 0..3u32 {
        alerts.emit(Event::Alert { key: SeriesKey::of(&i.to_string(), 1), positives: i, slices: 10, max_prob: 0.9, stage: Stage::Early });
    }
    // Take two, acknowledge them; the third arrives but is not acknowledged before the unplug.
    for _ in 0..3 {
        let l = read_lines(&mut master, &mut buf, 1, Duration::from_secs(3));
        received.push(l[0][1].clone());
        if received.len() < 3 {
            ack(&mut master, &l[0][1]);
        }
    }
    // Unplug: the device and its name vanish; events keep coming.
    drop(master);
    std::fs::remove_file(&link).unwrap();
    for i in 3..6u32 {
        alerts.emit(Event::Alert { key: SeriesKey::of(&i.to_string(), 1), positives: i, slices: 10, max_prob: 0.9, stage: Stage::Early });
    }
    assert!(wait(|| !up.load(std::sync::atomic::Ordering::Relaxed)), "the sink notices the port is gone");
    std::thread::sleep(Duration::from_millis(300));
    // Replug (a new device behind the same name): the unacknowledged message and the rest come.
    let mut master = plug(&link);
    buf.clear();
    let mut after = Vec::new();
    while after.len() < 4 {
        let l = read_lines(&mut master, &mut buf, 1, Duration::from_secs(5));
        assert_eq!(l.len(), 1, "messages after replug: {after:?}");
        let seq = l[0][1].clone();
        if after.last() != Some(&seq) {
            after.push(seq.clone());
        }
        ack(&mut master, &seq);
    }
    assert_eq!(received, ["1", "2", "3"]);
    assert_eq!(after, ["3", "4", "5", "6"], "the unacknowledged one again, then the rest, in order");
    assert!(up.load(std::sync::atomic::Ordering::Relaxed));
    alerts.stop();
}

/// What the sink writes as it stops (STOPPING, the daemon's last word) reaches the line before
/// it closes the port, and stays readable after the port is closed (the daemon has exited by the
/// time a slow reader looks): the reading side must not take the hang-up for the end of data.
#[test]
fn the_last_messages_before_stop_are_read_after_the_port_closed() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyCTS");
    let mut master = plug(&link);
    let alerts = Alerts::start(vec![Box::new(SerialSink::new(settings(&link, false), "0.1.0;tiny-1"))]);
    alerts.emit(Event::Ready { latched: None });
    alerts.emit(Event::Stopping);
    alerts.stop();
    // The port is closed now: the reader only comes later.
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = Vec::new();
    let lines = read_lines(&mut master, &mut buf, 2, Duration::from_secs(5));
    let got: Vec<&str> = lines.iter().map(|l| l[2].as_str()).collect();
    assert_eq!(got, ["READY", "STOPPING"], "{lines:?}");
}

fn wait(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn leds_follow_every_state_transition() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = led_tree(dir.path());
    let mut sink = LedSink::new(Box::new(SysfsLeds::open(dirs.clone()).unwrap()));
    let s = |v: [&str; 3]| v.map(String::from);
    assert_eq!(look(&dirs), s(["off", "off", "off"]), "not running");
    let steps: Vec<(Event, [&str; 3])> = vec![
        (Event::Ready { latched: None }, ["on", "off", "off"]),
        (Event::Scoring { busy: true }, ["blink", "off", "off"]),
        (Event::Alert { key: key(), positives: 2, slices: 3, max_prob: 0.9, stage: Stage::Early }, ["blink", "on", "off"]),
        (Event::Scoring { busy: false }, ["on", "on", "off"]),
        (Event::Degraded { on: true }, ["on", "on", "on"]),
        (Event::Fault { kind: FaultKind::Disk }, ["off", "blink", "on"]),
        (Event::Fault { kind: FaultKind::Serial }, ["off", "blink", "on"]),
        (Event::Clear { what: Cleared::Fault(FaultKind::Disk) }, ["off", "blink", "on"]),
        (Event::Clear { what: Cleared::Fault(FaultKind::Serial) }, ["on", "on", "on"]),
        (Event::Clear { what: Cleared::Ack }, ["on", "off", "on"]),
        (Event::Degraded { on: false }, ["on", "off", "off"]),
        (Event::Negative { key: key(), positives: 0, slices: 9, max_prob: 0.1 }, ["on", "off", "off"]),
    ];
    for (e, want) in steps {
        sink.handle(&e);
        assert_eq!(look(&dirs), s(want), "after {e:?}");
    }
    sink.shutdown();
    assert_eq!(look(&dirs), s(["off", "off", "off"]), "stopped");
    // A latched alert from before a restart shows at once.
    let mut st = LedState::default();
    st.apply(&Event::Ready { latched: Some(key()) });
    assert_eq!(st.lamps(), [Lamp::On, Lamp::On, Lamp::Off]);
    // A missing LED is a clear error naming the file.
    let err = SysfsLeds::open([dir.path().join("nope"), dirs[1].clone(), dirs[2].clone()]).err().unwrap().to_string();
    assert!(err.contains("nope/brightness"), "{err}");
}

#[test]
fn readme_examples_carry_valid_checksums() {
    // The README's examples are exactly what the formatter writes for these events.
    let k1 = SeriesKey { hash: *b"1a2b3c4d", part: 1 };
    let k2 = SeriesKey { hash: *b"2d711642", part: 2 };
    let events = [
        Event::Ready { latched: None },
        Event::Fault { kind: FaultKind::Model },
        Event::Clear { what: Cleared::Fault(FaultKind::Model) },
        Event::Alert { key: k1, positives: 3, slices: 40, max_prob: 0.912, stage: Stage::Early },
        Event::Heartbeat { health: Health::Ok, latched: Some(k1) },
        Event::Reject { why: ctsentry::alert::RejectKind::Content },
        Event::Clear { what: Cleared::Ack },
        Event::Negative { key: k2, positives: 0, slices: 150, max_prob: 0.2 },
        Event::Stopping,
    ];
    let expected: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut l = Line::new();
            protocol::format(i as u32 + 1, e, "0.1.0;densenet121-covid-1.0.0", &mut l).unwrap();
            l.trim_end().to_string()
        })
        .collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples: Vec<&str> = readme.lines().filter(|l| l.starts_with("$CTSEN,")).collect();
    assert_eq!(examples, expected, "README.md's serial examples");
    for l in examples {
        protocol::parse(l).unwrap_or_else(|e| panic!("README example {l:?}: {e:?}"));
    }
}
