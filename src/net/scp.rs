//! The DICOM receiver: C-ECHO and C-STORE SCP (dicom-rs upper layer, `dicom-ul`).
//!
//! Each received CT instance is written as a DICOM file (preamble, file meta, the data set bytes
//! exactly as received in the negotiated transfer syntax) under a hidden `.part` name in
//! `incoming/dicom-<calling AE>/`, flushed to disk and renamed to `<SOP Instance UID>.dcm`; only
//! then is the C-STORE answered with success. From there the drop folder's pipeline (journal,
//! quarantine, series completion) applies unchanged. Associations from calling AE titles not in
//! `dicom.allowed_callers` (when it is not empty) are rejected and logged with the caller; at
//! most `dicom.max_associations` are served at once; an instance larger than
//! `dicom.max_instance_mb` is answered "out of resources" (0xA700) and not written.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::Association;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu, UserIdentity};

use super::dimse::{
    read_command, text, C_ECHO_RQ, C_ECHO_RSP, C_STORE_RQ, C_STORE_RSP, DATA_SET_MISMATCH, MAX_COMMAND_BYTES, NO_DATA_SET, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, SUCCESS,
    UNRECOGNIZED_OPERATION,
};
use crate::config::{Caller, DicomSettings};
use dicom_dictionary_std::uids;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = uids::VERIFICATION;
/// The storage SOP classes accepted: CT Image and Enhanced CT Image.
pub const CT_STORAGE: [&str; 2] = [uids::CT_IMAGE_STORAGE, uids::ENHANCED_CT_IMAGE_STORAGE];
/// The transfer syntaxes accepted: those ingest decodes.
pub const TRANSFER_SYNTAXES: [&str; 12] = [
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    crate::ingest::dicom::EXPLICIT_VR_BIG_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::RLE_LOSSLESS,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEGLS_LOSSLESS,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
];

/// Counters of the receiver (for logs and metrics).
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Associations accepted.
    pub associations: AtomicU64,
    /// Associations refused (unknown caller, too many at once, failed negotiation).
    pub refused: AtomicU64,
    /// Of those, callers refused by `dicom.allowed_callers` (title or source address).
    pub refused_callers: AtomicU64,
    /// Connections closed without an association: no A-ASSOCIATE-RQ within
    /// `dicom.artim_seconds`, or too many from one address.
    pub closed_idle: AtomicU64,
    /// Instances written into the drop folder.
    pub stored: AtomicU64,
    /// Instances answered with a failure status.
    pub failed: AtomicU64,
}

/// The callers allowed (empty: any), as seen from one connection's source address.
struct Callers<'a> {
    allowed: &'a [Caller],
    from: IpAddr,
    refused: &'a AtomicU64,
}

