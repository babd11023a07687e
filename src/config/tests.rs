//! The config's unit tests: parsing, validation, diagnosis, reload classification.

use super::*;

#[test]
fn design_example_is_valid_and_relative_paths_resolve() {
    let s = Settings::from_str("[paths]\nincoming = \"in\"\n[decision]\nthreshold = 0.3\nmin_positive_slices = 3\n[engine]\nbackend = \"tract\"\n", Path::new("/etc/ctsentry"))
        .unwrap();
    assert_eq!(s.paths.incoming, PathBuf::from("/etc/ctsentry/in"));
    assert_eq!(s.paths.done, PathBuf::from("/var/lib/ctsentry/done"));
    assert_eq!(s.threshold, Some(0.3));
    assert_eq!(s.min_positive_slices, Some(3));
    assert_eq!(s.engine, EngineBackend::Tract);
}

#[test]
fn every_error_is_reported_with_its_position() {
    let text = "[paths]\nincomming = \"x\"\n[decision]\nthreshold = 1.5\nmin_positive_slices = \"two\"\n[engine]\nbackend = \"gpu\"\n[bogus]\na = 1\n";
    let issues = Settings::from_str(text, Path::new("/")).unwrap_err();
    let at: Vec<(usize, usize)> = issues.iter().map(|i| (i.line, i.column)).collect();
    assert_eq!(at, vec![(2, 1), (4, 13), (5, 23), (7, 11), (8, 2)], "{issues:#?}");
    assert!(issues[0].reason.contains("incomming"), "{}", issues[0].reason);
    assert!(issues[1].reason.contains("outside"));
    assert!(issues[3].reason.contains("\"gpu\" is not one of auto, tract, tensorrt, onnxruntime, openvino"));
}

#[test]
fn syntax_error_has_a_position() {
    let issues = Settings::from_str("[paths\nincoming = 1", Path::new("/")).unwrap_err();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].line, 1);
}

#[test]
fn relative_paths_become_absolute_and_normalised() {
    let s = Settings::from_str("[paths]\nincoming = \"../var/./incoming\"\n", Path::new("config")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(s.paths.incoming, cwd.join("var/incoming"));
    assert!(s.paths.incoming.components().all(|c| !matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir)));
    assert_eq!(normalize(Path::new("/a/b/../../c/./d")), PathBuf::from("/c/d"));
}

#[test]
fn daemon_folders_inside_the_drop_folder_are_refused() {
    let issues = Settings::from_str("[paths]\nincoming = \"/d/in\"\ndone = \"/d/in/done\"\n", Path::new("/")).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(issues[0].reason.contains("paths.done (/d/in/done) lies inside paths.incoming"), "{}", issues[0].reason);
    // Nor inside the folders retention prunes.
    let issues = Settings::from_str("[paths]\nincoming = \"/d/in\"\nstate = \"/d/res/state\"\nresults = \"/d/res\"\n", Path::new("/")).unwrap_err();
    assert!(issues[0].reason.contains("paths.state (/d/res/state) lies inside paths.results"), "{}", issues[0].reason);
    assert_eq!(issues[0].line, 3);
    let issues = Settings::from_str("[paths]\nincoming = \"/d/x\"\nquarantine = \"/d/./x\"\n", Path::new("/")).unwrap_err();
    assert!(issues[0].reason.contains("are the same folder"), "{}", issues[0].reason);
    Settings::from_str("[paths]\nincoming = \"/d/in\"\nstate = \"/d/state\"\nresults = \"/d/res\"\n", Path::new("/")).unwrap();
}

#[test]
fn common_toml_mistakes_are_said_in_plain_words() {
    let one = |text: &str| Settings::from_str(text, Path::new("/")).unwrap_err().remove(0).reason;
    assert_eq!(
        one("[engine]\nbackend = tract\n"),
        "backend = tract: text must be in double quotes, e.g. backend = \"tract\" (numbers are plain digits, e.g. 2 or 0.5; yes/no is true or false)"
    );
    assert_eq!(one("[decision]\nthreshold = 0,5\n"), "threshold = 0,5: a decimal number takes a point, not a comma: threshold = 0.5");
    assert_eq!(one("[decision]\nmin_positive_slices = \"two\"\n"), "min_positive_slices = \"two\": expected a whole number; e.g. min_positive_slices = 2");
    assert_eq!(one("[series]\nquiet_seconds = \"10\"\n"), "quiet_seconds = \"10\": expected a number; remove the quotes: quiet_seconds = 10");
    assert_eq!(one("[alert.serial]\nenabled = \"yes\"\n"), "enabled = \"yes\": expected true or false; e.g. enabled = true");
    assert_eq!(one("[engine]\nbackend = 3\n"), "backend = 3: expected text in double quotes; e.g. backend = \"text\"");
}

#[test]
fn reload_split_names_every_fixed_change_and_keeps_the_live_ones() {
    let base = Path::new("/etc/ctsentry");
    let old = Settings::from_str("[engine]\nbackend = \"tract\"\n[decision]\nthreshold = 0.3\n", base).unwrap();
    let new =
        Settings::from_str("[engine]\nbackend = \"tract\"\ntensorrt_plan = \"m.plan\"\n[decision]\nthreshold = 0.4\n[log]\nlevel = \"debug\"\n[watch]\nmode = \"poll\"\n", base)
            .unwrap();
    let (old_fixed, _) = old.clone().split();
    let (new_fixed, new_live) = new.split();
    assert_eq!(old_fixed.changed_keys(&new_fixed), vec!["engine.tensorrt_plan", "watch.mode"]);
    let applied = Settings::join(old_fixed.clone(), new_live);
    assert_eq!(applied.threshold, Some(0.4));
    assert_eq!(applied.log_level, log::LevelFilter::Debug);
    assert_eq!(applied.tensorrt_plan, None, "fixed keys keep their running values");
    assert_eq!(Settings::join(old_fixed, old.clone().split().1), old, "split and join are inverse");
}

