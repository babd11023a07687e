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

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::association::Association;
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu, UserIdentity};

use crate::config::DicomSettings;

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// The storage SOP classes accepted: CT Image and Enhanced CT Image.
pub const CT_STORAGE: [&str; 2] = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"];
/// The transfer syntaxes accepted: those ingest decodes.
pub const TRANSFER_SYNTAXES: [&str; 12] = [
    "1.2.840.10008.1.2",        // implicit VR little endian
    "1.2.840.10008.1.2.1",      // explicit VR little endian
    "1.2.840.10008.1.2.2",      // explicit VR big endian
    "1.2.840.10008.1.2.1.99",   // deflated explicit VR little endian
    "1.2.840.10008.1.2.5",      // RLE lossless
    "1.2.840.10008.1.2.4.50",   // JPEG baseline
    "1.2.840.10008.1.2.4.57",   // JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70",   // JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",   // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",   // JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",   // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",   // JPEG 2000
];

const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
const C_ECHO_RQ: u16 = 0x0030;
const C_ECHO_RSP: u16 = 0x8030;
const NO_DATA_SET: u16 = 0x0101;
const SUCCESS: u16 = 0x0000;
const OUT_OF_RESOURCES: u16 = 0xA700;
const CANNOT_UNDERSTAND: u16 = 0xC000;

/// Counters of the receiver (for logs and metrics).
#[derive(Debug, Default)]
pub struct ScpStats {
    /// Associations accepted.
    pub associations: AtomicU64,
    /// Associations refused (unknown caller, too many at once, failed negotiation).
    pub refused: AtomicU64,
    /// Instances written into the drop folder.
    pub stored: AtomicU64,
    /// Instances answered with a failure status.
    pub failed: AtomicU64,
}

/// Calling AE titles allowed (empty: any).
struct Callers(Vec<String>);