impl AccessControl for Callers<'_> {
    fn check_access(&self, _this: &str, calling: &str, called: &str, _user: Option<&UserIdentity>) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling.trim();
        if self.allowed.is_empty() || self.allowed.iter().any(|c| c.admits(calling, self.from)) {
            Ok(())
        } else {
            let why = if self.allowed.iter().any(|c| c.ae_title == calling) { "is not allowed from this address" } else { "is not in dicom.allowed_callers" };
            log::warn!("dicom: association refused: calling AE {calling:?} at {} (called {:?}) {why}", self.from, called.trim());
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Starts the receiver: binds `settings.listen` (an error if it cannot) and serves associations
/// on background threads, writing into `incoming`.
/// With `tls` (from [`super::tls::server_config`]) every connection must be DICOM TLS.
pub fn start(settings: &DicomSettings, incoming: &Path, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Listening> {
    let listener = TcpListener::bind(settings.listen)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ScpStats::default());
    let tls = TlsSlot(Arc::new(RwLock::new(tls)));
    let (s, dir, st, t) = (settings.clone(), incoming.to_path_buf(), stats.clone(), tls.clone());
    let thread = std::thread::Builder::new().name("dicom-scp".into()).spawn(move || accept_loop(listener, s, dir, st, t))?;
    log::info!(
        "dicom: C-ECHO and C-STORE SCP {:?} on {addr}{}, callers {}, at most {} associations ({} per address), A-ASSOCIATE-RQ within {} s, instances up to {} MiB",
        settings.ae_title,
        if settings.tls.is_some() { " (DICOM TLS only, callers with a certificate from dicom.tls.client_ca)" } else { "" },
        settings.callers_text(),
        settings.max_associations,
        settings.max_associations_per_address,
        settings.artim.as_secs_f64(),
        settings.max_instance_bytes >> 20
    );
    Ok(Listening { addr, stats, thread, tls })
}

/// The running receiver.
pub struct Listening {
    /// The address bound.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<ScpStats>,
    /// The accept loop's thread (named `dicom-scp`), which the daemon supervises.
    pub thread: std::thread::JoinHandle<()>,
    /// The TLS configuration new connections get.
    pub tls: TlsSlot,
}

/// The receiver's TLS configuration, replaceable while it runs.
#[derive(Clone)]
pub struct TlsSlot(Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>);

impl TlsSlot {
    /// New connections get `config` from now on (certificates re-read on SIGHUP); connections
    /// already open keep theirs.
    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }

    fn get(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One of `dicom.max_associations` places, held by a connection's thread: returned when it is
/// dropped, however the thread ends (also by a panic, and when the thread cannot start).
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place when fewer than `max` are taken.
    pub(crate) fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        active.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).ok().map(|_| Slot(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of `dicom.max_associations_per_address` places of a source address, returned on drop.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    addr: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, addr: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(addr).or_insert(0);
        (*n < max).then(|| {
            *n += 1;
            AddressSlot { counts: counts.clone(), addr }
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.addr);
            }
        }
    }
}

/// The ARTIM timer: every connection is registered with its deadline; one that has not begun
/// its association by then is shut down (its thread's read fails, the thread ends, its places
/// are given back). One thread for all connections.
struct Artim {
    tx: std::sync::mpsc::Sender<(std::time::Instant, TcpStream, Arc<AtomicBool>, String)>,
}

impl Artim {
    fn start(stats: Arc<ScpStats>, limit: std::time::Duration) -> std::io::Result<Artim> {
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, TcpStream, Arc<AtomicBool>, String)>();
        std::thread::Builder::new().name("dicom-artim".into()).spawn(move || {
            let mut waiting: std::collections::VecDeque<(std::time::Instant, TcpStream, Arc<AtomicBool>, String)> = Default::default();
            loop {
                // Deadlines arrive in order (each is its connection's accept time + the limit).
                let next = waiting.front().map(|w| w.0.saturating_duration_since(std::time::Instant::now()));
                let got = match next {
                    Some(wait) => rx.recv_timeout(wait),
                    None => rx.recv().map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(w) => waiting.push_back(w),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = std::time::Instant::now();
                while waiting.front().is_some_and(|w| w.0 <= now) {
                    let (_, stream, begun, peer) = waiting.pop_front().expect("checked");
                    if !begun.load(Ordering::SeqCst) {
                        log::warn!("dicom: connection from {peer} closed: no A-ASSOCIATE-RQ within dicom.artim_seconds = {}", limit.as_secs_f64());
                        stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        })?;
        Ok(Artim { tx })
    }

    /// Watches `stream` until `begun` is set; false when the timer thread is gone.
    fn watch(&self, stream: &TcpStream, begun: &Arc<AtomicBool>, peer: &str, limit: std::time::Duration) -> bool {
        let Ok(clone) = stream.try_clone() else { return false };
        self.tx.send((std::time::Instant::now() + limit, clone, begun.clone(), peer.to_string())).is_ok()
    }
}

fn accept_loop(listener: TcpListener, settings: DicomSettings, incoming: PathBuf, stats: Arc<ScpStats>, tls: TlsSlot) {
    let active = Arc::new(AtomicUsize::new(0));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    let artim = match Artim::start(stats.clone(), settings.artim) {
        Ok(a) => a,
        Err(e) => {
            // Without the timer idle connections could hold every place: do not serve at all
            // (the daemon's supervision sees this thread end and restarts the process).
            log::error!("dicom: the ARTIM timer cannot start: {e}");
            return;
        }
    };
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("dicom: accept: {e}");
                // Out of file descriptors and the like: do not spin.
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
        };
        crate::failpoint::hit("scp-accept");
        let Ok(peer_addr) = stream.peer_addr() else { continue };
        let peer = peer_addr.to_string();
        let Some(address_slot) = AddressSlot::take(&per_address, peer_addr.ip(), settings.max_associations_per_address) else {
            log::warn!(
                "dicom: connection from {peer} closed: {} connections from {} already (dicom.max_associations_per_address)",
                settings.max_associations_per_address,
                peer_addr.ip()
            );
            stats.closed_idle.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(slot) = Slot::take(&active, settings.max_associations) else {
            log::warn!("dicom: connection from {peer} closed: {} associations already (dicom.max_associations)", settings.max_associations);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let begun = Arc::new(AtomicBool::new(false));
        if !artim.watch(&stream, &begun, &peer, settings.artim) {
            log::error!("dicom: connection from {peer} closed: it cannot be timed");
            continue;
        }
        let (s, dir, st) = (settings.clone(), incoming.clone(), stats.clone());
        let config = tls.get();
        let spawned = std::thread::Builder::new().name("dicom-assoc".into()).spawn(move || {
            let _slots = (slot, address_slot);
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::failpoint::hit("scp-serve");
                serve(stream, peer_addr.ip(), &peer, &s, config, &dir, &st, &begun)
            }));
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("dicom: association with {peer}: {e}"),
                Err(p) => log::error!("dicom: association with {peer}: internal error ({}); connection closed, its place freed", crate::failpoint::panic_message(p.as_ref())),
            }
        });
        if let Err(e) = spawned {
            log::error!("dicom: cannot start a thread for a connection: {e}");
        }
    }
}

