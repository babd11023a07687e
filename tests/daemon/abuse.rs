//! The receiver under abuse, bounded and on loopback: idle sockets, sockets renewed as fast as
//! they are closed, half-sent and oversized PDUs, callers with the right title from the wrong
//! address. The scanner's echo must still get through (within `artim_seconds + 4` s at worst)
//! and the daemon must keep running. Attackers call from other loopback addresses (127.0.0.N),
//! which Linux routes to the box like any other source.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::*;

/// A TCP connection to 127.0.0.1:`port` from the source address `from`.
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    // SAFETY: plain socket calls on a fresh descriptor, owned by the TcpStream on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let src = sa(from, 0);
        assert_eq!(libc::bind(fd, &src as *const _ as *const libc::sockaddr, len), 0, "bind {from}");
        let dst = sa(Ipv4Addr::LOCALHOST, port);
        assert_eq!(libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len), 0, "connect from {from}");
        TcpStream::from_raw_fd(fd)
    }
}

/// Whether the box closed `s` within `within` (a read returns end of file or an error).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // an A-ABORT or A-ASSOCIATE-RJ, then the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_malformed_connections_cannot_silence_the_receiver() {
    if !tools_installed(&[("echoscu", "apt-get install dcmtk")]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let artim = 2.0;
    let cfg = config(
        root,
        &format!(
            "[dicom]\nenabled = true\nae_title = \"CTSENTRY\"\nlisten = \"127.0.0.1:{port}\"\nmax_associations = 4\nmax_associations_per_address = 2\nartim_seconds = {artim:.1}\n\
             allowed_callers = [\"SCANNER@127.0.0.1\", \"REMOTE@10.0.0.0/8\"]\n"
        ),
    );
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut d = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "no receiver:\n{}", read_log());
    let echo = |aet: &str| Command::new("echoscu").args(["-to", "5", "-aet", aet, "-aec", "CTSENTRY", "127.0.0.1", &port.to_string()]).output().unwrap().status.success();
    assert!(echo("SCANNER"), "the scanner's echo before any abuse:\n{}", read_log());

    // One host opens sockets as fast as they are closed: it never holds more than its share.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                held.retain_mut(|s| !closed_within(s, Duration::from_millis(1)));
                while held.len() < 6 {
                    held.push(connect_from(Ipv4Addr::new(127, 0, 0, 2), port));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let t = Instant::now();
        assert!(echo("SCANNER"), "echo refused while one host renews idle sockets:\n{}", read_log());
        assert!(t.elapsed() < Duration::from_secs(3), "echo took {:?}", t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();
    assert!(read_log().contains("(dicom.max_associations_per_address)"), "{}", read_log());

    // Two hosts fill every place with idle sockets: the echo gets through once ARTIM closes them.
    std::thread::sleep(Duration::from_secs_f64(artim + 0.5)); // the renewer's sockets are gone
    let mut idle: Vec<TcpStream> = [3u8, 3, 4, 4].iter().map(|n| connect_from(Ipv4Addr::new(127, 0, 0, *n), port)).collect();
    let t = Instant::now();
    while !echo("SCANNER") {
        assert!(t.elapsed() < Duration::from_secs_f64(artim + 4.0), "the scanner was silenced for {:?}:\n{}", t.elapsed(), read_log());
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("echo through {:.1} s after four idle sockets took every place (artim {artim} s)", t.elapsed().as_secs_f64());
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(1)), "an idle socket was not closed by ARTIM");
    }
    assert!(read_log().contains("no A-ASSOCIATE-RQ within dicom.artim_seconds"), "{}", read_log());

    // A half-sent A-ASSOCIATE-RQ (header of 205 bytes, 10 sent) is an idle socket too; a PDU
    // declaring 4 GiB is refused without waiting for (or allocating) it.
    let mut half = connect_from(Ipv4Addr::new(127, 0, 0, 5), port);
    half.write_all(&[0x01, 0x00, 0x00, 0x00, 0x00, 0xCD, 0x00, 0x01, 0x00, 0x00]).unwrap();
    let mut huge = connect_from(Ipv4Addr::new(127, 0, 0, 6), port);
    huge.write_all(&[0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xF0, 0x00, 0x01]).unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut huge, Duration::from_secs_f64(artim + 2.0)), "a 4 GiB PDU was not refused");
    assert!(closed_within(&mut half, Duration::from_secs_f64(artim + 2.0)), "a half-sent PDU held its place");
    assert!(t.elapsed() < Duration::from_secs_f64(artim + 2.0));

    // The title is not enough: REMOTE may call only from 10.0.0.0/8.
    assert!(!echo("REMOTE"), "a title bound to 10.0.0.0/8 was accepted from 127.0.0.1");
    assert!(
        wait_until(Duration::from_secs(5), || read_log().contains("calling AE \"REMOTE\" at 127.0.0.1 (called \"CTSENTRY\") is not allowed from this address")),
        "{}",
        read_log()
    );
    assert!(!echo("INTRUDER"));
    assert!(echo("SCANNER"), "{}", read_log());
    assert!(d.try_wait().unwrap().is_none(), "the daemon must keep running:\n{}", read_log());
    // Nothing left spinning (dicom-ul retried a connection that ended inside its first PDU
    // as TLS, forever, before the receiver waited for whole first messages).
    let mut cut = connect_from(Ipv4Addr::new(127, 0, 0, 7), port);
    cut.write_all(&[0x01, 0x00, 0x00, 0x00]).unwrap();
    drop(cut);
    drop(connect_from(Ipv4Addr::new(127, 0, 0, 8), port));
    assert_idle(d.id(), &read_log());
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0), "{}", read_log());
}