impl AccessControl for Callers {
    fn check_access(&self, _this: &str, calling: &str, called: &str, _user: Option<&UserIdentity>) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling.trim();
        if self.0.is_empty() || self.0.iter().any(|a| a == calling) {
            Ok(())
        } else {
            log::warn!("dicom: association refused: calling AE {calling:?} (called {:?}) is not in dicom.allowed_callers", called.trim());
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Starts the receiver: binds `settings.listen` (an error if it cannot) and serves associations
/// on background threads, writing into `incoming`.
pub fn start(settings: &DicomSettings, incoming: &Path) -> std::io::Result<(SocketAddr, Arc<ScpStats>)> {
    let listener = TcpListener::bind(settings.listen)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(ScpStats::default());
    let (s, dir, st) = (settings.clone(), incoming.to_path_buf(), stats.clone());
    std::thread::Builder::new().name("dicom-scp".into()).spawn(move || accept_loop(listener, s, dir, st))?;
    log::info!(
        "dicom: C-ECHO and C-STORE SCP {:?} on {addr}, callers {}, at most {} associations, instances up to {} MiB",
        settings.ae_title,
        if settings.allowed_callers.is_empty() { "any".to_string() } else { settings.allowed_callers.join(", ") },
        settings.max_associations,
        settings.max_instance_bytes >> 20
    );
    Ok((addr, stats))
}

fn accept_loop(listener: TcpListener, settings: DicomSettings, incoming: PathBuf, stats: Arc<ScpStats>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("dicom: accept: {e}");
                continue;
            }
        };
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        if active.load(Ordering::SeqCst) >= settings.max_associations {
            log::warn!("dicom: connection from {peer} closed: {} associations already (dicom.max_associations)", settings.max_associations);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (s, dir, st, act) = (settings.clone(), incoming.clone(), stats.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("dicom-assoc".into()).spawn(move || {
            if let Err(e) = serve(stream, &peer, &s, &dir, &st) {
                log::warn!("dicom: association with {peer}: {e}");
            }
            act.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            log::error!("dicom: cannot start a thread for a connection: {e}");
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A message being received: its command, then (for C-STORE) its data set.
#[derive(Default)]
struct Message {
    command: Vec<u8>,
    data: Vec<u8>,
    too_large: bool,
}

fn serve(stream: TcpStream, peer: &str, settings: &DicomSettings, incoming: &Path, stats: &ScpStats) -> Result<(), String> {
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(Callers(settings.allowed_callers.clone()))
        .ae_title(settings.ae_title.as_str())
        .read_timeout(std::time::Duration::from_secs(120))
        .with_abstract_syntax(VERIFICATION);
    for class in CT_STORAGE {
        options = options.with_abstract_syntax(class);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    let mut assoc = match options.establish(stream) {
        Ok(a) => a,
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!("not established: {e}"));
        }
    };
    stats.associations.fetch_add(1, Ordering::Relaxed);
    let caller = assoc.peer_ae_title().trim().to_string();
    log::info!("dicom: association from {caller:?} at {peer}");
    let contexts: Vec<(u8, String, String)> = assoc.presentation_contexts().iter().map(|c| (c.id, c.abstract_syntax.clone(), c.transfer_syntax.clone())).collect();
    let mut msg = Message::default();
    let (mut stored, mut failed) = (0u64, 0u64);
    loop {
        let pdu = match assoc.receive() {
            Ok(p) => p,
            Err(e) => return Err(format!("receiving: {e} ({stored} stored)")),
        };
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    let done = match value.value_type {
                        PDataValueType::Command => {
                            msg.command.extend_from_slice(&value.data);
                            value.is_last && !has_data_set(&msg.command)?
                        }
                        PDataValueType::Data => {
                            if msg.data.len() as u64 + value.data.len() as u64 > settings.max_instance_bytes {
                                msg.too_large = true;
                                msg.data.clear();
                            } else if !msg.too_large {
                                msg.data.extend_from_slice(&value.data);
                            }
                            value.is_last
                        }
                    };
                    if done {
                        let m = std::mem::take(&mut msg);
                        let ts = contexts.iter().find(|c| c.0 == value.presentation_context_id).map(|c| c.2.clone()).unwrap_or_default();
                        let (reply, status) = answer(&m, &ts, &caller, incoming, settings)?;
                        match status {
                            Some(SUCCESS) => stored += 1,
                            Some(_) => failed += 1,
                            None => {}
                        }
                        let pdu = Pdu::PData { data: vec![PDataValue { presentation_context_id: value.presentation_context_id, value_type: PDataValueType::Command, is_last: true, data: reply }] };
                        assoc.send(&pdu).map_err(|e| format!("sending a response: {e}"))?;
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                break;
            }
            Pdu::AbortRQ { source } => return Err(format!("aborted by the peer ({source:?}); {stored} stored")),
            other => return Err(format!("unexpected PDU {other:?}")),
        }
    }
    stats.stored.fetch_add(stored, Ordering::Relaxed);
    stats.failed.fetch_add(failed, Ordering::Relaxed);
    log::info!("dicom: association from {caller:?} released: {stored} instances stored, {failed} failed");
    Ok(())
}

fn read_command(bytes: &[u8]) -> Result<InMemDicomObject, String> {
    InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).map_err(|e| format!("unreadable command: {e}"))
}

fn has_data_set(command: &[u8]) -> Result<bool, String> {
    let cmd = read_command(command)?;
    Ok(cmd.element(tags::COMMAND_DATA_SET_TYPE).ok().and_then(|e| e.to_int::<u16>().ok()).unwrap_or(NO_DATA_SET) != NO_DATA_SET)
}

fn text(cmd: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    cmd.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim_end_matches(['\0', ' ']).to_string()).unwrap_or_default()
}

/// The response to a complete message, and the C-STORE status given (None for C-ECHO).
fn answer(m: &Message, ts: &str, caller: &str, incoming: &Path, settings: &DicomSettings) -> Result<(Vec<u8>, Option<u16>), String> {
    let cmd = read_command(&m.command)?;
    let field = cmd.element(tags::COMMAND_FIELD).ok().and_then(|e| e.to_int::<u16>().ok()).unwrap_or(0);
    let id = cmd.element(tags::MESSAGE_ID).ok().and_then(|e| e.to_int::<u16>().ok()).unwrap_or(0);
    let class = text(&cmd, tags::AFFECTED_SOP_CLASS_UID);
    match field {
        C_ECHO_RQ => Ok((response(C_ECHO_RSP, id, &class, None, SUCCESS), None)),
        C_STORE_RQ => {
            let sop = text(&cmd, tags::AFFECTED_SOP_INSTANCE_UID);
            let status = if m.too_large {
                log::warn!("dicom: instance {sop} from {caller:?} is larger than dicom.max_instance_mb ({} MiB): refused", settings.max_instance_bytes >> 20);
                OUT_OF_RESOURCES
            } else if !CT_STORAGE.contains(&class.as_str()) {
                CANNOT_UNDERSTAND
            } else {
                match write_instance(incoming, caller, &class, &sop, ts, &m.data) {
                    Ok(path) => {
                        log::debug!("dicom: stored {}", path.display());
                        SUCCESS
                    }
                    Err(e) => {
                        log::error!("dicom: cannot store instance {sop} from {caller:?}: {e}");
                        OUT_OF_RESOURCES
                    }
                }
            };
            Ok((response(C_STORE_RSP, id, &class, Some(&sop), status), Some(status)))
        }
        other => Err(format!("unsupported command 0x{other:04x}")),
    }
}

/// A response command set (implicit VR little endian, with its group length).
fn response(field: u16, responding_to: u16, class: &str, sop: Option<&str>, status: u16) -> Vec<u8> {
    let uid = |s: &str| {
        let mut s = s.to_string();
        if s.len() % 2 == 1 {
            s.push('\0');
        }
        PrimitiveValue::from(s)
    };
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, uid(class)));
    obj.put(DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)));
    obj.put(DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(responding_to)));
    obj.put(DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)));
    obj.put(DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)));
    if let Some(sop) = sop {
        obj.put(DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, uid(sop)));
    }
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut body = Vec::new();
    obj.write_dataset_with_ts(&mut body, &ts).expect("a command set encodes");
    let mut group = InMemDicomObject::new_empty();
    group.put(DataElement::new(tags::COMMAND_GROUP_LENGTH, VR::UL, PrimitiveValue::from(body.len() as u32)));
    let mut out = Vec::new();
    group.write_dataset_with_ts(&mut out, &ts).expect("a group length encodes");
    out.extend_from_slice(&body);
    out
}

