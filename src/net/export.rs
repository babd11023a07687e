//! Results back to the PACS (`[export]`): for each series verdict a Comprehensive SR in the scanned
//! study (a new series, manufacturer ctsentry) stating the verdict in words, the counts, the
//! largest probability, the threshold, the model's identity and references to the positive
//! slices; for a positive series, Secondary Capture images of the positive slices' heat maps
//! (the daemon's PNGs, with "NOT FOR DIAGNOSTIC USE", the probability and the threshold burned in).
//!
//! Delivery is a spool: [`spool`] writes each object as a DICOM file into `state/export/`
//! (atomically, before the daemon journals the verdict), and the sender thread ([`Exporter`])
//! sends what the spool holds by C-STORE, removing each file once the PACS has answered
//! success. A restart resumes from the spool, so each object is sent once; the UIDs are derived
//! from the series, the model and the rule, so an object written again after a crash is the same
//! instance to the PACS. While the PACS cannot be reached (or is out of resources) the sender
//! waits 1, 2, 4 … up to `export.retry_max_seconds` between tries and tells the daemon, which
//! raises FAULT EXPORT until an object goes through. An object the PACS refuses for good is set
//! aside in `state/export/failed/` with a `.reason` file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use sha2::{Digest, Sha256};

use super::dimse;
use super::Error as NetError;
use crate::config::ExportSettings;
use crate::output::SeriesSummary;

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = dicom_dictionary_std::uids::COMPREHENSIVE_SR_STORAGE;
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = dicom_dictionary_std::uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
const EXPLICIT_LE: &str = dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN;
const IMPLICIT_LE: &str = dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN;
/// The spool's folder name in the state folder, and where objects the PACS refused for good are
/// kept in the spool ([`crate::durable::StateDir`] names them).
pub use crate::durable::{EXPORT_FAILED as FAILED_DIR, EXPORT_SPOOL as SPOOL_DIR};
/// The coding scheme of ctsentry's own concepts (a private scheme, as PS3.16 allows: `99…`).
pub const SCHEME: &str = "99CTSENTRY";
/// Series Number of the SR series and of the heat-map series.
const SR_SERIES_NUMBER: i32 = 7701;
const SC_SERIES_NUMBER: i32 = 7702;

/// A positive slice.
#[derive(Debug, Clone)]
pub struct Flagged {
    /// Its SOP Instance UID.
    pub sop: String,
    /// Its frame (multi-frame images; 0 otherwise).
    pub frame: usize,
    /// Whether the image has several frames (then the frame is referenced too).
    pub multi_frame: bool,
    /// Its probability.
    pub prob: f32,
    /// Its heat map (a PNG written while scoring), if there is one.
    pub heatmap: Option<PathBuf>,
}

/// One series verdict to send.
#[derive(Debug, Clone)]
pub struct SeriesResult<'a> {
    /// The verdict as every result shows it (counts, measures, rule, model).
    pub summary: &'a SeriesSummary,
    /// Part of the series.
    pub part: u16,
    /// Every SOP instance scored (the evidence the verdict rests on), each once.
    pub scored: Vec<String>,
    /// The positive slices, in slice order.
    pub flagged: Vec<Flagged>,
    /// A DICOM file of the series: patient and study are copied from it.
    pub source: &'a Path,
    /// When the verdict was given (unix s).
    pub t: f64,
}

impl SeriesResult<'_> {
    /// Whether the series is positive.
    fn positive(&self) -> bool {
        self.summary.decision.verdict == crate::decide::Verdict::Positive
    }
}

/// The patient and study attributes copied from the scanned series, and its SOP class.
struct Study {
    elements: Vec<DataElement<InMemDicomObject>>,
    study_uid: String,
    source_class: String,
}

/// Patient and study attributes copied into every object (Type 2 ones are written empty when
/// the source lacks them).
const COPIED: [(Tag, VR, bool); 11] = [
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
    (tags::STUDY_DESCRIPTION, VR::LO, false),
];

