//! Monitoring: the Prometheus text format at `/metrics` and health at `/healthz`, served on
//! `[metrics] listen` (loopback by default) by a small HTTP/1.1 server on its own thread.
//!
//! Names (DESIGN.md), all prefixed `ctsentry_`: `slices_scored_total`, `series_total{verdict}`,
//! `alerts_total{stage}`, `files_quarantined_total`, `inference_seconds` (histogram per engine
//! call), `queue_files`, `open_series`, `fault{kind}` (0/1), `alert_latched` (0/1); also
//! `dicom_associations_total`, `dicom_refused_total`, `dicom_refused_callers_total`,
//! `dicom_connections_closed_total`, `dicom_instances_stored_total`,
//! `dicom_instances_failed_total` when the receiver runs. `/healthz`: 200 `ok` while running
//! without faults, 503 naming the faults otherwise.

use std::fmt::Write as _;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alert::FaultKind;
use crate::config::Secret;

/// Upper bounds (seconds) of the inference histogram's buckets.
pub const INFERENCE_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram with fixed buckets, updated from any thread.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 10],
    over: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        match INFERENCE_BUCKETS.iter().position(|&b| seconds <= b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// What the daemon reports; counters only grow, gauges are set once a second.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Slices scored and journalled (a file scored again after a failed batch counts once).
    pub slices_scored: AtomicU64,
    /// Final verdicts, positive.
    pub series_positive: AtomicU64,
    /// Final verdicts, negative.
    pub series_negative: AtomicU64,
    /// Alerts raised, early.
    pub alerts_early: AtomicU64,
    /// Alerts raised, final.
    pub alerts_final: AtomicU64,
    /// Files quarantined.
    pub files_quarantined: AtomicU64,
    /// Seconds per engine call (the scoring workers observe it).
    pub inference: Histogram,
    /// Gauges.
    pub gauges: Mutex<Gauges>,
    /// The DICOM receiver's counters, when it runs.
    pub dicom: Mutex<Option<Arc<crate::net::scp::ScpStats>>>,
    /// Result objects stored by the PACS (`[export]`).
    pub exported: AtomicU64,
    /// Result objects the PACS refused for good.
    pub export_refused: AtomicU64,
    /// Whether export is on (its families are shown only then).
    pub export_enabled: std::sync::atomic::AtomicBool,
}

/// The gauges of [`Metrics`].
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Files waiting.
    pub queue: usize,
    /// Series open.
    pub open_series: usize,
    /// Faults on.
    pub faults: Vec<FaultKind>,
    /// Whether an alert is latched.
    pub latched: bool,
    /// Result objects waiting in the export spool.
    pub export_queue: usize,
    /// The reasons of the current drift (None: no drift, or not watched).
    pub drift: Option<String>,
    /// When the daemon's control loop last set these (None: not yet running).
    pub updated: Option<std::time::Instant>,
}

/// A control loop silent this long makes `/healthz` answer 503 (it reports once a second).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

