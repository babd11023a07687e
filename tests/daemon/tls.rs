//! DICOM TLS against DCMTK: callers with a certificate from the configured CA are accepted and
//! their series scored; plain, anonymous-TLS and other-CA callers are refused; results go to a
//! PACS (DCMTK's storescp in TLS mode) that must present a certificate from `[export.tls] ca`.
//! Certificates are made by the test with `openssl`. Results also reach Orthanc (Debian's 1.10)
//! with `DicomTlsEnabled`, once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::common::*;
use super::harness::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA `name` (name.pem, name.key) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "60",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `name` for 127.0.0.1 signed by CA `by`.
fn leaf(dir: &Path, name: &str, by: &str) -> (PathBuf, PathBuf) {
    openssl(dir, &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]);
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{by}.pem"),
            "-CAkey",
            &format!("{by}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "60",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    (dir.join(format!("{name}.key")), dir.join(format!("{name}.pem")))
}

/// `root/pki` with the site's CA and another CA (`site-ca`, `other-ca`).
fn site_pki(root: &Path) -> PathBuf {
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    ca(&pki, "site-ca");
    ca(&pki, "other-ca");
    pki
}

#[test]
fn dicom_tls_admits_only_callers_with_a_certificate_from_the_ca_and_sends_results_over_tls() {
    let dcmtk = "apt-get install dcmtk";
    if !tools_installed(&[("openssl", "apt-get install openssl"), ("echoscu", dcmtk), ("storescu", dcmtk), ("storescp", dcmtk)]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = site_pki(root);
    let (box_key, box_pem) = leaf(&pki, "box", "site-ca");
    let (scanner_key, scanner_pem) = leaf(&pki, "scanner", "site-ca");
    let (pacs_key, pacs_pem) = leaf(&pki, "pacs", "site-ca");
    let (intruder_key, intruder_pem) = leaf(&pki, "intruder", "other-ca");
    let site_ca = pki.join("site-ca.pem");
    let s = |p: &Path| p.display().to_string();

    // The PACS speaks TLS only and wants the box's certificate (DCMTK's default: a peer
    // certificate is required).
    let pacs_dir = root.join("pacs");
    std::fs::create_dir_all(&pacs_dir).unwrap();
    let pacs_port = free_port();
    let _pacs = Proc(
        Command::new("storescp")
            .args(["+tls", &s(&pacs_key), &s(&pacs_pem), "+cf", &s(&site_ca), "-od", &s(&pacs_dir), &pacs_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = free_port();
    let cfg = config(
        root,
        &format!(
            "[dicom]\nenabled = true\nae_title = \"CTSENTRY\"\nlisten = \"127.0.0.1:{port}\"\n\
             [dicom.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclient_ca = \"{}\"\n\
             [export]\nenabled = true\npeer = \"127.0.0.1:{pacs_port}\"\ncalled_ae = \"PACS\"\ncalling_ae = \"CTSENTRY\"\nsend = [\"sr\"]\nretry_max_seconds = 1\n\
             [export.tls]\nca = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            s(&box_pem),
            s(&box_key),
            s(&site_ca),
            s(&site_ca),
            s(&box_pem),
            s(&box_key)
        ),
    );
    let check = bin().args(["--config", cfg.to_str().unwrap(), "check-config", "--deep"]).output().unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!said.contains("tls"), "check-config --deep finds fault with good TLS files: {said}");
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut d = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("(DICOM TLS only")), "no TLS receiver:\n{}", read_log());
    let dcmtk = |tool: &str, tls: &[&str], files: &[PathBuf]| {
        Command::new(tool).args(tls).args(["-to", "10", "-aet", "SCANNER", "-aec", "CTSENTRY", "127.0.0.1", &port.to_string()]).args(files).output().unwrap()
    };
    let good = ["+tls".to_string(), s(&scanner_key), s(&scanner_pem), "+cf".to_string(), s(&site_ca)];
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let echo = dcmtk("echoscu", &good, &[]);
    assert!(echo.status.success(), "a caller with a certificate from the site CA: {}\n{}", String::from_utf8_lossy(&echo.stderr), read_log());
    assert!(!dcmtk("echoscu", &[], &[]).status.success(), "plain DICOM was accepted on the TLS port");
    assert!(!dcmtk("echoscu", &["+tla", "+cf", &s(&site_ca)], &[]).status.success(), "anonymous TLS was accepted");
    assert!(!dcmtk("echoscu", &["+tls", &s(&intruder_key), &s(&intruder_pem), "+cf", &s(&site_ca)], &[]).status.success(), "a certificate from another CA was accepted");

    let src = root.join("scanner");
    write_series(&src, "s", "1.2.826.0.1.3680043.9.7307.41.1", -900, 4);
    let sent = dcmtk("storescu", &good, &walk(&src.join("s")));
    assert!(sent.status.success(), "storescu +tls: {}", String::from_utf8_lossy(&sent.stderr));
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "no FINAL:\n{}", read_log());
    assert_eq!(finals(&results)[0].slices, 4);
    // Only the TLS caller's four instances came in.
    assert_eq!(walk(&root.join("var/done")).len(), 4, "{:?}", walk(&root.join("var/done")));
    assert!(wait_until(Duration::from_secs(30), || walk(&pacs_dir).len() == 1), "the SR did not reach the TLS PACS:\n{}", read_log());
    assert!(walk(&pacs_dir)[0].file_name().unwrap().to_string_lossy().starts_with("SR"), "{:?}", walk(&pacs_dir));
    // Connections that end inside the first TLS record, or before it, leave nothing spinning.
    for bytes in [&[0x16u8, 0x03, 0x01][..], &[]] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut c, bytes).unwrap();
    }
    assert_idle(d.id(), &read_log());
    // SIGHUP re-reads the certificates.
    signal(&d, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || read_log().contains("dicom: TLS certificates re-read")), "{}", read_log());
    assert!(dcmtk("echoscu", &good, &[]).status.success(), "{}", read_log());
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0), "{}", read_log());
}