impl Study {
    fn read(source: &Path) -> Result<Study, String> {
        let obj = OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(source).map_err(|e| format!("{}: {e}", source.display()))?;
        let text = |tag| dimse::text(&obj, tag);
        let study_uid = text(tags::STUDY_INSTANCE_UID);
        if study_uid.is_empty() {
            return Err(format!("{}: no Study Instance UID, so the results have no study to go into", source.display()));
        }
        let source_class = text(tags::SOP_CLASS_UID);
        let mut elements = Vec::new();
        for (tag, vr, type2) in COPIED {
            match obj.element(tag) {
                Ok(e) => elements.push(DataElement::new(tag, vr, e.value().clone())),
                Err(_) if type2 => elements.push(DataElement::new(tag, vr, PrimitiveValue::Empty)),
                Err(_) => {}
            }
        }
        Ok(Study { elements, study_uid, source_class })
    }

    fn put_into(&self, obj: &mut InMemDicomObject) {
        for e in &self.elements {
            obj.put(e.clone());
        }
        obj.put(DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, dimse::uid(&self.study_uid)));
    }
}

/// A UID derived from `parts` (`2.25.` and a name-based UUID from their SHA-256, PS3.5 B.2):
/// the same inputs always give the same UID.
pub fn derived_uid(parts: &[&str]) -> String {
    let h = Sha256::digest(parts.join("\n").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // A name-based UUID (version 5 layout, RFC 4122 variant), as PS3.5 B.2 expects.
    b[6] = (b[6] & 0x0F) | 0x50;
    b[8] = (b[8] & 0x3F) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut c = InMemDicomObject::new_empty();
    put(&mut c, tags::CODE_VALUE, VR::SH, value);
    put(&mut c, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put(&mut c, tags::CODE_MEANING, VR::LO, meaning);
    c
}

fn item(value_type: &str, concept: InMemDicomObject) -> InMemDicomObject {
    let mut it = InMemDicomObject::new_empty();
    put(&mut it, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put(&mut it, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(&mut it, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]);
    it
}

fn text_item(concept: InMemDicomObject, text: &str) -> InMemDicomObject {
    let mut it = item("TEXT", concept);
    put(&mut it, tags::TEXT_VALUE, VR::UT, text);
    it
}

/// A NUM item; `unit` is a UCUM code and its meaning.
fn num_item(concept: InMemDicomObject, value: f64, unit: (&str, &str)) -> InMemDicomObject {
    let mut it = item("NUM", concept);
    let mut mv = InMemDicomObject::new_empty();
    put_seq(&mut mv, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code(unit.0, "UCUM", unit.1)]);
    put(&mut mv, tags::NUMERIC_VALUE, VR::DS, decimal_string(value));
    put_seq(&mut it, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    it
}

/// `v` as a DS value (at most 16 characters): the shortest exact form where it fits, else 10
/// significant digits in exponent form.
fn decimal_string(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 {
        s
    } else {
        format!("{v:.9e}")
    }
}

fn sop_ref(class: &str, sop: &str, frame: Option<usize>) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, dimse::uid(class));
    put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, dimse::uid(sop));
    if let Some(f) = frame {
        put(&mut r, tags::REFERENCED_FRAME_NUMBER, VR::IS, (f + 1).to_string());
    }
    r
}

/// A new series of ctsentry's in the scanned study.
struct NewSeries<'a> {
    modality: &'a str,
    uid: String,
    number: i32,
    description: &'a str,
}

/// The attributes every object shares: SOP common, patient, study, series, equipment, content
/// date and time.
fn common(study: &Study, r: &SeriesResult, class: &str, sop: &str, series: &NewSeries) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    // Text is written as UTF-8, whatever the source used: every decoded name can be encoded.
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, dimse::uid(class));
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, dimse::uid(sop));
    study.put_into(&mut o);
    put(&mut o, tags::MODALITY, VR::CS, series.modality);
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, dimse::uid(&series.uid));
    put(&mut o, tags::SERIES_NUMBER, VR::IS, series.number.to_string());
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, series.description);
    put(&mut o, tags::MANUFACTURER, VR::LO, "ctsentry");
    put(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, "ctsentry");
    let (name, version) = (&r.summary.model.name, &r.summary.model.version);
    put(
        &mut o,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(dicom_core::smallvec::smallvec![format!("ctsentry {}", env!("CARGO_PKG_VERSION")), format!("{name} {version}")]),
    );
    let (date, time) = crate::durable::utc_date_time(r.t);
    put(&mut o, tags::CONTENT_DATE, VR::DA, date.as_str());
    put(&mut o, tags::CONTENT_TIME, VR::TM, time.as_str());
    put(&mut o, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000");
    o
}