/// A file-name-safe form of `s` (letters, digits, `.`, `-`, `_`; anything else `_`).
fn safe(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    if t.is_empty() || t.starts_with('.') { format!("_{t}") } else { t }
}

static WRITES: AtomicU64 = AtomicU64::new(0);

/// Writes one received instance durably into `incoming/dicom-<caller>/<sop>.dcm` (a hidden
/// `.part` file first, synced, renamed, folder synced).
fn write_instance(incoming: &Path, caller: &str, class: &str, sop: &str, ts: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    let dir = incoming.join(format!("dicom-{}", safe(caller)));
    std::fs::create_dir_all(&dir)?;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(ts)
        .implementation_class_uid("1.2.826.0.1.3680043.10.1416.1")
        .implementation_version_name("CTSENTRY")
        .build()
        .map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".scp-{}-{}.part", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&[0u8; 128])?;
        f.write_all(b"DICM")?;
        meta.write(&mut f).map_err(std::io::Error::other)?;
        f.write_all(data)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let path = dir.join(format!("{}.dcm", safe(sop)));
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
        let len = cmd.element(tags::COMMAND_GROUP_LENGTH).unwrap().to_int::<u32>().unwrap() as usize;
        assert_eq!(len, bytes.len() - 12, "group length counts every element after it");
        assert!(!has_data_set(&bytes).unwrap());
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe("CT SCANNER/1"), "CT_SCANNER_1");
        assert_eq!(safe("..x"), "_..x");
        assert_eq!(safe(""), "_");
    }
}