/// Results to Orthanc over DICOM TLS (`DicomTlsEnabled`, Orthanc requiring the box's certificate
/// from the site CA): a positive series' SR and heat maps arrive in the scanned study, once; a
/// box whose `[export.tls] ca` does not hold the PACS's CA refuses to send (FAULT,EXPORT) and
/// sends nothing.
#[test]
fn results_reach_orthanc_over_dicom_tls_once() {
    if !tools_installed(&[("openssl", "apt-get install openssl"), ("Orthanc", "apt-get install orthanc")]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pki = site_pki(root);
    let (box_key, box_pem) = leaf(&pki, "box", "site-ca");
    let (pacs_key, pacs_pem) = leaf(&pki, "pacs", "site-ca");
    let s = |p: &Path| p.display().to_string();
    let site_ca = pki.join("site-ca.pem");
    let mut pacs = super::network::Pacs::with(
        &root.join("pacs"),
        serde_json::json!({
            "DicomTlsEnabled": true, "DicomTlsCertificate": s(&pacs_pem), "DicomTlsPrivateKey": s(&pacs_key),
            "DicomTlsTrustedCertificates": s(&site_ca), "DicomTlsRemoteCertificateRequired": true
        }),
    );
    pacs.start();
    let export = |ca: &Path| {
        format!(
            "[export]\nenabled = true\npeer = \"127.0.0.1:{}\"\ncalled_ae = \"PACS\"\ncalling_ae = \"CTSENTRY\"\nmax_heatmaps = 2\nretry_max_seconds = 1\n\
             [export.tls]\nca = \"{}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            pacs.dicom_port,
            s(ca),
            s(&box_pem),
            s(&box_key)
        )
    };
    let study_uid = "1.2.826.0.1.3680043.8.498.9"; // what the synthetic slices carry

    // A box that does not trust the PACS's CA: the handshake fails, nothing is sent, FAULT,EXPORT.
    let wrong = root.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let cfg = config(&wrong, &export(&pki.join("other-ca.pem")).replace("threshold = 0.5", "threshold = 0.000001"));
    write_series(&wrong.join("src"), "s", "1.2.826.0.1.3680043.9.7307.43.1", 200, 3);
    let (d, results, log) = start_and_drop(&wrong, &cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", read_log());
    assert!(wait_until(Duration::from_secs(20), || status_json(&cfg)["faults"].as_array().is_some_and(|f| f.iter().any(|k| k == "EXPORT"))), "{}", read_log());
    std::thread::sleep(Duration::from_secs(3)); // several retries (retry_max_seconds = 1)
    assert!(pacs.study(study_uid).is_empty(), "nothing reached the PACS through an untrusted handshake");
    drop(d);

    let cfg = config(root, &export(&site_ca).replace("threshold = 0.5", "threshold = 0.000001"));
    write_series(&root.join("src"), "s", "1.2.826.0.1.3680043.9.7307.43.2", 200, 3);
    let (_d, results, log) = start_and_drop(root, &cfg);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", read_log());
    let want = super::network::modalities(&[("OT", 2), ("SR", 1)]);
    assert!(wait_until(Duration::from_secs(30), || pacs.counts(study_uid) == want), "{:?}\n{}", pacs.study(study_uid), read_log());
    assert!(status_json(&cfg)["faults"].as_array().is_some_and(|f| f.is_empty()), "{}", status_json(&cfg));
    // Once: nothing more arrives, and the spool is empty.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pacs.counts(study_uid), want);
    assert!(rels(&root.join("var/state/export")).iter().all(|r| !r.ends_with(".dcm")), "{:?}", rels(&root.join("var/state/export")));
}