/// The UID of one of a verdict's objects (`what`): derived from the series, its part, the model,
/// the rule and the verdict with its counts and the instances read, so that the same verdict
/// always gives the same UIDs and a different one never reuses them.
fn uid_for(r: &SeriesResult, what: &[&str]) -> String {
    // Everything the objects state: another verdict, or the same series read further, is
    // another instance.
    let mut scored = Sha256::new();
    for sop in &r.scored {
        scored.update(sop.as_bytes());
        scored.update(b"\n");
    }
    let verdict = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{:?}|{}|{:x}",
        r.part,
        r.summary.rule.threshold,
        r.summary.rule.min_positive_slices,
        r.summary.rule.min_positive_extent_mm,
        r.summary.rule.min_positive_share,
        r.positive(),
        r.summary.decision.positives,
        r.summary.decision.slices,
        r.summary.decision.max_prob,
        r.summary.decision.positive_extent_mm,
        r.summary.decision.positive_share,
        scored.finalize()
    );
    let mut parts = vec![r.summary.series_uid.as_str(), r.summary.model.sha256.as_str(), verdict.as_str()];
    parts.extend_from_slice(what);
    derived_uid(&parts)
}

/// The verdict in words, as the SR states it.
fn verdict_words(r: &SeriesResult) -> String {
    // ASCII in the words (the objects are UTF-8, but PACS viewers differ in what they show).
    let (p, n, thr, need) = (r.summary.decision.positives, r.summary.decision.slices, decimal_string(r.summary.rule.threshold), r.summary.rule.describe().replace('≥', ">="));
    let extent = r.summary.decision.positive_extent_mm.map_or("unknown extent".to_string(), |e| format!("{e:.0} mm"));
    let share = format!("{:.0} % of the lung", r.summary.decision.positive_share * 100.0);
    if r.positive() {
        format!("positive: {p} of {n} slices at or above the slice threshold {thr}, {extent}, {share} (needed: {need}); findings suggestive of COVID-19 pneumonia")
    } else {
        format!("negative: {p} of {n} slices at or above the slice threshold {thr}, {extent}, {share} (needed: {need}); no COVID-19 pneumonia pattern found")
    }
}

/// The Comprehensive SR of a verdict.
fn structured_report(study: &Study, r: &SeriesResult) -> InMemDicomObject {
    let sop = uid_for(r, &["sr"]);
    let series =
        NewSeries { modality: "SR", uid: uid_for(r, &["sr-series"]), number: SR_SERIES_NUMBER, description: "ctsentry COVID-19 pneumonia triage (not for diagnostic use)" };
    let mut o = common(study, r, COMPREHENSIVE_SR, &sop, &series);
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_seq(&mut o, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Vec::new());
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new());
    put(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("CTS-REPORT", SCHEME, "COVID-19 pneumonia triage result")]);
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    // The private coding scheme, declared (PS3.3 C.12.1.1.2).
    let mut scheme = InMemDicomObject::new_empty();
    put(&mut scheme, tags::CODING_SCHEME_DESIGNATOR, VR::SH, SCHEME);
    put(&mut scheme, tags::CODING_SCHEME_NAME, VR::ST, "ctsentry concepts");
    put(&mut scheme, tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION, VR::ST, "ctsentry developers");
    put_seq(&mut o, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, vec![scheme]);
    // The evidence: the scanned series' instances that were scored.
    let mut series_ref = InMemDicomObject::new_empty();
    put(&mut series_ref, tags::SERIES_INSTANCE_UID, VR::UI, dimse::uid(r.summary.series_uid.as_str()));
    put_seq(&mut series_ref, tags::REFERENCED_SOP_SEQUENCE, r.scored.iter().map(|sop| sop_ref(&study.source_class, sop, None)).collect());
    let mut study_ref = InMemDicomObject::new_empty();
    put(&mut study_ref, tags::STUDY_INSTANCE_UID, VR::UI, dimse::uid(&study.study_uid));
    put_seq(&mut study_ref, tags::REFERENCED_SERIES_SEQUENCE, vec![series_ref]);
    if !r.scored.is_empty() {
        put_seq(&mut o, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![study_ref]);
    }
    let (name, version, sha) = (&r.summary.model.name, &r.summary.model.version, &r.summary.model.sha256);
    let unit = ("1", "no units");
    let slices = ("{slices}", "slices");
    let mut content = vec![
        text_item(code("CTS-VERDICT", SCHEME, "Verdict"), &verdict_words(r)),
        num_item(code("CTS-POSITIVE", SCHEME, "Positive slices"), r.summary.decision.positives as f64, slices),
        num_item(code("CTS-SLICES", SCHEME, "Slices scored"), r.summary.decision.slices as f64, slices),
        num_item(code("CTS-MAXPROB", SCHEME, "Maximum slice probability"), r.summary.decision.max_prob, unit),
        num_item(code("CTS-THRESHOLD", SCHEME, "Slice threshold"), r.summary.rule.threshold, unit),
        num_item(code("CTS-MINPOS", SCHEME, "Positive slices needed"), r.summary.rule.min_positive_slices as f64, slices),
        num_item(code("CTS-MINEXT", SCHEME, "Positive extent needed"), r.summary.rule.min_positive_extent_mm, ("mm", "millimeter")),
        num_item(code("CTS-SHARE", SCHEME, "Share of the lung in positive slices"), r.summary.decision.positive_share, unit),
        num_item(code("CTS-MINSHARE", SCHEME, "Share of the lung needed"), r.summary.rule.min_positive_share, unit),
        text_item(code("111001", "DCM", "Algorithm Name"), name),
        text_item(code("111003", "DCM", "Algorithm Version"), version),
        text_item(code("CTS-SHA256", SCHEME, "Model SHA-256"), sha),
        text_item(code("CTS-PRECISION", SCHEME, "Inference precision"), &r.summary.precision),
        text_item(
            code("CTS-NOTICE", SCHEME, "Notice"),
            "NOT FOR DIAGNOSTIC USE. A triage aid: a DenseNet121 classifier's slice probabilities, counted against the threshold; a radiologist reads the study.",
        ),
    ];
    if let Some(e) = r.summary.decision.positive_extent_mm {
        content.insert(3, num_item(code("CTS-EXTENT", SCHEME, "Craniocaudal extent of positive slices"), e, ("mm", "millimeter")));
    }
    for f in &r.flagged {
        let mut it = item("IMAGE", code("CTS-FLAGGED", SCHEME, "Slice at or above threshold"));
        put_seq(&mut it, tags::REFERENCED_SOP_SEQUENCE, vec![sop_ref(&study.source_class, &f.sop, f.multi_frame.then_some(f.frame))]);
        content.push(it);
    }
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content);
    o
}

