//! Fuzzes the DICOM receiver's whole network path as a scanner meets it: the bytes are sent over
//! loopback TCP to a real receiver (`net::scp::start`, the daemon's own), which checks the first
//! message, negotiates the association (dicom-ul's PDU reader), reads P-DATA, parses the DIMSE
//! command set (`net::dimse`) and writes instances into a temporary drop folder. A panic in any
//! of its threads aborts the process (libFuzzer's panic hook), a hang shows as a timeout.
//! Seeds: `fuzz/seed-scp.sh` records what DCMTK's echoscu and storescu send.
#![no_main]
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[global_allocator]
static GLOBAL: ctsentry::alloc_guard::GuardedAlloc = ctsentry::alloc_guard::GuardedAlloc;

/// The receiver's drop folder (emptied now and then: valid C-STOREs write files).
fn incoming() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ctsentry-fuzz-scp-{}", std::process::id()))
}

/// The receiver, started once: any caller, short ARTIM so that a truncated first message costs
/// little, room for many connections (the fuzzer does not wait for the receiver to finish).
fn receiver() -> SocketAddr {
    static RECEIVER: OnceLock<SocketAddr> = OnceLock::new();
    *RECEIVER.get_or_init(|| {
        let incoming = incoming();
        std::fs::create_dir_all(&incoming).expect("a drop folder");
        let settings = ctsentry::config::DicomSettings {
            enabled: true,
            ae_title: "CTSENTRY".into(),
            listen: "127.0.0.1:0".parse().expect("address"),
            allowed_callers: Vec::new(),
            max_associations: 64,
            max_associations_per_address: 64,
            // Most mutated inputs declare more bytes than they send: the receiver then waits for the
            // rest until ARTIM, which sets this target's pace.
            artim: Duration::from_millis(40),
            max_instance_bytes: 8 << 20,
            tls: None,
        };
        let l = ctsentry::net::scp::start(&settings, &incoming, None).expect("the receiver starts");
        l.addr
    })
}

fuzz_target!(|data: &[u8]| {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024 == 1023 {
        for f in std::fs::read_dir(incoming()).into_iter().flatten().flatten() {
            let _ = if f.path().is_dir() { std::fs::remove_dir_all(f.path()) } else { std::fs::remove_file(f.path()) };
        }
    }
    let addr = receiver();
    let Ok(mut s) = TcpStream::connect(addr) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    // Read what it answers until it closes: the connection's whole life, one input at a time.
    let mut sink = [0u8; 16384];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
});