impl Metrics {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let family = |o: &mut String, name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(o, "# HELP ctsentry_{name} {help}\n# TYPE ctsentry_{name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(o, "ctsentry_{name}{labels} {v}");
            }
        };
        family(
            &mut o,
            "slices_scored_total",
            "counter",
            "Slices scored and journalled, each once (slices without lung, not sent to the engine, included).",
            &[(String::new(), c(&self.slices_scored) as f64)],
        );
        family(
            &mut o,
            "series_total",
            "counter",
            "Final series verdicts.",
            &[("{verdict=\"positive\"}".into(), c(&self.series_positive) as f64), ("{verdict=\"negative\"}".into(), c(&self.series_negative) as f64)],
        );
        family(
            &mut o,
            "alerts_total",
            "counter",
            "Alerts raised.",
            &[("{stage=\"early\"}".into(), c(&self.alerts_early) as f64), ("{stage=\"final\"}".into(), c(&self.alerts_final) as f64)],
        );
        family(&mut o, "files_quarantined_total", "counter", "Files moved to quarantine.", &[(String::new(), c(&self.files_quarantined) as f64)]);
        let mut cumulative = 0;
        let mut lines: Vec<(String, f64)> = INFERENCE_BUCKETS
            .iter()
            .zip(&self.inference.counts)
            .map(|(b, n)| {
                cumulative += c(n);
                (format!("_bucket{{le=\"{b}\"}}"), cumulative as f64)
            })
            .collect();
        let count = cumulative + c(&self.inference.over);
        lines.push(("_bucket{le=\"+Inf\"}".into(), count as f64));
        lines.push(("_sum".into(), c(&self.inference.sum_micros) as f64 / 1e6));
        lines.push(("_count".into(), count as f64));
        family(&mut o, "inference_seconds", "histogram", "Seconds per engine call (one batch).", &lines);
        family(&mut o, "queue_files", "gauge", "Files waiting to be scored.", &[(String::new(), g.queue as f64)]);
        family(&mut o, "open_series", "gauge", "Series not yet complete.", &[(String::new(), g.open_series as f64)]);
        let faults: Vec<(String, f64)> = FaultKind::ALL.iter().map(|k| (format!("{{kind=\"{}\"}}", k.name()), f64::from(u8::from(g.faults.contains(k))))).collect();
        family(&mut o, "fault", "gauge", "1 while the fault is on.", &faults);
        family(&mut o, "alert_latched", "gauge", "1 while an alert waits for acknowledgement.", &[(String::new(), f64::from(u8::from(g.latched)))]);
        family(
            &mut o,
            "drift",
            "gauge",
            "1 while the recent series depart from the drift reference (DEGRADED,DRIFT); 0 otherwise or when not watched.",
            &[(String::new(), f64::from(u8::from(g.drift.is_some())))],
        );
        if let Some(d) = self.dicom.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            family(&mut o, "dicom_associations_total", "counter", "DICOM associations accepted.", &[(String::new(), c(&d.associations) as f64)]);
            family(&mut o, "dicom_refused_total", "counter", "DICOM associations refused.", &[(String::new(), c(&d.refused) as f64)]);
            family(
                &mut o,
                "dicom_refused_callers_total",
                "counter",
                "DICOM associations refused by dicom.allowed_callers (title or source address).",
                &[(String::new(), c(&d.refused_callers) as f64)],
            );
            family(
                &mut o,
                "dicom_connections_closed_total",
                "counter",
                "DICOM connections closed before an association: no A-ASSOCIATE-RQ within dicom.artim_seconds, or too many from one address.",
                &[(String::new(), c(&d.closed_idle) as f64)],
            );
            family(&mut o, "dicom_instances_stored_total", "counter", "DICOM instances written into the drop folder.", &[(String::new(), c(&d.stored) as f64)]);
            family(&mut o, "dicom_instances_failed_total", "counter", "DICOM instances answered with a failure.", &[(String::new(), c(&d.failed) as f64)]);
        }
        if self.export_enabled.load(Ordering::Relaxed) {
            family(
                &mut o,
                "export_objects_total",
                "counter",
                "Result objects (SR, heat maps) sent to the PACS.",
                &[("{result=\"stored\"}".into(), c(&self.exported) as f64), ("{result=\"refused\"}".into(), c(&self.export_refused) as f64)],
            );
            family(&mut o, "export_queue_objects", "gauge", "Result objects waiting to be sent to the PACS.", &[(String::new(), g.export_queue as f64)]);
        }
        o
    }

    /// `/healthz`: 200 and `ok` without faults (`degraded: drift: …` while drifting: the box still
    /// scores and alerts), else 503 and the faults.
    pub fn health(&self) -> (u16, String) {
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(silent) = g.updated.map(|t| t.elapsed()).filter(|e| *e > STALE_AFTER) {
            return (503, format!("stalled: the daemon's control loop has not reported for {} s\n", silent.as_secs()));
        }
        if let (true, Some(why)) = (g.faults.is_empty(), &g.drift) {
            (200, format!("degraded: drift: {why}\n"))
        } else if g.faults.is_empty() {
            (200, "ok\n".into())
        } else {
            (503, format!("faults: {}\n", g.faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")))
        }
    }
}

/// Serves `/metrics`, `/healthz`, and with a `site` the admin's page (`/`, `/api/status`, the
/// heat maps it shows under `/heatmaps/`) on `listen` from a background thread; returns the
/// address bound (an error when it cannot be bound) and the server's thread (named `metrics`),
/// which the daemon supervises.
/// With a `token`, everything but `/healthz` answers only requests that carry
/// `Authorization: Bearer TOKEN` or the cookie that `/login?token=TOKEN` sets (401 otherwise);
/// `/healthz` stays open (it names faults, nothing of a patient).
pub fn serve(listen: SocketAddr, metrics: Arc<Metrics>, token: Option<Secret>, site: Option<crate::page::Site>) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for conn in listener.incoming() {
            let Ok(conn) = conn else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            // A few at a time, each on its own thread with a deadline: a slow client cannot
            // hold the others up for more than REQUEST_DEADLINE.
            let Some(slot) = crate::net::scp::Slot::take(&busy, MAX_CONNECTIONS) else { continue };
            let (m, t, site) = (metrics.clone(), token.clone(), site.clone());
            let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
                let _slot = slot;
                if let Err(e) = answer(conn, &m, t.as_ref(), site.as_ref()) {
                    log::debug!("metrics: {e}");
                }
            });
            if let Err(e) = spawned {
                log::warn!("metrics: cannot start a thread for a connection: {e}");
            }
        }
    })?;
    log::info!("metrics: Prometheus text at http://{addr}/metrics, health at http://{addr}/healthz, the admin's page at http://{addr}/");
    Ok((addr, thread))
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 4;
/// Time a client has to send its request head.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8192;