/// A Secondary Capture of one heat map (an RGB PNG).
fn heatmap_capture(study: &Study, r: &SeriesResult, f: &Flagged, png: &Path, number: usize) -> Result<InMemDicomObject, String> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).map_err(|e| format!("{}: {e}", png.display()))?));
    let mut reader = dec.read_info().map_err(|e| format!("{}: {e}", png.display()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("{}: {e}", png.display()))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(format!("{}: not an 8-bit RGB image ({:?}, {:?})", png.display(), info.color_type, info.bit_depth));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let mut pixels = buf[..w * h * 3].to_vec();
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    let sop = uid_for(r, &["sc", &f.sop, &f.frame.to_string()]);
    let series = NewSeries { modality: "OT", uid: uid_for(r, &["sc-series"]), number: SC_SERIES_NUMBER, description: "ctsentry heat maps (NOT FOR DIAGNOSTIC USE)" };
    let mut o = common(study, r, SECONDARY_CAPTURE, &sop, &series);
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, number.to_string());
    put(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    // Both lungs, not one side of a paired part: empty, as Type 2C allows.
    put(&mut o, tags::LATERALITY, VR::CS, PrimitiveValue::Empty);
    put(&mut o, tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty);
    put(&mut o, tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(dicom_core::smallvec::smallvec!["DERIVED".to_string(), "SECONDARY".to_string()]));
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put(&mut o, tags::DERIVATION_DESCRIPTION, VR::ST, format!("class activation map of {} {} over the CT slice", r.summary.model.name, r.summary.model.version));
    put(&mut o, tags::IMAGE_COMMENTS, VR::LT, format!("NOT FOR DIAGNOSTIC USE. Slice probability {:.4}, threshold {}.", f.prob, decimal_string(r.summary.rule.threshold)));
    put_seq(&mut o, tags::SOURCE_IMAGE_SEQUENCE, vec![sop_ref(&study.source_class, &f.sop, f.multi_frame.then_some(f.frame))]);
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 3u16);
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put(&mut o, tags::PLANAR_CONFIGURATION, VR::US, 0u16);
    put(&mut o, tags::ROWS, VR::US, h as u16);
    put(&mut o, tags::COLUMNS, VR::US, w as u16);
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 8u16);
    put(&mut o, tags::BITS_STORED, VR::US, 8u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 7u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    put(&mut o, tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into()));
    Ok(o)
}