/// Where a C-STORE's data set goes while it arrives.
enum Sink {
    /// Into this hidden file in the drop folder (renamed into place when complete).
    File(PartFile),
    /// Nowhere: the request is answered with this status once its data set has been read.
    Discard(u16),
}

/// A request whose data set is being received.
struct Pending {
    field: u16,
    id: u16,
    class: String,
    sop: String,
    sink: Sink,
}

/// The largest first message accepted before an association: an A-ASSOCIATE-RQ, or a TLS
/// record holding a ClientHello (both are small; real ones are a few hundred bytes).
const MAX_FIRST_MESSAGE: usize = 64 * 1024;

/// Waits (without consuming anything) until the connection's whole first message is in the
/// socket: an A-ASSOCIATE-RQ PDU (type 1, its 6-byte header's length) or, with `tls`, a TLS
/// handshake record (type 22, its 5-byte header's length). Errors on anything else, on a
/// declared length over [`MAX_FIRST_MESSAGE`], and at end of file (which is also how it ends
/// when the ARTIM timer shuts the connection). dicom-ul 0.10 with its TLS support compiled in loops forever when the connection
/// ends inside its first message (it retries the bytes it has as TLS), so it is only handed a
/// connection whose first message is complete.
fn await_first_message(stream: &TcpStream, tls: bool) -> Result<(), super::Error> {
    let mut buf = vec![0u8; MAX_FIRST_MESSAGE + 6];
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut buf) {
            Ok(0) => return Err(super::Error::Link("closed before its first message was complete".into())),
            Ok(n) => n,
            Err(e) => return Err(super::Error::Link(e.to_string())),
        };
        let (header, kind, len) = if tls {
            (5, buf[0], n.ge(&5).then(|| u16::from_be_bytes([buf[3], buf[4]]) as usize))
        } else {
            (6, buf[0], n.ge(&6).then(|| u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize))
        };
        let want_kind = if tls { 22 } else { 1 };
        if kind != want_kind {
            return Err(super::Error::Protocol(if tls {
                "not a TLS handshake (plain DICOM on the TLS receiver?)".into()
            } else {
                format!("the first PDU is of type {kind}, not an A-ASSOCIATE-RQ")
            }));
        }
        if let Some(len) = len {
            if len > MAX_FIRST_MESSAGE {
                return Err(super::Error::Protocol(format!("a first message of {len} bytes declared (at most {MAX_FIRST_MESSAGE})")));
            }
            if n >= header + len {
                return Ok(());
            }
        }
        if n == seen {
            // Part of it is there: wait for the rest without spinning.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        seen = n;
    }
}

