//! Scanner frames to item identities: the AIM symbology prefix, ISO/IEC 15434 envelopes
//! (formats 06, 12, DD and 05), MIL-STD-130 UII constructs and GS1 application identifiers
//! (`reference/barcodes.md`).
//!
//! Rules that matter for evidence:
//! - the canonical key is the UII (or GTIN + serial / GIAI for GS1-marked items); the same item
//!   in format 06 and format 12 yields the same UII;
//! - damaged input is refused, never repaired: a missing trailer, lost separators (keyboard-wedge
//!   damage), control or non-UII characters, a construct that is incomplete or ambiguous;
//! - every refusal carries one code from the agent's vocabulary ([`ScanErrorCode`]), so a
//!   rejected scan can be recorded and counted.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::{Attribute, Identity};

mod envelope;
mod gs1;
mod mil_std_130;

use envelope::parse_envelope;
use gs1::parse_gs1;

const RS: u8 = 0x1e;
const GS: u8 = 0x1d;
const EOT: u8 = 0x04;

/// Longest UII MIL-STD-130 allows.
pub const MAX_UII_CHARS: usize = 50;

/// A canonical item key: a MIL-STD-130 UII (`A–Z 0–9 - /`, at most 50 characters) or a GS1 key
/// (`<GTIN>/<serial>` or a GIAI).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Uii(String);

impl Uii {
    /// Accepts a MIL-STD-130 UII.
    pub fn parse(s: &str) -> Result<Uii, ScanError> {
        if s.is_empty() {
            return Err(ScanError::new(
                ScanErrorCode::IncompleteConstruct,
                "empty UII",
            ));
        }
        if let Some(c) = s.chars().find(|c| !is_uii_char(*c)) {
            return Err(ScanError::new(
                ScanErrorCode::IllegalChar,
                format!("{c:?} is not allowed in a UII (A-Z 0-9 - /)"),
            ));
        }
        if s.len() > MAX_UII_CHARS {
            return Err(ScanError::new(
                ScanErrorCode::UiiTooLong,
                format!(
                    "UII {s:?} has {} characters, at most {MAX_UII_CHARS} are allowed",
                    s.len()
                ),
            ));
        }
        Ok(Uii(s.to_owned()))
    }

    fn gs1(key: String) -> Uii {
        Uii(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_uii_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '/'
}

/// Why a frame was refused. The string forms are the vocabulary of `vectors/barcodes.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanErrorCode {
    TruncatedEnvelope,
    MissingSeparators,
    IllegalChar,
    EmptyElement,
    UnknownFormat,
    IncompleteConstruct,
    AmbiguousConstruct,
    DuplicateQualifier,
    BadCage,
    BadDuns,
    GtinCheckDigit,
    BadDate,
    UiiTooLong,
    WrongSymbology,
}

impl ScanErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanErrorCode::TruncatedEnvelope => "truncated_envelope",
            ScanErrorCode::MissingSeparators => "missing_separators",
            ScanErrorCode::IllegalChar => "illegal_char",
            ScanErrorCode::EmptyElement => "empty_element",
            ScanErrorCode::UnknownFormat => "unknown_format",
            ScanErrorCode::IncompleteConstruct => "incomplete_construct",
            ScanErrorCode::AmbiguousConstruct => "ambiguous_construct",
            ScanErrorCode::DuplicateQualifier => "duplicate_qualifier",
            ScanErrorCode::BadCage => "bad_cage",
            ScanErrorCode::BadDuns => "bad_duns",
            ScanErrorCode::GtinCheckDigit => "gtin_check_digit",
            ScanErrorCode::BadDate => "bad_date",
            ScanErrorCode::UiiTooLong => "uii_too_long",
            ScanErrorCode::WrongSymbology => "wrong_symbology",
        }
    }
}

impl fmt::Display for ScanErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ScanError {
    pub code: ScanErrorCode,
    pub detail: String,
}

impl ScanError {
    fn new(code: ScanErrorCode, detail: impl Into<String>) -> Self {
        ScanError {
            code,
            detail: detail.into(),
        }
    }
}

fn err<T>(code: ScanErrorCode, detail: impl Into<String>) -> Result<T, ScanError> {
    Err(ScanError::new(code, detail))
}

/// How the key was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Construct {
    /// MIL-STD-130 construct #1: serial unique within the enterprise.
    One,
    /// MIL-STD-130 construct #2: serial unique within the original part number (or lot).
    Two,
    /// A complete UII carried as is (`25S`, `UID`).
    Complete,
    /// GS1 GTIN + serial.
    GtinSerial,
    /// GS1 Global Individual Asset Identifier.
    Giai,
}

impl Construct {
    pub fn as_str(self) -> &'static str {
        match self {
            Construct::One => "1",
            Construct::Two => "2",
            Construct::Complete => "uii",
            Construct::GtinSerial => "gtin-serial",
            Construct::Giai => "giai",
        }
    }
}