/// Why a verdict's objects were not spooled.
#[derive(Debug, Clone, PartialEq)]
pub enum SpoolError {
    /// The series' own file cannot give the patient and study: nothing can be sent.
    Source(String),
    /// The spool cannot be written (try again).
    Write(String),
}

/// Writes the objects of a verdict into the spool `dir` (SR first, then the heat maps of the
/// `settings.max_heatmaps` most probable positive slices, in slice order), each atomically as
/// `<series id>.<NNN>.dcm`; returns the files. A heat map that cannot be read is left out (and
/// logged); the SR names every positive slice regardless.
pub fn spool(settings: &ExportSettings, dir: &Path, r: &SeriesResult) -> Result<Vec<PathBuf>, SpoolError> {
    let study = Study::read(r.source).map_err(SpoolError::Source)?;
    let mut objects = Vec::new();
    if settings.sr {
        objects.push(structured_report(&study, r));
    }
    if settings.heatmaps && r.positive() {
        let mut best: Vec<&Flagged> = r.flagged.iter().filter(|f| f.heatmap.is_some()).collect();
        best.sort_by(|a, b| b.prob.total_cmp(&a.prob));
        best.truncate(settings.max_heatmaps);
        let chosen: std::collections::HashSet<(&str, usize)> = best.iter().map(|f| (f.sop.as_str(), f.frame)).collect();
        let mut number = 0;
        for f in r.flagged.iter().filter(|f| chosen.contains(&(f.sop.as_str(), f.frame))) {
            let png = f.heatmap.as_deref().expect("chosen ones have a heat map");
            match heatmap_capture(&study, r, f, png, number + 1) {
                Ok(o) => {
                    number += 1;
                    objects.push(o);
                }
                Err(e) => log::warn!("export: heat map left out: {e}"),
            }
        }
    }
    let id = crate::alert::series_id(r.summary.series_uid.as_str(), r.part);
    let mut files = Vec::new();
    for (i, o) in objects.into_iter().enumerate() {
        let path = dir.join(format!("{id}.{i:03}.dcm"));
        let meta = FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_LE).implementation_class_uid(dimse::IMPLEMENTATION_CLASS_UID).implementation_version_name("CTSENTRY");
        let file = o.with_meta(meta).map_err(|e| SpoolError::Source(format!("{}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).map_err(|e| SpoolError::Source(format!("{}: cannot be encoded: {e}", path.display())))?;
        crate::durable::write_atomic(&path, &bytes).map_err(|e| SpoolError::Write(format!("{}: {e}", path.display())))?;
        files.push(path);
    }
    Ok(files)
}

/// What the sender tells the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportEvent {
    /// The PACS stored it (status success or warning); the file left the spool.
    Sent {
        /// The spool file's name.
        file: String,
        /// Its SOP Class UID.
        class: String,
        /// Its SOP Instance UID.
        sop: String,
        /// The PACS's status.
        status: u16,
    },
    /// The PACS refused it for good: moved to `failed/` with a `.reason`.
    Refused {
        /// The spool file's name.
        file: String,
        /// Why.
        reason: String,
    },
    /// The PACS takes results again (after [`ExportEvent::Unreachable`]), or nothing waits.
    Reachable,
    /// Nothing could be sent: the PACS is unreachable, refuses the association or one of the
    /// classes, or is out of resources. Tried again after `retry_s`.
    Unreachable {
        /// Why.
        reason: String,
        /// Seconds until the next try.
        retry_s: f64,
    },
}

/// The sender thread's handle.
pub struct Exporter {
    wake: Sender<()>,
    /// Set by [`Exporter::close`]: the sender stops after the object it is sending.
    closed: Arc<AtomicBool>,
    /// What happened to the spool's files.
    pub events: Receiver<ExportEvent>,
}

impl Exporter {
    /// Starts the sender on the spool `dir` (created if missing); it sends what is there at once.
    /// Returns its handle and its thread (named `dicom-export`), which the daemon supervises.
    pub fn start(settings: ExportSettings, dir: PathBuf) -> std::io::Result<(Exporter, std::thread::JoinHandle<()>)> {
        std::fs::create_dir_all(dir.join(FAILED_DIR))?;
        let (wake, wake_rx) = channel();
        let (tx, events) = channel();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let thread = std::thread::Builder::new().name("dicom-export".into()).spawn(move || run(&settings, &dir, &wake_rx, &tx, &flag))?;
        Ok((Exporter { wake, events, closed }, thread))
    }

    /// New files are in the spool: send them (unless the sender is backing off).
    pub fn wake(&self) {
        let _ = self.wake.send(());
    }

    /// Asks the sender to end: it finishes the object it is sending, if any, reports it, releases
    /// the association and returns, sending nothing more (the daemon's shutdown); a wake ends
    /// its wait at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake();
    }
}

