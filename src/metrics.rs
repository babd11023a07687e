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

    /// `/healthz`: 200 and `ok` without faults, else 503 and the faults.
    pub fn health(&self) -> (u16, String) {
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(silent) = g.updated.map(|t| t.elapsed()).filter(|e| *e > STALE_AFTER) {
            return (503, format!("stalled: the daemon's control loop has not reported for {} s\n", silent.as_secs()));
        }
        if g.faults.is_empty() {
            (200, "ok\n".into())
        } else {
            (503, format!("faults: {}\n", g.faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")))
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listen` from a background thread; returns the address
/// bound (an error when it cannot be bound)
/// and the server's thread (named `metrics`), which the daemon supervises.
/// With a `token`, `/metrics` answers only requests that carry `Authorization: Bearer TOKEN`
/// (401 otherwise); `/healthz` stays open (it names faults, nothing of a patient).
pub fn serve(listen: SocketAddr, metrics: Arc<Metrics>, token: Option<Secret>) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
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
            let (m, t) = (metrics.clone(), token.clone());
            let spawned = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
                let _slot = slot;
                if let Err(e) = answer(conn, &m, t.as_ref()) {
                    log::debug!("metrics: {e}");
                }
            });
            if let Err(e) = spawned {
                log::warn!("metrics: cannot start a thread for a connection: {e}");
            }
        }
    })?;
    log::info!("metrics: Prometheus text at http://{addr}/metrics, health at http://{addr}/healthz");
    Ok((addr, thread))
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 4;
/// Time a client has to send its request head.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8192;

/// Whether the request head carries `Authorization: Bearer TOKEN` with `token`.
fn authorized(head: &str, token: &Secret) -> bool {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| name.trim().eq_ignore_ascii_case("authorization") && value.trim().strip_prefix("Bearer ").is_some_and(|t| token.matches(t.trim())))
}

fn answer(stream: TcpStream, metrics: &Metrics, token: Option<&Secret>) -> std::io::Result<()> {
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
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") if token.is_some_and(|t| !authorized(&request, t)) => (401, "text/plain; charset=utf-8", "a bearer token is needed (metrics.token)\n".into()),
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        ("GET", "/healthz") => {
            let (s, b) = metrics.health();
            (s, "text/plain; charset=utf-8", b)
        }
        ("GET", _) => (404, "text/plain; charset=utf-8", "not found: /metrics or /healthz\n".into()),
        _ => (405, "text/plain; charset=utf-8", "only GET\n".into()),
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut w = stream;
    let challenge = if status == 401 { "WWW-Authenticate: Bearer realm=\"ctsentry\"\r\n" } else { "" };
    write!(w, "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n{body}", body.len())?;
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
        write!(s, "GET {path} HTTP/1.1\r\nHost: box\r\n{header}\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }

    #[test]
    fn with_a_token_metrics_need_it_and_health_stays_open() {
        let token = "s3cret-token-0123456789";
        let (addr, _) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()), Some(Secret::new(token))).unwrap();
        let (code, text) = get(addr, "/metrics", None);
        assert_eq!(code, 401, "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer"), "{text}");
        assert!(!text.contains("ctsentry_"), "nothing of the metrics without the token: {text}");
        assert_eq!(get(addr, "/metrics", Some("Bearer wrong-token-0123456789")).0, 401);
        assert_eq!(get(addr, "/metrics", Some(&format!("Basic {token}"))).0, 401);
        let (code, text) = get(addr, "/metrics", Some(&format!("Bearer {token}")));
        assert!(code == 200 && text.contains("ctsentry_slices_scored_total"), "{text}");
        assert_eq!(get(addr, "/healthz", None).0, 200, "health needs no token");
        let (addr, _) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()), None).unwrap();
        assert_eq!(get(addr, "/metrics", None).0, 200, "no token configured: open (loopback only, the config insists)");
    }
}