#[test]
fn dicom_and_metrics_keys_are_checked() {
    let errors = |text: &str| Settings::from_str(text, Path::new("/")).err().map(|v| v.into_iter().map(|i| i.reason).collect::<Vec<_>>().join("; ")).unwrap_or_default();
    assert!(errors("[metrics]\nlisten = \"localhost:9464\"\n").contains("metrics.listen = \"localhost:9464\": expected ADDRESS:PORT"));
    assert!(errors("[dicom]\nlisten = \"11112\"\n").contains("dicom.listen = \"11112\""));
    assert!(errors("[dicom]\nae_title = \"\"\n").contains("dicom.ae_title"));
    assert!(errors("[dicom]\nmax_instance_mb = 0\n").contains("dicom.max_instance_mb = 0 is outside"));
    assert!(errors("[dicom]\nallowed_callers = [\"A_VERY_LONG_AE_TITLE\"]\n").contains("is not an AE title"));
    assert!(errors("[decision]\nthreshold = 0.0\n").contains("decision.threshold = 0 makes every slice positive"));
    assert!(errors("[export]\npeer = \"pacs\"\n").contains("export.peer = \"pacs\": expected HOST:PORT"));
    assert!(errors("[export]\nsend = [\"sr\", \"pdf\"]\n").contains("\"pdf\" is not one of"));
    assert!(errors("[export]\ncalled_ae = \"A\\\\B\"\n").contains("export.called_ae"));
    let e = Settings::from_str("[export]\nenabled = true\npeer = \"pacs.local:104\"\nsend = [\"sr\"]\n", Path::new("/")).unwrap().export;
    assert_eq!((e.enabled, e.peer.as_str(), e.sr, e.heatmaps, e.max_heatmaps), (true, "pacs.local:104", true, false, 16));
    let s =
        Settings::from_str("[dicom]\nenabled = true\nlisten = \"127.0.0.1:11112\"\nallowed_callers = [\"CT1\"]\n[metrics]\nlisten = \"127.0.0.1:9464\"\n", Path::new("/")).unwrap();
    assert_eq!(
        (s.dicom.enabled, s.dicom.allowed_callers.iter().map(|c| c.to_string()).collect::<Vec<_>>(), s.metrics_listen.map(|a| a.port())),
        (true, vec!["CT1".to_string()], Some(9464))
    );
    assert_eq!(Settings::from_str("", Path::new("/")).unwrap().metrics_listen, None, "no [metrics]: off");
}

#[test]
fn callers_bind_titles_to_addresses_and_networks() {
    let s = Settings::from_str("[dicom]\nallowed_callers = [\"CT1\", \"CT2@10.1.2.3\", \"CT3@10.1.2.0/24\", \"CT4@fd00::/8\"]\nartim_seconds = 10\n", Path::new("/")).unwrap();
    let names: Vec<String> = s.dicom.allowed_callers.iter().map(|c| c.to_string()).collect();
    assert_eq!(names, ["CT1", "CT2@10.1.2.3", "CT3@10.1.2.0/24", "CT4@fd00::/8"]);
    assert_eq!(s.dicom.artim, std::time::Duration::from_secs(10));
    let ip = |a: &str| a.parse::<std::net::IpAddr>().unwrap();
    let admits = |title: &str, from: &str| s.dicom.allowed_callers.iter().any(|c| c.admits(title, ip(from)));
    assert!(admits("CT1", "192.168.9.9") && admits("CT2", "10.1.2.3") && admits("CT3", "10.1.2.200") && admits("CT4", "fd12::1"));
    assert!(!admits("CT2", "10.1.2.4"), "bound to one address");
    assert!(!admits("CT3", "10.1.3.1"), "outside the network");
    assert!(admits("CT2", "::ffff:10.1.2.3"), "an IPv4-mapped address is its IPv4 one");
    assert!(!admits("CT9", "10.1.2.3"), "unknown title");
    for bad in ["CT1@10.1.2", "CT1@10.1.2.0/33", "CT1@host.example"] {
        let e = Settings::from_str(&format!("[dicom]\nallowed_callers = [\"{bad}\"]\n"), Path::new("/")).unwrap_err();
        assert!(e[0].reason.contains("dicom.allowed_callers") && e[0].line == 2, "{bad}: {e:?}");
    }
}

#[test]
fn metrics_outside_loopback_need_a_token_that_is_never_printed() {
    let e = Settings::from_str("[metrics]\nlisten = \"0.0.0.0:9464\"\n", Path::new("/")).unwrap_err();
    assert!(e[0].reason.contains("outside loopback: set metrics.token") && e[0].line == 2, "{e:?}");
    let e = Settings::from_str("[metrics]\nlisten = \"0.0.0.0:9464\"\ntoken = \"short\"\n", Path::new("/")).unwrap_err();
    assert!(e[0].reason.contains("at least 16"), "{e:?}");
    let s = Settings::from_str("[metrics]\nlisten = \"0.0.0.0:9464\"\ntoken = \"0123456789abcdef0123\"\n", Path::new("/")).unwrap();
    let t = s.metrics_token.clone().unwrap();
    assert!(t.matches("0123456789abcdef0123") && !t.matches("0123456789abcdef012") && !t.matches("0123456789abcdef0124"));
    assert!(!format!("{s:?}").contains("0123456789abcdef0123"), "the token must not be printed");
    assert!(Settings::from_str("[metrics]\nlisten = \"127.0.0.1:9464\"\n", Path::new("/")).unwrap().metrics_token.is_none());
}