/// Serves one connection: negotiates the association (`begun` is set once the A-ASSOCIATE-RQ has
/// been answered, which stops the ARTIM timer), then answers C-ECHO and C-STORE until release.
#[allow(clippy::too_many_arguments)]
fn serve(
    stream: TcpStream,
    from: IpAddr,
    peer: &str,
    settings: &DicomSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    incoming: &Path,
    stats: &ScpStats,
    begun: &AtomicBool,
) -> Result<(), super::Error> {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Callers { allowed: &settings.allowed_callers, from, refused: &stats.refused_callers })
        .ae_title(settings.ae_title.as_str())
        .read_timeout(std::time::Duration::from_secs(60))
        .with_abstract_syntax(VERIFICATION);
    for class in CT_STORAGE {
        options = options.with_abstract_syntax(class);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    // Bounded by the ARTIM timer, which shuts the connection (the peek then sees its end).
    await_first_message(&stream, tls.is_some()).inspect_err(|_| begun.store(true, Ordering::SeqCst))?;
    let refused = |e: dicom_ul::association::Error| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        super::Error::Unreachable(format!("not established: {e}"))
    };
    // With TLS the handshake comes first (a caller without a certificate from client_ca, or one
    // speaking plain DICOM, fails it); the ARTIM timer runs until the association is answered.
    match tls {
        Some(config) => {
            let established = options.tls_config(config).establish_tls(stream);
            begun.store(true, Ordering::SeqCst);
            associate(established.map_err(refused)?, peer, settings, incoming, stats)
        }
        None => {
            let established = options.establish(stream);
            begun.store(true, Ordering::SeqCst);
            associate(established.map_err(refused)?, peer, settings, incoming, stats)
        }
    }
}

