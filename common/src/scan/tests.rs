use super::*;

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

#[test]
fn mac_spellings_parse_to_the_same_address() {
    let want = [0xaa, 0xbb, 0xcc, 0x01, 0x02, 0xef];
    for s in
        ["aa:bb:cc:01:02:ef", "AA-BB-CC-01-02-EF", "aabbcc0102ef", "AABB.CC01.02EF", " aa:bb:cc:01:02:ef\n"]
    {
        assert_eq!(parse_mac(s), Some(want), "{s}");
    }
    assert_eq!(format_mac(&want), "aa:bb:cc:01:02:ef");
    for bad in
        ["aa:bb:cc:01:02", "aa:bb-cc:01:02:ef", "aabbcc0102eg", "aab.bcc01.02ef", "aa::bb:cc:01:02e", ""]
    {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

#[test]
fn options_default_roots_and_validation() {
    let o = ScanOptions::default();
    assert_eq!(o.mac_scan_roots, DEFAULT_MAC_SCAN_ROOTS);
    assert!(o.validate().is_ok());
    assert_eq!(o.roots().unwrap()[2], rel("usr/local"));

    let bad_mac = ScanOptions { mac_addresses: vec!["zz:zz".into()], ..Default::default() };
    assert!(matches!(bad_mac.validate(), Err(ScanError::BadMac(_))));
    let relative = ScanOptions { excludes: vec!["var/tmp".into()], ..Default::default() };
    assert!(matches!(relative.validate(), Err(ScanError::NotAbsolute(_))));
    let dotdot = ScanOptions { excludes: vec!["/var/../etc".into()], ..Default::default() };
    assert!(matches!(dotdot.validate(), Err(ScanError::BadPath { .. })));
    let many = ScanOptions {
        mac_addresses: vec!["aa:bb:cc:dd:ee:ff".into(); limits::MAX_REQUEST_ITEMS + 1],
        ..Default::default()
    };
    assert!(matches!(many.validate(), Err(ScanError::TooMany { .. })));
}

#[test]
fn capped_counts_everything_keeps_the_first() {
    let mut c = Capped::default();
    for i in 0..limits::MAX_EXAMPLES + 5 {
        c.push(i);
    }
    assert_eq!(c.total, limits::MAX_EXAMPLES as u64 + 5);
    assert_eq!(c.examples.len(), limits::MAX_EXAMPLES);
    assert_eq!(c.examples[0], 0);
    assert!(c.is_truncated());
}

#[test]
fn json_round_trip_is_stable() {
    let mut r = ScanResult::new();
    r.mac_hits.push(MacHit {
        path: RelPath::new(b"etc/lic\xff".to_vec()).unwrap(),
        mac: "aa:bb:cc:dd:ee:ff".into(),
        spelling: "AABBCCDDEEFF".into(),
    });
    r.xattrs.user.push(rel("srv/a"));
    r.high_ids.push(HighId { path: rel("home/x"), uid: 70000, gid: 100 });
    let json = r.to_json().unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains(r#""path":"/etc/lic\\xff""#), "{text}");
    assert!(text.contains(r#""user":{"total":1,"examples":["/srv/a"]}"#));
    let back = ScanResult::from_json(&json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn hostile_results_are_cut_to_the_caps() {
    let mut r = ScanResult::new();
    r.mac_hits = vec![
        MacHit { path: rel("etc/x"), mac: "a".repeat(1_000), spelling: "b".into() };
        limits::MAX_MAC_HITS + 3
    ];
    r.sockets.examples = vec![rel("run/s"); limits::MAX_EXAMPLES * 2];
    let back = ScanResult::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.mac_hits.len(), limits::MAX_MAC_HITS);
    assert_eq!(back.mac_hits[0].mac.len(), limits::MAX_TEXT);
    assert_eq!(back.sockets.examples.len(), limits::MAX_EXAMPLES);
    assert_eq!(back.sockets.total, limits::MAX_EXAMPLES as u64);
    assert!(back.truncated);

    let mut old = ScanResult::new();
    old.schema = 99;
    assert!(matches!(ScanResult::from_json(&old.to_json().unwrap()), Err(ScanError::Schema { found: 99 })));
    assert!(matches!(ScanResult::from_json(b"{\"entries\": -1}"), Err(ScanError::Json(_))));
    let huge = vec![b' '; limits::MAX_RESULT_JSON + 1];
    assert!(matches!(ScanResult::from_json(&huge), Err(ScanError::TooLarge(_))));
    let path_escape = br#"{"schema":1,"sockets":{"total":1,"examples":["/../etc"]}}"#;
    assert!(ScanResult::from_json(path_escape).is_err());
}