/// The cookie `/login` sets for a browser.
const COOKIE: &str = "ctsentry_token";

/// Whether the request head carries `Authorization: Bearer TOKEN`, or the cookie, with `token`.
fn authorized(head: &str, token: &Secret) -> bool {
    head.lines().skip(1).filter_map(|l| l.split_once(':')).any(|(name, value)| {
        let (name, value) = (name.trim(), value.trim());
        (name.eq_ignore_ascii_case("authorization") && value.strip_prefix("Bearer ").is_some_and(|t| token.matches(t.trim())))
            || (name.eq_ignore_ascii_case("cookie") && value.split(';').filter_map(|c| c.trim().split_once('=')).any(|(k, v)| k == COOKIE && token.matches(v.trim())))
    })
}

/// Whether the request names a loopback host (`Host: 127.0.0.1:9464`, `localhost`, `[::1]`), or
/// none. Without a token the server listens on loopback only, and this keeps a web page on some
/// other site from reading it through a name that resolves to 127.0.0.1 (DNS rebinding).
fn loopback_host(head: &str) -> bool {
    let Some(host) = head.lines().skip(1).filter_map(|l| l.split_once(':')).find(|(n, _)| n.trim().eq_ignore_ascii_case("host")).map(|(_, v)| v.trim()) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The value of `key` in a query string (`a=1&b=2`), percent-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(c) => {
                        out.push(c);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// The page a browser gets without the token: a form that sends it to `/login`.
const LOGIN_PAGE: &str = "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ctsentry</title></head><body style=\"font-family:sans-serif\">\
<h1>ctsentry</h1><p>This page needs the box's token (<code>[metrics] token</code>).</p>\
<form action=\"/login\" method=\"get\"><input type=\"password\" name=\"token\" autocomplete=\"current-password\"> <button>Open</button></form></body></html>\n";

/// One response: status, content type, extra header lines, body.
struct Reply {
    status: u16,
    kind: &'static str,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, kind: "text/plain; charset=utf-8", headers: String::new(), body: body.into().into_bytes() }
    }
    fn of(status: u16, kind: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status, kind, headers: String::new(), body: body.into() }
    }
}