/// Answers C-ECHO and C-STORE on an established association until the caller releases it.
fn associate<S>(mut assoc: dicom_ul::association::server::ServerAssociation<S>, peer: &str, settings: &DicomSettings, incoming: &Path, stats: &ScpStats) -> Result<(), super::Error>
where
    S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket,
{
    stats.associations.fetch_add(1, Ordering::Relaxed);
    let caller = assoc.peer_ae_title().trim().to_string();
    log::info!("dicom: association from {caller:?} at {peer}");
    // Accepted presentation contexts: id → (abstract syntax, transfer syntax).
    let contexts: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|c| c.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|c| (c.id, c.abstract_syntax.trim_end_matches('\0').to_string(), c.transfer_syntax.trim_end_matches('\0').to_string()))
        .collect();
    let mut command = Vec::new();
    let mut pending: Option<Pending> = None;
    let (mut stored, mut failed) = (0u64, 0u64);
    loop {
        let pdu = assoc.receive().map_err(|e| super::Error::Link(format!("receiving: {e} ({stored} stored)")))?;
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    let pc = value.presentation_context_id;
                    let Some((_, abstract_syntax, ts)) = contexts.iter().find(|c| c.0 == pc) else {
                        let _ = assoc.abort();
                        return Err(super::Error::Protocol(format!("data on presentation context {pc}, which was not accepted")));
                    };
                    let reply = match value.value_type {
                        PDataValueType::Command => {
                            if pending.is_some() {
                                return Err(super::Error::Protocol("a command arrived before the previous data set ended".into()));
                            }
                            command.extend_from_slice(&value.data);
                            if command.len() > MAX_COMMAND_BYTES {
                                let _ = assoc.abort();
                                return Err(super::Error::Protocol(format!("a command set over {MAX_COMMAND_BYTES} bytes")));
                            }
                            if !value.is_last {
                                continue;
                            }
                            let cmd = read_command(&std::mem::take(&mut command))?;
                            match begin(&cmd, abstract_syntax, ts, &caller, incoming) {
                                Begun::Reply(r) => r,
                                Begun::Data(p) => {
                                    pending = Some(p);
                                    continue;
                                }
                            }
                        }
                        PDataValueType::Data => {
                            let Some(p) = pending.as_mut() else {
                                return Err(super::Error::Protocol("a data set without a command".into()));
                            };
                            if let Sink::File(f) = &mut p.sink {
                                if f.written + value.data.len() as u64 > settings.max_instance_bytes {
                                    log::warn!(
                                        "dicom: instance {} from {caller:?} is larger than dicom.max_instance_mb ({} MiB): refused",
                                        p.sop,
                                        settings.max_instance_bytes >> 20
                                    );
                                    p.sink = Sink::Discard(OUT_OF_RESOURCES);
                                } else if let Err(e) = f.write(&value.data) {
                                    log::error!("dicom: cannot store instance {} from {caller:?}: {e}", p.sop);
                                    p.sink = Sink::Discard(OUT_OF_RESOURCES);
                                }
                            }
                            if !value.is_last {
                                continue;
                            }
                            let p = pending.take().expect("pending");
                            let status = match p.sink {
                                Sink::File(f) => match f.finish(&p.sop) {
                                    Ok(path) => {
                                        log::debug!("dicom: stored {}", path.display());
                                        SUCCESS
                                    }
                                    Err(e) => {
                                        log::error!("dicom: cannot store instance {} from {caller:?}: {e}", p.sop);
                                        OUT_OF_RESOURCES
                                    }
                                },
                                Sink::Discard(status) => status,
                            };
                            if p.field == C_STORE_RQ {
                                let counter = if status == SUCCESS { &stats.stored } else { &stats.failed };
                                counter.fetch_add(1, Ordering::Relaxed);
                                if status == SUCCESS {
                                    stored += 1
                                } else {
                                    failed += 1
                                }
                            }
                            response(p.field | 0x8000, p.id, &p.class, Some(&p.sop), status)
                        }
                    };
                    let pdu = Pdu::PData { data: vec![PDataValue { presentation_context_id: pc, value_type: PDataValueType::Command, is_last: true, data: reply }] };
                    assoc.send(&pdu).map_err(|e| super::Error::Link(format!("sending a response: {e}")))?;
                }
            }
            Pdu::ReleaseRQ => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                break;
            }
            Pdu::AbortRQ { source } => return Err(super::Error::Link(format!("aborted by the peer ({source:?}); {stored} stored"))),
            other => return Err(super::Error::Protocol(format!("unexpected PDU {other:?}"))),
        }
    }
    log::info!("dicom: association from {caller:?} released: {stored} instances stored, {failed} failed");
    Ok(())
}

/// What a complete command leads to: an immediate reply, or a data set to receive.
enum Begun {
    Reply(Vec<u8>),
    Data(Pending),
}

fn begin(cmd: &InMemDicomObject, abstract_syntax: &str, ts: &str, caller: &str, incoming: &Path) -> Begun {
    let int = |tag| super::dimse::int(cmd, tag);
    let field = int(tags::COMMAND_FIELD).unwrap_or(0);
    let id = int(tags::MESSAGE_ID).unwrap_or(0);
    let with_data = int(tags::COMMAND_DATA_SET_TYPE).unwrap_or(NO_DATA_SET) != NO_DATA_SET;
    let class = text(cmd, tags::AFFECTED_SOP_CLASS_UID);
    let sop = text(cmd, tags::AFFECTED_SOP_INSTANCE_UID);
    let reply = |field: u16, status| response(field, id, &class, if sop.is_empty() { None } else { Some(&sop) }, status);
    match (field, with_data) {
        (C_ECHO_RQ, false) => Begun::Reply(reply(C_ECHO_RSP, SUCCESS)),
        (C_STORE_RQ, true) => {
            let sink = if !CT_STORAGE.contains(&class.as_str()) {
                Sink::Discard(SOP_CLASS_NOT_SUPPORTED)
            } else if sop.is_empty() || class != abstract_syntax {
                Sink::Discard(DATA_SET_MISMATCH)
            } else {
                match PartFile::create(incoming, caller, &class, &sop, ts) {
                    Ok(f) => Sink::File(f),
                    Err(e) => {
                        log::error!("dicom: cannot store instance {sop} from {caller:?}: {e}");
                        Sink::Discard(OUT_OF_RESOURCES)
                    }
                }
            };
            Begun::Data(Pending { field, id, class, sop, sink })
        }
        (C_STORE_RQ, false) => Begun::Reply(reply(C_STORE_RSP, DATA_SET_MISMATCH)),
        (other, true) => Begun::Data(Pending { field: other, id, class, sop, sink: Sink::Discard(UNRECOGNIZED_OPERATION) }),
        (other, false) => Begun::Reply(reply(other | 0x8000, UNRECOGNIZED_OPERATION)),
    }
}