/// Options a scanner is configured with.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Refuse frames without an AIM symbology identifier.
    pub require_aim: bool,
}

/// A frame that yielded an item identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedScan {
    /// AIM symbology identifier, when the scanner sent one.
    pub symbology: Option<String>,
    /// `06`, `12`, `DD`, `05`, or `gs1` for a GS1 symbol without an envelope.
    pub format: String,
    pub uii: Uii,
    pub construct: Construct,
    /// Named parts and attributes: `iac`, `enterprise`, `part_number`, `lot`, `serial`,
    /// `current_part_number`, `gtin`, `expiry`, ..., and unknown qualifiers as `di:<DI>` /
    /// `tei:<TEI>` / `ai:<AI>`.
    pub fields: Vec<(String, String)>,
}

impl ParsedScan {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The identity as recorded in a `PartScanned` record.
    pub fn identity(&self) -> Identity {
        Identity {
            uii: self.uii.to_string(),
            format: self.format.clone(),
            construct: self.construct.as_str().to_owned(),
            attributes: self
                .fields
                .iter()
                .map(|(name, value)| Attribute {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

/// Splits off an AIM symbology identifier (`]` + two characters).
pub fn split_aim(frame: &[u8]) -> (Option<String>, &[u8]) {
    match frame {
        [b']', a, b, rest @ ..] if a.is_ascii_alphabetic() && b.is_ascii_alphanumeric() => {
            (Some(format!("]{}{}", *a as char, *b as char)), rest)
        }
        _ => (None, frame),
    }
}

/// Symbologies that may carry an ISO/IEC 15434 envelope (Data Matrix ECC 200, QR Code).
fn carries_envelope(sym: &str) -> bool {
    matches!(sym, "]d1" | "]d4" | "]d5" | "]d6" | "]Q1" | "]Q2")
}

/// Symbologies that announce GS1 element strings (GS1 Data Matrix, GS1-128, GS1 QR Code).
fn carries_gs1(sym: &str) -> bool {
    matches!(sym, "]d2" | "]C1" | "]Q3")
}

/// Parses one scanner frame (terminator already removed).
pub fn parse_scan(frame: &[u8], opts: &ScanOptions) -> Result<ParsedScan, ScanError> {
    let (symbology, data) = split_aim(frame);
    if opts.require_aim && symbology.is_none() {
        return err(
            ScanErrorCode::WrongSymbology,
            "no AIM symbology identifier; this scanner must send one",
        );
    }
    let sym = symbology.as_deref();
    let (format, uii, construct, fields) = if data.starts_with(b"[)>") {
        if let Some(s) = sym {
            if !carries_envelope(s) {
                return err(
                    ScanErrorCode::WrongSymbology,
                    format!("symbology {s} does not carry an ISO/IEC 15434 envelope"),
                );
            }
        }
        parse_envelope(data)?
    } else if sym.is_some_and(carries_gs1) || data.first() == Some(&GS) {
        let data = data.strip_prefix(&[GS]).unwrap_or(data);
        let (uii, construct, fields) = parse_gs1(data)?;
        ("gs1".to_owned(), uii, construct, fields)
    } else if let Some(s) = sym.filter(|s| !carries_envelope(s)) {
        return err(
            ScanErrorCode::WrongSymbology,
            format!("symbology {s} is not a Data Matrix, QR or GS1 symbol"),
        );
    } else {
        return err(
            ScanErrorCode::UnknownFormat,
            "neither an ISO/IEC 15434 envelope nor GS1 element strings",
        );
    };
    let mut fields = fields;
    if let Some(s) = &symbology {
        fields.push(("symbology".into(), s.clone()));
    }
    Ok(ParsedScan {
        symbology,
        format,
        uii,
        construct,
        fields,
    })
}

type Fields = Vec<(String, String)>;
/// Key, how it was built, and the named fields.
type Built = (Uii, Construct, Fields);
type Parsed = (String, Uii, Construct, Fields);

/// The JSON object `scan-parse` prints for one frame.
pub fn to_json(result: &Result<ParsedScan, ScanError>) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    match result {
        Ok(p) => {
            let mut m = Map::new();
            m.insert("ok".into(), Value::Bool(true));
            m.insert("uii".into(), Value::String(p.uii.to_string()));
            m.insert("format".into(), Value::String(p.format.clone()));
            let construct = match p.construct {
                Construct::One => json!(1),
                Construct::Two => json!(2),
                other => json!(other.as_str()),
            };
            m.insert("construct".into(), construct);
            for (k, v) in &p.fields {
                m.entry(k.clone())
                    .or_insert_with(|| Value::String(v.clone()));
            }
            Value::Object(m)
        }
        Err(e) => json!({"ok": false, "error": e.code.as_str(), "detail": e.detail}),
    }
}