fn answer(stream: TcpStream, metrics: &Metrics, token: Option<&Secret>, site: Option<&crate::page::Site>) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let mut reader = &stream;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = REQUEST_DEADLINE.checked_sub(start.elapsed()).filter(|d| !d.is_zero()).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"))?;
        stream.set_read_timeout(Some(left))?;
        let n = std::io::Read::read(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_BYTES {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    let request = String::from_utf8_lossy(&head);
    let mut parts = request.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let allowed = match token {
        Some(t) => authorized(&request, t),
        None => loopback_host(&request),
    };
    let html = "text/html; charset=utf-8";
    let reply = match (method, path, site) {
        ("GET", "/healthz", _) => {
            let (s, b) = metrics.health();
            Reply::text(s, b)
        }
        ("GET", "/login", _) => match (token, query_value(query, "token")) {
            (Some(t), Some(given)) if t.matches(given.trim()) => Reply {
                status: 303,
                kind: "text/plain; charset=utf-8",
                headers: format!("Location: /\r\nSet-Cookie: {COOKIE}={}; HttpOnly; SameSite=Strict; Path=/\r\n", given.trim()),
                body: b"see /\n".to_vec(),
            },
            (None, _) => Reply { status: 303, kind: "text/plain; charset=utf-8", headers: "Location: /\r\n".into(), body: b"see /\n".to_vec() },
            _ => Reply::of(401, html, LOGIN_PAGE),
        },
        ("GET", "/" | "/index.html", Some(_)) if !allowed && token.is_some() => Reply::of(401, html, LOGIN_PAGE),
        ("GET", _, _) if !allowed && token.is_none() => Reply::text(403, "only for Host 127.0.0.1, localhost or [::1]\n"),
        ("GET", _, _) if !allowed => Reply::text(401, "a bearer token is needed (metrics.token)\n"),
        ("GET", "/metrics", _) => Reply::of(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        ("GET", "/" | "/index.html", Some(site)) => {
            let now = crate::durable::now();
            Reply::of(200, html, crate::page::render(crate::status::read(&site.state).ok().as_ref(), site, now))
        }
        ("GET", "/api/status", Some(site)) => match crate::status::read(&site.state) {
            Ok(snap) => {
                let now = crate::durable::now();
                let running = now - snap.updated < crate::page::STALE_SECONDS;
                Reply::of(200, "application/json", crate::status::to_json(&snap, running, now).to_string())
            }
            Err(e) => Reply::text(503, format!("{e}\n")),
        },
        ("GET", p, Some(site)) if p.starts_with("/heatmaps/") => match crate::page::heatmap_file(&site.results, p).map(std::fs::read) {
            Some(Ok(bytes)) => Reply::of(200, "image/png", bytes),
            _ => Reply::text(404, "not found\n"),
        },
        ("GET", _, _) => Reply::text(404, "not found: /, /api/status, /metrics or /healthz\n"),
        _ => Reply::text(405, "only GET\n"),
    };
    let reason = match reply.status {
        200 => "OK",
        303 => "See Other",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut w = stream;
    let challenge = if reply.status == 401 { "WWW-Authenticate: Bearer realm=\"ctsentry\"\r\n" } else { "" };
    write!(
        w,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}{}Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.kind,
        reply.body.len(),
        reply.headers
    )?;
    w.write_all(&reply.body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_the_faults() {
        let m = Metrics::default();
        assert_eq!(m.health().0, 200);
        m.gauges.lock().unwrap().faults = vec![FaultKind::Disk];
        assert_eq!(m.health(), (503, "faults: DISK\n".into()));
        let text = m.render();
        assert!(text.contains("ctsentry_fault{kind=\"DISK\"} 1"), "{text}");
        assert!(text.contains("# TYPE ctsentry_inference_seconds histogram"));
    }

    #[test]
    fn health_is_503_when_the_control_loop_went_silent() {
        let m = Metrics::default();
        m.gauges.lock().unwrap().updated = Some(std::time::Instant::now());
        assert_eq!(m.health().0, 200);
        m.gauges.lock().unwrap().updated = std::time::Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(5));
        let (code, body) = m.health();
        assert_eq!(code, 503);
        assert!(body.starts_with("stalled: the daemon's control loop has not reported for 3"), "{body}");
    }

    fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        let header = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{header}\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }

    #[test]
    fn with_a_token_metrics_need_it_and_health_stays_open() {
        let token = "s3cret-token-0123456789";
        let (addr, _) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()), Some(Secret::new(token)), None).unwrap();
        let (code, text) = get(addr, "/metrics", None);
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer"), "{text}");
        assert!(!text.contains("ctsentry_"), "nothing of the metrics without the token: {text}");
        assert_eq!(get(addr, "/metrics", Some("Bearer wrong-token-0123456789")).0, 401);
        assert_eq!(get(addr, "/metrics", Some(&format!("Basic {token}"))).0, 401);
        let (code, text) = get(addr, "/metrics", Some(&format!("Bearer {token}")));
        assert!(code == 200 && text.contains("ctsentry_slices_scored_total"), "{text}");
        assert_eq!(get(addr, "/healthz", None).0, 200, "health needs no token");
        let (addr, _) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()), None, None).unwrap();
        assert_eq!(get(addr, "/metrics", None).0, 200, "no token configured: open (loopback only, the config insists)");
        // ...to requests for a loopback name only: a page elsewhere whose name resolves to 127.0.0.1 gets nothing.
        let raw = |host: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).unwrap();
            text
        };
        for host in ["localhost:9464", "127.0.0.1", "[::1]:9464", "LOCALHOST"] {
            assert!(raw(host).starts_with("HTTP/1.1 200"), "{host}");
        }
        for host in ["attacker.example:9464", "127.0.0.1.nip.example", "[::2]"] {
            let text = raw(host);
            assert!(text.starts_with("HTTP/1.1 403") && !text.contains("ctsentry_"), "{host}: {text}");
        }
    }

    #[test]
    fn the_page_with_a_token_asks_for_it_then_serves_with_the_login_cookie_only_what_the_site_holds() {
        let dir = tempfile::tempdir().unwrap();
        let site = crate::page::Site { state: dir.path().join("state"), results: dir.path().join("results") };
        std::fs::create_dir_all(&site.state).unwrap();
        let id = crate::alert::series_id("1.2.3", 1);
        std::fs::create_dir_all(site.results.join(&id).join("heatmaps")).unwrap();
        std::fs::write(site.results.join(&id).join("heatmaps/x.png"), b"\x89PNG-bytes").unwrap();
        let token = "s3cret-token-0123456789";
        let (addr, _) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()), Some(Secret::new(token)), Some(site)).unwrap();
        let (code, text) = get(addr, "/", None);
        assert!(code == 401 && text.contains("action=\"/login\"") && !text.contains("ctsentry_"), "{text}");
        assert_eq!(get(addr, "/api/status", None).0, 401);
        assert_eq!(get(addr, &format!("/heatmaps/{id}/x.png"), None).0, 401);
        assert_eq!(get(addr, "/login?token=wrong-token-0123456789", None).0, 401);
        let (code, text) = get(addr, &format!("/login?token={token}"), None);
        assert!(code == 303 && text.contains(&format!("Set-Cookie: {COOKIE}={token}; HttpOnly")), "{text}");
        let cookie = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: box\r\nCookie: other=1; {COOKIE}={token}\r\n\r\n").unwrap();
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut text).unwrap();
            String::from_utf8_lossy(&text).into_owned()
        };
        let page = cookie("/");
        assert!(page.starts_with("HTTP/1.1 200") && page.contains("No status yet"), "{page}");
        assert!(cookie("/api/status").starts_with("HTTP/1.1 503"), "no snapshot yet: 503 naming it");
        let png = cookie(&format!("/heatmaps/{id}/x.png"));
        assert!(png.starts_with("HTTP/1.1 200") && png.contains("Content-Type: image/png") && png.ends_with("PNG-bytes"), "{png}");
        assert!(cookie("/heatmaps/../state/status.json").starts_with("HTTP/1.1 404"));
        let (code, _) = get(addr, "/", Some(&format!("Bearer {token}")));
        assert_eq!(code, 200, "a bearer token opens the page too");
        assert_eq!(query_value("a=1&token=x%2By+z", "token").as_deref(), Some("x+y z"));
    }

    /// The shipped Grafana dashboard (packaging/grafana) is valid JSON and every metric name its
    /// expressions use is one this box exports (with the receiver and export on, as a box that
    /// shows every family).
    #[test]
    fn the_grafana_dashboard_uses_only_exported_metric_names() {
        let text = include_str!("../packaging/grafana/ctsentry-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
        let m = Metrics::default();
        *m.dicom.lock().unwrap() = Some(Arc::new(crate::net::scp::ScpStats::default()));
        m.export_enabled.store(true, Ordering::Relaxed);
        let exposition = m.render();
        let exported: std::collections::HashSet<&str> = exposition.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
        let mut used = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("ctsentry_") {
                    let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    assert!(exported.contains(name.as_str()), "panel {:?} uses {name}, which the box does not export", panel["title"]);
                    used += 1;
                }
            }
        }
        assert!(used >= 20, "{used}");
        for family in ["ctsentry_alert_latched", "ctsentry_drift", "ctsentry_fault", "ctsentry_inference_seconds_bucket", "ctsentry_series_total"] {
            assert!(text.contains(family), "the dashboard shows {family}");
        }
    }
}