/// A response command set.
fn response(field: u16, responding_to: u16, class: &str, sop: Option<&str>, status: u16) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, super::dimse::uid(class)));
    obj.put(DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)));
    obj.put(DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(responding_to)));
    obj.put(DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)));
    obj.put(DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)));
    if let Some(sop) = sop {
        obj.put(DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, super::dimse::uid(sop)));
    }
    super::dimse::command_set(&obj)
}

/// A file-name-safe form of `s` (letters, digits, `.`, `-`, `_`; anything else `_`).
fn safe(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    if t.is_empty() || t.starts_with('.') {
        format!("_{t}")
    } else {
        t
    }
}

static WRITES: AtomicU64 = AtomicU64::new(0);

/// A received instance being written: a hidden `.part` file in `incoming/dicom-<caller>/`.
struct PartFile {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
}

impl PartFile {
    /// Creates the file with the preamble and the file meta group.
    fn create(incoming: &Path, caller: &str, class: &str, sop: &str, ts: &str) -> std::io::Result<PartFile> {
        let dir = incoming.join(format!("dicom-{}", safe(caller)));
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            // The new folder's entry must survive a power cut too.
            std::fs::File::open(incoming)?.sync_all()?;
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(sop)
            .transfer_syntax(ts)
            .implementation_class_uid(super::dimse::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name("CTSENTRY")
            .build()
            .map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(".scp-{}-{}.part", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let header = (|| {
            file.write_all(&[0u8; 128])?;
            file.write_all(b"DICM")?;
            meta.write(&mut file).map_err(std::io::Error::other)
        })();
        if let Err(e) = header {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PartFile { dir, tmp, file: Some(file), written: 0 })
    }

    /// Appends data set bytes.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        self.file.as_mut().expect("open until finished").write_all(bytes)
    }

    /// Syncs, renames to `<sop>.dcm` and syncs the folder: durable when this returns Ok.
    fn finish(mut self, sop: &str) -> std::io::Result<PathBuf> {
        let f = self.file.take().expect("open until finished").into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let path = self.dir.join(format!("{}.dcm", safe(sop)));
        std::fs::rename(&self.tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        // A data set that never completed (association aborted, instance refused) leaves nothing.
        if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_complete_command_sets() {
        let bytes = response(C_STORE_RSP, 7, CT_STORAGE[0], Some("1.2.3"), SUCCESS);
        let cmd = read_command(&bytes).unwrap();
        assert_eq!(cmd.element(tags::COMMAND_FIELD).unwrap().to_int::<u16>().unwrap(), C_STORE_RSP);
        assert_eq!(cmd.element(tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap().to_int::<u16>().unwrap(), 7);
        assert_eq!(cmd.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(), SUCCESS);
        assert_eq!(text(&cmd, tags::AFFECTED_SOP_INSTANCE_UID), "1.2.3");
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe("CT SCANNER/1"), "CT_SCANNER_1");
        assert_eq!(safe("..x"), "_..x");
        assert_eq!(safe(""), "_");
    }
}