/// The spool's files waiting to be sent, oldest name first.
pub fn pending(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "dcm") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Objects sent per association at most (each is read only when its turn comes).
const PER_ASSOCIATION: usize = 64;

fn run(settings: &ExportSettings, dir: &Path, wake: &Receiver<()>, tx: &Sender<ExportEvent>, closed: &AtomicBool) {
    let mut backoff: Option<f64> = None;
    while !closed.load(Ordering::SeqCst) {
        crate::failpoint::hit("export-run");
        let files = pending(dir);
        let more = files.len() > PER_ASSOCIATION;
        if files.is_empty() {
            // Nothing waits: whatever kept the PACS from taking results no longer matters.
            if backoff.take().is_some() && tx.send(ExportEvent::Reachable).is_err() {
                return;
            }
        } else {
            match send_all(settings, dir, &files[..files.len().min(PER_ASSOCIATION)], tx, closed) {
                Ok(()) => {
                    if backoff.take().is_some() && tx.send(ExportEvent::Reachable).is_err() {
                        return;
                    }
                    if more {
                        continue;
                    }
                }
                Err(e) => {
                    // What may pass by itself is tried again soon, then less and less often; a
                    // refusal by the PACS's configuration waits the longest back-off at once.
                    let wait = if e.is_transient() { backoff.map_or(1.0, |w| w * 2.0) } else { settings.retry_max_seconds }.min(settings.retry_max_seconds);
                    backoff = Some(wait);
                    if tx.send(ExportEvent::Unreachable { reason: e.to_string(), retry_s: wait }).is_err() {
                        return;
                    }
                }
            }
        }
        // Wait for new files, or the back-off (which new files do not cut short), or a periodic
        // look at the spool.
        let deadline = Instant::now() + Duration::from_secs_f64(backoff.unwrap_or(30.0));
        loop {
            match wake.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) if backoff.is_some() && !closed.load(Ordering::SeqCst) => continue,
                Ok(()) | Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Moves a file the PACS will never take to `failed/`, with its reason beside it.
fn set_aside(dir: &Path, path: &Path, reason: &str, tx: &Sender<ExportEvent>) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let failed = dir.join(FAILED_DIR);
    let _ = std::fs::create_dir_all(&failed);
    let _ = std::fs::write(failed.join(format!("{name}.reason")), format!("{reason}\n"));
    if let Err(e) = std::fs::rename(path, failed.join(&name)) {
        log::error!("export: {}: cannot be set aside: {e}", path.display());
    }
    let _ = tx.send(ExportEvent::Refused { file: name, reason: reason.to_string() });
}

/// Sends `files` over one association. `Err` when nothing more can be sent now (unreachable,
/// association refused, out of resources); files refused for good are set aside.
fn send_all(settings: &ExportSettings, dir: &Path, files: &[PathBuf], tx: &Sender<ExportEvent>, closed: &AtomicBool) -> Result<(), NetError> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(settings.calling_ae.as_str())
        .called_ae_title(settings.called_ae.as_str())
        .connection_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60));
    // Both classes ctsentry writes are proposed; the files are read one at a time below.
    for c in [COMPREHENSIVE_SR, SECONDARY_CAPTURE] {
        options = options.with_presentation_context(c, vec![EXPLICIT_LE, IMPLICIT_LE]);
    }
    let where_ = format!("{:?} at {}", settings.called_ae, settings.peer);
    let no_association = |e: dicom_ul::association::Error| NetError::Unreachable(format!("no association with the PACS {where_}: {e}"));
    match super::tls::for_peer(settings)? {
        Some((config, host)) => {
            send_over(options.tls_config(config).server_name(&host).establish_with_tls(&settings.peer).map_err(no_association)?, &where_, dir, files, tx, closed)
        }
        None => send_over(options.establish_with(&settings.peer).map_err(no_association)?, &where_, dir, files, tx, closed),
    }
}

