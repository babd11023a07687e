//! The DICOM network: a scanner's C-STORE (DCMTK storescu) in, results to a PACS (Orthanc) out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::common::*;
use super::harness::*;

/// Whether DCMTK (storescu, dsrdump) and Orthanc are installed; reports the first one missing
/// ([`tool_missing`]: a failure under CI).
fn pacs_peers_installed() -> bool {
    tools_installed(&[("storescu", "apt-get install dcmtk"), ("dsrdump", "apt-get install dcmtk"), ("Orthanc", "apt-get install orthanc")])
}

/// A PACS for the test: Orthanc (Debian's package) on loopback ports, with a temporary JSON
/// config and storage under `dir`; started and stopped (killed, as a crash) by the test.
pub(super) struct Pacs {
    config: PathBuf,
    pub(super) dicom_port: u16,
    http: String,
    child: Option<Child>,
}

impl Pacs {
    fn new(dir: &Path) -> Pacs {
        Pacs::with(dir, serde_json::json!({}))
    }

    /// [`Pacs::new`] with more settings (`extra`'s keys added to Orthanc's config, e.g. DICOM TLS).
    pub(super) fn with(dir: &Path, extra: serde_json::Value) -> Pacs {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (dicom_port, http_port) = (free_port(), free_port());
        let config = dir.join("orthanc.json");
        let mut json = serde_json::json!({
            "Name": "TESTPACS", "StorageDirectory": dir.join("db"), "IndexDirectory": dir.join("db"),
            "DicomAet": "PACS", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false, "DicomCheckCalledAet": true, "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true, "Plugins": [], "StableAge": 1
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            json[k] = v.clone();
        }
        std::fs::write(&config, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        Pacs { config, dicom_port, http: format!("127.0.0.1:{http_port}"), child: None }
    }

    pub(super) fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.config.with_extension("log")).unwrap();
        self.child = Some(Command::new("Orthanc").arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().unwrap());
        assert!(wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(&self.http).is_ok()), "Orthanc did not start");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET from Orthanc's REST API; anything but 200 fails the test.
    fn get(&self, path: &str) -> Vec<u8> {
        let (code, body) = http_get_bytes(&self.http, path);
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        body
    }

    fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(path)).unwrap()
    }

    /// The study with this Study Instance UID: its series as (modality, series UID, instance ids).
    pub(super) fn study(&self, study_uid: &str) -> Vec<(String, String, Vec<String>)> {
        let ids: Vec<String> = serde_json::from_value(self.json("/studies")).unwrap();
        let Some(id) = ids.into_iter().find(|id| self.json(&format!("/studies/{id}"))["MainDicomTags"]["StudyInstanceUID"] == study_uid) else { return Vec::new() };
        let series: Vec<String> = serde_json::from_value(self.json(&format!("/studies/{id}"))["Series"].clone()).unwrap();
        let mut out: Vec<(String, String, Vec<String>)> = series
            .iter()
            .map(|s| {
                let v = self.json(&format!("/series/{s}"));
                let t = &v["MainDicomTags"];
                (
                    t["Modality"].as_str().unwrap_or("").to_string(),
                    t["SeriesInstanceUID"].as_str().unwrap_or("").to_string(),
                    serde_json::from_value(v["Instances"].clone()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The study's series as (modality, number of instances), sorted. Orthanc indexes what the
    /// exporter sends one instance at a time: wait on this, not on the number of series.
    pub(super) fn counts(&self, study_uid: &str) -> Vec<(String, usize)> {
        let mut c: Vec<(String, usize)> = self.study(study_uid).into_iter().map(|s| (s.0, s.2.len())).collect();
        c.sort();
        c
    }
}

/// `(modality, instances)` pairs as [`Pacs::counts`] gives them.
pub(super) fn modalities(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
    let mut c: Vec<(String, usize)> = pairs.iter().map(|(m, n)| (m.to_string(), *n)).collect();
    c.sort();
    c
}

impl Drop for Pacs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies of `files` with valid UIDs (COVID-CT-MD is de-identified with UUID strings where UIDs
/// belong, which DCMTK refuses to send): study, series and instance UIDs become `2.25.` UIDs
/// derived from the originals; pixel data and everything else stay as they are.
fn with_valid_uids(files: &[PathBuf], out: &Path) -> (Vec<PathBuf>, String, String) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(out).unwrap();
    let valid = |s: &str| ctsentry::net::export::derived_uid(&["test", s.trim_end_matches('\0')]);
    let (mut study, mut series) = (String::new(), String::new());
    let copies = files
        .iter()
        .map(|f| {
            let mut obj = dicom_object::open_file(f).unwrap();
            let uid = |o: &dicom_object::DefaultDicomObject, t| o.element(t).unwrap().to_str().unwrap().to_string();
            let (st, se, sop) = (valid(&uid(&obj, tags::STUDY_INSTANCE_UID)), valid(&uid(&obj, tags::SERIES_INSTANCE_UID)), valid(&uid(&obj, tags::SOP_INSTANCE_UID)));
            for (t, v) in [(tags::STUDY_INSTANCE_UID, &st), (tags::SERIES_INSTANCE_UID, &se), (tags::SOP_INSTANCE_UID, &sop)] {
                obj.put(DataElement::new(t, VR::UI, PrimitiveValue::from(v.as_str())));
            }
            obj.meta_mut().media_storage_sop_instance_uid = format!("{sop}\0");
            obj.meta_mut().update_information_group_length();
            (study, series) = (st, se);
            let p = out.join(f.file_name().unwrap());
            obj.write_to_file(&p).unwrap();
            p
        })
        .collect();
    (copies, study, series)
}

/// The DICOM receiver with DCMTK as the scanner: C-ECHO answers, an unknown calling AE is
/// refused (and logged with its title), and a series sent with storescu lands in the drop folder
/// and gets one FINAL verdict over every slice, its files then in done/.
#[test]
fn a_series_sent_by_dcmtk_storescu_gets_one_final_verdict() {
    if !tools_installed(&[("storescu", "apt-get install dcmtk"), ("echoscu", "apt-get install dcmtk")]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let cfg = config(root, &format!("[dicom]\nenabled = true\nae_title = \"CTSENTRY\"\nlisten = \"127.0.0.1:{port}\"\nallowed_callers = [\"SCANNER\"]\nmax_instance_mb = 1\n"));
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "no receiver:\n{}", read_log());
    let dcmtk = |tool: &str, aet: &str, files: &[PathBuf]| Command::new(tool).args(["-aet", aet, "-aec", "CTSENTRY", "127.0.0.1", &port.to_string()]).args(files).output().unwrap();
    let echo = dcmtk("echoscu", "SCANNER", &[]);
    assert!(echo.status.success(), "echoscu: {}", String::from_utf8_lossy(&echo.stderr));
    let refused = dcmtk("echoscu", "INTRUDER", &[]);
    assert!(!refused.status.success(), "an unknown calling AE was accepted");
    assert!(wait_until(Duration::from_secs(5), || read_log().contains("calling AE \"INTRUDER\"")), "refusal not logged:\n{}", read_log());

    let src = root.join("scanner");
    write_series(&src, "s", "1.2.826.0.1.3680043.9.7307.17.1", 200, 6);
    let files = walk(&src.join("s"));
    let sent = dcmtk("storescu", "SCANNER", &files);
    assert!(sent.status.success(), "storescu: {}{}", String::from_utf8_lossy(&sent.stdout), String::from_utf8_lossy(&sent.stderr));
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "no FINAL:\n{}", read_log());
    let f = &finals(&results)[0];
    assert_eq!((f.series_uid.as_str(), f.slices), ("1.2.826.0.1.3680043.9.7307.17.1", 6), "{f:?}");
    assert_eq!(rels(&root.join("var/done")).iter().filter(|r| r.starts_with("dicom-SCANNER/") && r.ends_with(".dcm")).count(), 6, "{:?}", rels(&root.join("var/done")));
    assert!(walk(&root.join("var/incoming")).is_empty(), "left in incoming: {:?}", walk(&root.join("var/incoming")));
    // An instance over dicom.max_instance_mb (1 MiB here; this one is 2.4 MB) is refused with
    // "out of resources" and leaves nothing behind.
    let mut big = CtSlice::pattern(1100, 1100, 1, 0.0);
    big.series_uid = "1.2.826.0.1.3680043.9.7307.17.2".into();
    big.sop_uid = "1.2.826.0.1.3680043.9.7307.17.2.1".into();
    big.write(&root.join("big.dcm"), EXPLICIT_LE);
    let sent = dcmtk("storescu", "SCANNER", &[root.join("big.dcm")]);
    let said = format!("{}{}", String::from_utf8_lossy(&sent.stdout), String::from_utf8_lossy(&sent.stderr));
    assert!(said.to_lowercase().contains("a700") || said.contains("Out of Resources") || !sent.status.success(), "storescu was not told of the refusal: {said}");
    assert!(wait_until(Duration::from_secs(5), || read_log().contains("larger than dicom.max_instance_mb (1 MiB): refused")), "{}", read_log());
    std::thread::sleep(Duration::from_millis(500));
    let everything: Vec<String> =
        [walk(&root.join("var/incoming")), walk(&root.join("var/done")), walk(&root.join("var/quarantine"))].concat().iter().map(|p| p.display().to_string()).collect();
    assert!(!everything.iter().any(|p| p.contains("17.2.1") || p.ends_with(".part")), "the refused instance left {everything:?}");
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// Results back to the PACS, against Orthanc as the PACS and DCMTK as the scanner and the
/// validator: a series received by C-STORE gets its SR and (positive) heat maps in the same study
/// at Orthanc; dsrdump reads the verdict in the SR, dciodvfy finds no error in it nor in a heat map;
/// the PACS down at the verdict, and again killed while the daemon runs, means FAULT EXPORT
/// and the results waiting, then delivery once it is back and CLEAR; a restart sends nothing
/// again.
#[test]
fn results_reach_orthanc_in_the_scanned_study_once_through_pacs_outages() {
    if !pacs_peers_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut pacs = Pacs::new(&root.join("pacs"));
    let port = free_port();
    let (mut serial, leds, peers) = alert_peers(root);
    let cfg = config(
        root,
        &format!(
            "[dicom]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
             [export]\nenabled = true\npeer = \"127.0.0.1:{}\"\ncalled_ae = \"PACS\"\ncalling_ae = \"CTSENTRY\"\nmax_heatmaps = 3\nretry_max_seconds = 1\n{peers}",
            pacs.dicom_port
        ),
    );
    let mut buf = Vec::new();
    let is = |l: &[String], event: &str, kind: &str| l.get(2).is_some_and(|e| e == event) && l.get(3).is_some_and(|k| k == kind);
    // Every slice positive: the series gets heat maps.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("threshold = 0.5", "threshold = 0.000001")).unwrap();
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "{}", read_log());
    let storescu = |port: u16, aec: &str, files: &[PathBuf]| {
        let out = Command::new("storescu").args(["-aet", "SCANNER", "-aec", aec, "127.0.0.1", &port.to_string()]).args(files).output().unwrap();
        assert!(out.status.success(), "storescu to {aec}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let faults = |cfg: &Path| status_json(cfg)["faults"].as_array().cloned().unwrap_or_default();
    let study_uid = "1.2.826.0.1.3680043.8.498.9"; // what the synthetic slices carry
    let src = root.join("scanner");
    let (a, b) = ("1.2.826.0.1.3680043.9.7307.19.1", "1.2.826.0.1.3680043.9.7307.19.2");
    write_series(&src, "a", a, 200, 5);
    write_series(&src, "b", b, 200, 4);
    let spool = root.join("var/state/export");
    let results = root.join("var/results");

    // The PACS is down when series a's verdict comes: FAULT EXPORT, the results wait.
    storescu(port, "CTSENTRY", &walk(&src.join("a")));
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || faults(&cfg).iter().any(|f| f == "EXPORT")), "no FAULT EXPORT: {}\n{}", status_json(&cfg), read_log());
    assert!(read_log().contains("results wait in the spool"), "{}", read_log());
    // On the serial line and the LEDs, as a technician sees it: FAULT,EXPORT, red blinking.
    let lines = read_until(&mut serial, &mut buf, Duration::from_secs(10), |l| is(l, "FAULT", "EXPORT"));
    assert!(lines.iter().any(|l| is(l, "FAULT", "EXPORT")), "{lines:?}");
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[1] == "blink"), "{:?}", look(&leds));
    let waiting = rels(&spool).into_iter().filter(|r| r.ends_with(".dcm") && !r.starts_with("failed/")).count();
    assert_eq!(waiting, 4, "the SR and 3 heat maps (export.max_heatmaps) wait: {:?}", rels(&spool));

    // The PACS comes up; the scanner's own copy of the series arrives there too.
    pacs.start();
    storescu(pacs.dicom_port, "PACS", &walk(&src.join("a")));
    assert!(wait_until(Duration::from_secs(20), || faults(&cfg).is_empty()), "FAULT EXPORT not cleared: {}\n{}", status_json(&cfg), read_log());
    let lines = read_until(&mut serial, &mut buf, Duration::from_secs(10), |l| is(l, "CLEAR", "EXPORT"));
    assert!(lines.iter().any(|l| is(l, "CLEAR", "EXPORT")), "{lines:?}");
    // Red steady again: the positive series' alert stays latched, the fault is gone.
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[1] == "on"), "{:?}", look(&leds));
    let want = modalities(&[("CT", 5), ("OT", 3), ("SR", 1)]);
    assert!(wait_until(Duration::from_secs(20), || pacs.counts(study_uid) == want), "{:?}", pacs.study(study_uid));
    let series = pacs.study(study_uid);
    let by_modality = |m: &str| series.iter().filter(|s| s.0 == m).cloned().collect::<Vec<_>>();
    assert_eq!((by_modality("CT").len(), by_modality("CT")[0].1.as_str(), by_modality("CT")[0].2.len()), (1, a, 5), "{series:?}");
    assert_eq!(by_modality("SR").iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![1], "one SR in the scanned study: {series:?}");
    assert_eq!(by_modality("OT").iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![3], "3 heat maps in the scanned study: {series:?}");
    // The SR, as DCMTK reads it: the verdict in words, the counts, the threshold, the model.
    let sr_file = root.join("sr.dcm");
    std::fs::write(&sr_file, pacs.get(&format!("/instances/{}/file", by_modality("SR")[0].2[0]))).unwrap();
    let dump = Command::new("dsrdump").args(["+Pl", "+Pu"]).arg(&sr_file).output().unwrap();
    let text = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(dump.status.success(), "dsrdump: {}", String::from_utf8_lossy(&dump.stderr));
    for want in [
        "Comprehensive SR Document",
        "\"Verdict\")=\"positive: 5 of 5 slices",
        "\"Slices scored\")=\"5\"",
        "\"Positive slices\")=\"5\"",
        "\"Slice threshold\")=\"0.000001\"",
        "threshold 0.000001, ",
        "(needed: >= 2 slices positive (count: config, physical: default))",
        "\"Craniocaudal extent of positive slices\")=\"",
        "\"Positive extent needed\")=\"0\"",
        "\"Share of the lung in positive slices\")=\"",
        "\"Algorithm Name\")=\"tiny",
        "\"Inference precision\")=\"",
        "Manufacturer        : ctsentry",
    ] {
        assert!(text.contains(want), "dsrdump lacks {want:?}:\n{text}");
    }
    assert_eq!(text.matches("IMAGE:(,,\"Slice at or above threshold\")").count(), 5, "the SR references every positive slice:\n{text}");
    for k in 0..5 {
        assert!(text.contains(&format!("(CT image,\"{a}.{k}\")")), "slice {k} not referenced:\n{text}");
    }
    let sc_file = root.join("sc.dcm");
    std::fs::write(&sc_file, pacs.get(&format!("/instances/{}/file", by_modality("OT")[0].2[0]))).unwrap();
    // The SR and a Secondary Capture against their IODs (dicom3tools; .ci/run installs it).
    if installed("dciodvfy") {
        for (what, file) in [("SR", &sr_file), ("Secondary Capture", &sc_file)] {
            let v = Command::new("dciodvfy").arg(file).output().unwrap();
            let said = String::from_utf8_lossy(&v.stderr).to_string() + &String::from_utf8_lossy(&v.stdout);
            assert!(!said.lines().any(|l| l.starts_with("Error")), "dciodvfy on the {what}:\n{said}");
        }
    } else {
        tool_missing("dciodvfy", "apt-get install dicom3tools");
    }
    let sc = pacs.json(&format!("/instances/{}/simplified-tags", by_modality("OT")[0].2[0]));
    assert_eq!(
        (sc["SOPClassUID"].as_str(), sc["BurnedInAnnotation"].as_str(), sc["PhotometricInterpretation"].as_str()),
        (Some("1.2.840.10008.5.1.4.1.1.7"), Some("YES"), Some("RGB")),
        "{sc}"
    );
    assert!(sc["ImageComments"].as_str().unwrap_or("").contains("NOT FOR DIAGNOSTIC USE"), "{sc}");

    // The PACS dies while the daemon runs, before series b arrives: its results wait (FAULT
    // EXPORT), and go once the PACS is back.
    pacs.kill();
    storescu(port, "CTSENTRY", &walk(&src.join("b")));
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 2), "{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || faults(&cfg).iter().any(|f| f == "EXPORT")), "no FAULT EXPORT: {}", status_json(&cfg));
    pacs.start();
    assert!(wait_until(Duration::from_secs(20), || faults(&cfg).is_empty()), "{}\n{}", status_json(&cfg), read_log());
    let want = modalities(&[("CT", 5), ("OT", 3), ("OT", 3), ("SR", 1), ("SR", 1)]);
    assert!(
        wait_until(Duration::from_secs(20), || pacs.counts(study_uid) == want),
        "the study at the PACS: the CT series, and per verdict one SR and 3 heat maps: {:?}",
        pacs.study(study_uid)
    );

    // A restart sends nothing again: every object was stored once, and the spool is empty.
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
    let before = read_log();
    let mut d = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(60), || read_log().len() > before.len() && read_log()[before.len()..].contains("ready: watching")), "{}", read_log());
    std::thread::sleep(Duration::from_secs(3));
    let stored: Vec<String> = read_log().lines().filter(|l| l.contains("stored by the PACS")).map(|l| l.split_whitespace().nth(4).unwrap_or("").to_string()).collect();
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!((stored.len(), unique.len()), (8, 8), "each of the 8 objects (2 SRs, 6 heat maps) stored exactly once: {stored:?}");
    assert!(!read_log()[before.len()..].contains("stored by the PACS"), "sent again after the restart");
    assert!(rels(&spool).iter().all(|r| !r.ends_with(".dcm")), "left in the spool: {:?}", rels(&spool));
    assert_eq!(pacs.counts(study_uid), want, "the study at the PACS after the restart: as before");
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// The whole network path on a real series, as in the scanner room: DCMTK's storescu sends
/// COVID-CT-MD's P001 (148 slices, JPEG lossless; valid UIDs given first) to the daemon running
/// the shipped model and to Orthanc; one FINAL verdict over all 148 slices, and its SR (and heat
/// maps, when positive) in P001's study at Orthanc, stating the same verdict.
#[test]
fn a_shared_series_sent_by_storescu_gets_one_verdict_over_every_slice_and_its_results_at_the_pacs() {
    let Some(data) = shared_data("covid-ct-md/P001") else { return };
    if !pacs_peers_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (files, study_uid, series_uid) = with_valid_uids(&walk(&data.join("covid-ct-md/P001")), &root.join("scanner"));
    assert_eq!(files.len(), 148);
    let mut pacs = Pacs::new(&root.join("pacs"));
    pacs.start();
    let port = free_port();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densenet121-covid.onnx");
    let cfg = root.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nincoming = \"var/incoming\"\ndone = \"var/done\"\nquarantine = \"var/quarantine\"\nresults = \"var/results\"\nstate = \"var/state\"\n\
             [model]\npath = \"{}\"\n[series]\nquiet_seconds = 2.0\n[disk]\nmin_free_mb = 0\n\
             [dicom]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nallowed_callers = [\"SCANNER\"]\n\
             [export]\nenabled = true\npeer = \"127.0.0.1:{}\"\ncalled_ae = \"PACS\"\n",
            model.display(),
            pacs.dicom_port
        ),
    )
    .unwrap();
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(120), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "{}", read_log());
    for (port, aec) in [(port, "CTSENTRY"), (pacs.dicom_port, "PACS")] {
        // -xs: propose JPEG lossless (P001's transfer syntax), not only uncompressed ones.
        let out = Command::new("storescu").args(["-xs", "-aet", "SCANNER", "-aec", aec, "127.0.0.1", &port.to_string()]).args(&files).output().unwrap();
        assert!(out.status.success(), "storescu to {aec}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(300), || finals(&results).len() == 1), "{}", read_log());
    let f = &finals(&results)[0];
    assert_eq!((f.series_uid.as_str(), f.slices), (series_uid.as_str(), 148), "{f:?}");
    assert_eq!(rels(&root.join("var/done")).len(), 148);
    let positive = f.event == FeedKind::Alert;
    let positives = f.positives;
    let maps = if positive { positives.min(16) as usize } else { 0 };
    let want = if maps > 0 { modalities(&[("CT", 148), ("SR", 1), ("OT", maps)]) } else { modalities(&[("CT", 148), ("SR", 1)]) };
    assert!(wait_until(Duration::from_secs(60), || pacs.counts(&study_uid) == want), "{:?}\n{}", pacs.study(&study_uid), read_log());
    let series = pacs.study(&study_uid);
    let sr = series.iter().find(|s| s.0 == "SR").unwrap();
    std::fs::write(root.join("sr.dcm"), pacs.get(&format!("/instances/{}/file", sr.2[0]))).unwrap();
    let text = String::from_utf8_lossy(&Command::new("dsrdump").arg(root.join("sr.dcm")).output().unwrap().stdout).to_string();
    let verdict = format!("\"Verdict\")=\"{}: {positives} of 148 slices", if positive { "positive" } else { "negative" });
    assert!(text.contains(&verdict), "dsrdump lacks {verdict:?}:\n{text}");
    assert!(text.contains("\"Algorithm Name\")=\"densenet121-covid\""), "{text}");
    eprintln!("P001 over DICOM: {} of 148 positive ({:?}), SR and {maps} heat map(s) at Orthanc", positives, f.event);
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// `Exporter::close` ends the sender, waiting for files or backing off, with a wake still queued
/// (the daemon's shutdown needs it); a file it did not send stays in the spool.
#[test]
fn closing_ends_the_sender_idle_or_backing_off() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = ctsentry::config::ExportSettings {
        enabled: true,
        peer: format!("127.0.0.1:{closed_port}"),
        called_ae: "PACS".into(),
        calling_ae: "CTSENTRY".into(),
        sr: true,
        heatmaps: true,
        max_heatmaps: 3,
        retry_max_seconds: 60.0,
        tls: None,
    };
    for with_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        with_file.then(|| std::fs::write(dir.path().join("a.dcm"), b"not sent: nobody listens").unwrap());
        let (ex, thread) = ctsentry::net::export::Exporter::start(settings.clone(), dir.path().to_path_buf()).unwrap();
        if with_file {
            let e = ex.events.recv_timeout(Duration::from_secs(20)).expect("the sender reports the unreachable PACS");
            assert!(matches!(e, ctsentry::net::export::ExportEvent::Unreachable { .. }), "{e:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(!thread.is_finished(), "the sender waits (with_file {with_file})");
        ex.close();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(thread.is_finished(), "closed, the sender ends (with_file {with_file})");
        assert_eq!(dir.path().join("a.dcm").exists(), with_file, "a file not sent stays in the spool");
    }
}
