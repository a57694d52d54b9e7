//! Every scanner vector of `vectors/barcodes.json` yields its expected UII fields or error code.

use proofline_common::scan::{parse_scan, to_json, ScanErrorCode, ScanOptions};

fn vectors() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/barcodes.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_barcode_vector_parses_as_expected() {
    let v = vectors();
    for case in v["vectors"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let input = case["input"].as_str().unwrap();
        let got = to_json(&parse_scan(input.as_bytes(), &ScanOptions::default()));
        for (k, want) in case["expect"].as_object().unwrap() {
            if k == "note" {
                continue;
            }
            assert_eq!(&got[k.as_str()], want, "{id}: field {k} in {got}");
        }
        let ok = case["expect"].get("error").is_none();
        assert_eq!(got["ok"], ok, "{id}: {got}");
    }
}

#[test]
fn the_error_vocabulary_is_the_vectors_vocabulary() {
    let v = vectors();
    let codes: Vec<&str> = v["error_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours = [
        ScanErrorCode::TruncatedEnvelope,
        ScanErrorCode::MissingSeparators,
        ScanErrorCode::IllegalChar,
        ScanErrorCode::EmptyElement,
        ScanErrorCode::UnknownFormat,
        ScanErrorCode::IncompleteConstruct,
        ScanErrorCode::AmbiguousConstruct,
        ScanErrorCode::DuplicateQualifier,
        ScanErrorCode::BadCage,
        ScanErrorCode::BadDuns,
        ScanErrorCode::GtinCheckDigit,
        ScanErrorCode::BadDate,
        ScanErrorCode::UiiTooLong,
        ScanErrorCode::WrongSymbology,
    ];
    let ours: Vec<&str> = ours.iter().map(|c| c.as_str()).collect();
    assert_eq!(ours, codes);
}

fn code(frame: &str) -> String {
    match parse_scan(frame.as_bytes(), &ScanOptions::default()) {
        Ok(p) => format!("ok {}", p.uii),
        Err(e) => e.code.as_str().to_owned(),
    }
}

#[test]
fn the_same_item_in_format_06_and_12_has_one_uii() {
    assert_eq!(
        code("[)>\u{1e}06\u{1d}17V1ABC5\u{1d}1P7734-0012\u{1d}S000123\u{1e}\u{4}"),
        code("[)>\u{1e}12\u{1d}MFR 1ABC5\u{1d}PNO 7734-0012\u{1d}SEQ 000123\u{1e}\u{4}")
    );
    assert_eq!(
        code("[)>\u{1e}06\u{1d}18S1ABC5A0047731\u{1e}\u{4}"),
        code("[)>\u{1e}DD\u{1d}CAG 1ABC5\u{1d}SER A0047731\u{1e}\u{4}")
    );
}

#[test]
fn each_refusal_has_its_code() {
    let cases = [
        (
            "[)>\u{1e}06\u{1d}17V1ABC5\u{1d}\u{1d}1P77\u{1d}S1\u{1e}\u{4}",
            "empty_element",
        ),
        ("[)>\u{1e}07\u{1d}17V1ABC5\u{1e}\u{4}", "unknown_format"),
        (
            "[)>\u{1e}06\u{1d}S1\u{1d}17V1ABC5\u{1d}1P77\u{1d}S2\u{1e}\u{4}",
            "duplicate_qualifier",
        ),
        (
            "[)>\u{1e}06\u{1d}17V1ABI5\u{1d}1P77\u{1d}S1\u{1e}\u{4}",
            "bad_cage",
        ),
        (
            "[)>\u{1e}06\u{1d}12V12345\u{1d}1P77\u{1d}S1\u{1e}\u{4}",
            "bad_duns",
        ),
        (
            "[)>\u{1e}06\u{1d}17V1ABC5\u{1d}1P77\u{1d}S1\u{9}\u{1e}\u{4}",
            "illegal_char",
        ),
        ("]d2010950600013435217271332", "bad_date"),
        ("]E012345678", "wrong_symbology"),
        ("just text", "unknown_format"),
        (
            "[)>\u{1e}06\u{1d}17V1ABC5\u{1d}1P77\u{1d}S1\u{1e}",
            "truncated_envelope",
        ),
        ("[)>\u{1e}06 17V1ABC5\u{1e}\u{4}", "missing_separators"),
        (
            "[)>\u{1e}12\u{1d}MFR1ABC5\u{1d}SER 1\u{1e}\u{4}",
            "missing_separators",
        ),
        (
            "[)>\u{1e}06\u{1d}25SD1ABC5X\u{1d}17V1ABC5\u{1e}\u{4}",
            "ambiguous_construct",
        ),
        (
            "[)>\u{1e}06\u{1d}18S1ABC5\u{1e}\u{4}",
            "incomplete_construct",
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(code(frame), want, "{frame:?}");
    }
}

#[test]
fn other_constructs_build_their_uii() {
    assert_eq!(
        code("[)>\u{1e}06\u{1d}12V123456789\u{1d}1P77\u{1d}S1\u{1e}\u{4}"),
        "ok UN12345678977".to_owned() + "1"
    );
    assert_eq!(
        code("[)>\u{1e}06\u{1d}7LAB1234\u{1d}1TLOT9\u{1d}S1\u{1e}\u{4}"),
        "ok LDAB1234LOT91"
    );
    assert_eq!(
        code("[)>\u{1e}06\u{1d}18VD1ABC5\u{1d}1P77\u{1d}S1\u{1e}\u{4}"),
        "ok D1ABC5771"
    );
    assert_eq!(
        code("[)>\u{1e}12\u{1d}UID D1ABC5X99\u{1e}\u{4}"),
        "ok D1ABC5X99"
    );
    assert_eq!(code("]d28004ABC-123"), "ok ABC-123");
    assert_eq!(
        code("\u{1d}0109506000134352\u{1d}21X1"),
        "ok 09506000134352/X1"
    );
    // Day 00 is the last day of the month.
    let p = parse_scan(
        "]d201095060001343521724020021A".as_bytes(),
        &ScanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.field("expiry"), Some("2024-02-29"));
}

#[test]
fn a_required_aim_prefix_is_enforced() {
    let opts = ScanOptions { require_aim: true };
    let e = parse_scan(b"[)>\x1e06\x1d18S1ABC5A1\x1e\x04", &opts).unwrap_err();
    assert_eq!(e.code, ScanErrorCode::WrongSymbology);
    assert!(parse_scan(b"]d1[)>\x1e06\x1d18S1ABC5A1\x1e\x04", &opts).is_ok());
}