/// Sends `files` over an established association.
fn send_over<S>(
    mut assoc: dicom_ul::association::client::ClientAssociation<S>,
    where_: &str,
    dir: &Path,
    files: &[PathBuf],
    tx: &Sender<ExportEvent>,
    closed: &AtomicBool,
) -> Result<(), NetError>
where
    S: dicom_ul::association::CloseSocket + std::io::Read + std::io::Write,
{
    let accepted: Vec<(u8, String, String)> = assoc
        .presentation_contexts()
        .iter()
        .filter(|c| c.reason == PresentationContextResultReason::Acceptance)
        .map(|c| (c.id, c.abstract_syntax.trim_end_matches('\0').to_string(), c.transfer_syntax.trim_end_matches('\0').to_string()))
        .collect();
    let mut message_id: u16 = 1;
    for path in files.iter().take_while(|_| !closed.load(Ordering::SeqCst)) {
        let obj = match OpenFileOptions::new().open_file(path) {
            Ok(obj) => obj,
            Err(e) => {
                set_aside(dir, path, &format!("unreadable spool file: {e}"), tx);
                continue;
            }
        };
        let class = obj.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
        let sop = obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0').to_string();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some((pc, _, ts_uid)) = accepted.iter().find(|(_, a, _)| *a == class) else {
            // Usually the PACS's configuration: a fault to fix, not a reason to give up.
            let _ = assoc.abort();
            return Err(NetError::Refused(format!(
                "the PACS {where_} does not accept SOP class {class} ({})",
                if class == COMPREHENSIVE_SR { "Comprehensive SR" } else { "Secondary Capture" }
            )));
        };
        let Some(ts) = TransferSyntaxRegistry.get(ts_uid) else {
            let _ = assoc.abort();
            return Err(NetError::Refused(format!("the PACS {where_} chose transfer syntax {ts_uid}, which ctsentry cannot write")));
        };
        let mut data = Vec::new();
        if let Err(e) = obj.write_dataset_with_ts(&mut data, ts) {
            set_aside(dir, path, &format!("cannot be encoded in {ts_uid}: {e}"), tx);
            continue;
        }
        let mut cmd = InMemDicomObject::new_empty();
        put(&mut cmd, tags::AFFECTED_SOP_CLASS_UID, VR::UI, dimse::uid(&class));
        put(&mut cmd, tags::COMMAND_FIELD, VR::US, dimse::C_STORE_RQ);
        put(&mut cmd, tags::MESSAGE_ID, VR::US, message_id);
        put(&mut cmd, tags::PRIORITY, VR::US, 0u16);
        put(&mut cmd, tags::COMMAND_DATA_SET_TYPE, VR::US, dimse::DATA_SET);
        put(&mut cmd, tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, dimse::uid(&sop));
        let pdu = Pdu::PData { data: vec![PDataValue { presentation_context_id: *pc, value_type: PDataValueType::Command, is_last: true, data: dimse::command_set(&cmd) }] };
        let sent = assoc.send(&pdu).map_err(|e| e.to_string()).and_then(|()| {
            let mut w = assoc.send_pdata(*pc);
            w.write_all(&data).and_then(|()| w.finish()).map_err(|e| e.to_string())
        });
        if let Err(e) = sent {
            return Err(NetError::Link(format!("sending to the PACS {where_}: {e}")));
        }
        let status = match dimse::response_status(&mut assoc, dimse::C_STORE_RSP, message_id) {
            Ok(s) => s,
            Err(e) => {
                let _ = assoc.abort();
                return Err(e.with_context(&format!("the PACS {where_}")));
            }
        };
        message_id = message_id.wrapping_add(1).max(1);
        match status {
            // Success, and the warnings that still mean "stored".
            0x0000 | 0x0001 | 0xB000 | 0xB006 | 0xB007 => {
                if let Err(e) = std::fs::remove_file(path).and_then(|()| crate::durable::sync_dir(dir)) {
                    log::error!("export: {}: sent, but not removed from the spool: {e}", path.display());
                }
                if tx.send(ExportEvent::Sent { file: name, class, sop, status }).is_err() {
                    return Ok(());
                }
            }
            s if s & 0xFF00 == 0xA700 => {
                let _ = assoc.abort();
                return Err(NetError::Busy(format!("the PACS {where_} is out of resources (status 0x{s:04X})")));
            }
            s => set_aside(dir, path, &format!("the PACS {where_} refused it with status 0x{s:04X}"), tx),
        }
    }
    let _ = assoc.release();
    Ok(())
}

/// Asks the PACS for a C-ECHO (what `doctor` checks): Ok when it answers success.
pub fn echo(settings: &ExportSettings, timeout: Duration) -> Result<(), NetError> {
    let where_ = format!("{:?} at {}", settings.called_ae, settings.peer);
    let options = ClientAssociationOptions::new()
        .calling_ae_title(settings.calling_ae.as_str())
        .called_ae_title(settings.called_ae.as_str())
        .with_abstract_syntax(crate::net::scp::VERIFICATION)
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout);
    let no_association = |e: dicom_ul::association::Error| NetError::Unreachable(format!("no association with the PACS {where_}: {e}"));
    match super::tls::for_peer(settings)? {
        Some((config, host)) => echo_over(options.tls_config(config).server_name(&host).establish_with_tls(&settings.peer).map_err(no_association)?, &where_),
        None => echo_over(options.establish_with(&settings.peer).map_err(no_association)?, &where_),
    }
}

/// C-ECHO over an established association.
fn echo_over<S>(mut assoc: dicom_ul::association::client::ClientAssociation<S>, where_: &str) -> Result<(), NetError>
where
    S: dicom_ul::association::CloseSocket + std::io::Read + std::io::Write,
{
    let Some(pc) = assoc.presentation_contexts().iter().find(|c| c.reason == PresentationContextResultReason::Acceptance).map(|c| c.id) else {
        let _ = assoc.abort();
        return Err(NetError::Refused(format!("the PACS {where_} does not accept C-ECHO")));
    };
    let mut cmd = InMemDicomObject::new_empty();
    put(&mut cmd, tags::AFFECTED_SOP_CLASS_UID, VR::UI, dimse::uid(crate::net::scp::VERIFICATION));
    put(&mut cmd, tags::COMMAND_FIELD, VR::US, dimse::C_ECHO_RQ);
    put(&mut cmd, tags::MESSAGE_ID, VR::US, 1u16);
    put(&mut cmd, tags::COMMAND_DATA_SET_TYPE, VR::US, dimse::NO_DATA_SET);
    let pdu = Pdu::PData { data: vec![PDataValue { presentation_context_id: pc, value_type: PDataValueType::Command, is_last: true, data: dimse::command_set(&cmd) }] };
    assoc.send(&pdu).map_err(|e| NetError::Link(format!("the PACS {where_}: {e}")))?;
    let status = dimse::response_status(&mut assoc, dimse::C_ECHO_RSP, 1).map_err(|e| e.with_context(&format!("the PACS {where_}")))?;
    let _ = assoc.release();
    if status == dimse::SUCCESS {
        Ok(())
    } else {
        Err(NetError::Refused(format!("the PACS {where_} answered C-ECHO with status 0x{status:04X}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(crate::durable::utc_date_time(0.0), ("19700101".into(), "000000".into()));
        assert_eq!(crate::durable::utc_date_time(951_782_400.0), ("20000229".into(), "000000".into()));
        assert_eq!(crate::durable::utc_date_time(1_795_803_722.5), ("20261127".into(), "182202".into()));
    }

    #[test]
    fn derived_uids_are_stable_valid_and_distinct() {
        let a = derived_uid(&["1.2.3", "sr"]);
        assert_eq!(a, derived_uid(&["1.2.3", "sr"]));
        assert_ne!(a, derived_uid(&["1.2.3", "sr-series"]));
        assert!(a.len() <= 64 && a.starts_with("2.25.") && a[5..].chars().all(|c| c.is_ascii_digit()) && !a[5..].starts_with('0'));
        let n: u128 = a[5..].parse().unwrap();
        assert_eq!((n >> 76) & 0xF, 5, "UUID version 5");
        assert_eq!((n >> 62) & 0x3, 2, "RFC 4122 variant");
    }

    #[test]
    fn decimal_strings_fit_sixteen_characters_and_keep_small_values() {
        for (v, want) in [(0.583824, "0.583824"), (91.0, "91"), (1e-7, "0.0000001"), (0.7376530170440674, "7.376530170e-1")] {
            assert_eq!(decimal_string(v), want);
            assert!(decimal_string(v).len() <= 16);
        }
    }
}
