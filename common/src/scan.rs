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

fn parse_envelope(data: &[u8]) -> Result<Parsed, ScanError> {
    let after = &data[3..];
    if after.first() != Some(&RS) {
        return err(
            ScanErrorCode::MissingSeparators,
            "no record separator after \"[)>\" (separators lost, e.g. by a keyboard wedge)",
        );
    }
    if !after.ends_with(&[RS, EOT]) || after.len() < 3 {
        return err(
            ScanErrorCode::TruncatedEnvelope,
            "the message does not end with RS EOT",
        );
    }
    let inner = &after[1..after.len() - 2];
    if inner.contains(&RS) {
        return err(
            ScanErrorCode::UnknownFormat,
            "several formats in one message are not supported",
        );
    }
    if inner.len() < 2 {
        return err(ScanErrorCode::TruncatedEnvelope, "no format indicator");
    }
    let format = String::from_utf8_lossy(&inner[..2]).into_owned();
    if !matches!(format.as_str(), "06" | "12" | "DD" | "05") {
        return err(
            ScanErrorCode::UnknownFormat,
            format!("format {format:?} is not 05, 06, 12 or DD"),
        );
    }
    let body = &inner[2..];
    let Some(body) = body.strip_prefix(&[GS]) else {
        return err(
            ScanErrorCode::MissingSeparators,
            "no group separator after the format indicator",
        );
    };
    let mut elements = Vec::new();
    for (i, el) in body.split(|b| *b == GS).enumerate() {
        if el.is_empty() {
            return err(
                ScanErrorCode::EmptyElement,
                format!("element {} is empty", i + 1),
            );
        }
        if let Some(b) = el.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
            return err(
                ScanErrorCode::IllegalChar,
                format!("element {} holds byte 0x{b:02x}", i + 1),
            );
        }
        elements.push(std::str::from_utf8(el).expect("printable ASCII"));
    }
    let (uii, construct, fields) = match format.as_str() {
        "06" => mil_std_130(data_identifiers(&elements)?)?,
        "12" | "DD" => mil_std_130(text_element_identifiers(&elements)?)?,
        _ => parse_gs1(elements.join("\u{1d}").as_bytes())?,
    };
    Ok((format, uii, construct, fields))
}

/// A UII-relevant element, whatever the syntax it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Complete UII, IAC included (`25S`, `UID`).
    Complete,
    /// Enterprise id + serial, construct #1 (`18S`).
    EnterpriseSerial,
    Cage,
    Duns,
    Dodaac,
    /// IAC + enterprise id (`18V`).
    IacEnterprise,
    PartNumber,
    Lot,
    /// Serial within the enterprise (TEI `SER`).
    SerialC1,
    /// Serial within part number or lot (`S`, TEI `SEQ`).
    SerialC2,
    CurrentPartNumber,
    Other,
}

struct Element<'a> {
    qualifier: String,
    role: Role,
    data: &'a str,
}

/// ANSI MH10.8.2 data identifiers we know, longest first for longest-match.
const DIS: &[(&str, Role)] = &[
    ("25S", Role::Complete),
    ("18S", Role::EnterpriseSerial),
    ("17V", Role::Cage),
    ("12V", Role::Duns),
    ("18V", Role::IacEnterprise),
    ("30P", Role::CurrentPartNumber),
    ("1P", Role::PartNumber),
    ("1T", Role::Lot),
    ("7L", Role::Dodaac),
    ("S", Role::SerialC2),
];

fn data_identifiers<'a>(elements: &[&'a str]) -> Result<Vec<Element<'a>>, ScanError> {
    elements
        .iter()
        .map(|el| {
            if let Some((di, role)) = DIS.iter().find(|(di, _)| el.starts_with(di)) {
                return Ok(Element {
                    qualifier: (*di).to_owned(),
                    role: *role,
                    data: &el[di.len()..],
                });
            }
            // Unknown DI: up to three digits, then one letter.
            let digits = el.bytes().take_while(u8::is_ascii_digit).count();
            match el.as_bytes().get(digits) {
                Some(b) if digits <= 3 && b.is_ascii_uppercase() => Ok(Element {
                    qualifier: el[..=digits].to_owned(),
                    role: Role::Other,
                    data: &el[digits + 1..],
                }),
                _ => err(
                    ScanErrorCode::IllegalChar,
                    format!("element {el:?} does not start with a data identifier"),
                ),
            }
        })
        .collect()
}

fn text_element_identifiers<'a>(elements: &[&'a str]) -> Result<Vec<Element<'a>>, ScanError> {
    elements
        .iter()
        .map(|el| {
            let Some((tei, data)) = el.split_once(' ') else {
                return err(
                    ScanErrorCode::MissingSeparators,
                    format!("element {el:?} has no space between its TEI and its data"),
                );
            };
            if tei.is_empty()
                || !tei
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                return err(
                    ScanErrorCode::IllegalChar,
                    format!("{tei:?} is not a text element identifier"),
                );
            }
            let role = match tei {
                "UID" => Role::Complete,
                "MFR" | "CAG" | "SPL" => Role::Cage,
                "DUN" => Role::Duns,
                "PNO" => Role::PartNumber,
                "LOT" | "LTN" => Role::Lot,
                "SER" => Role::SerialC1,
                "SEQ" => Role::SerialC2,
                "PNR" => Role::CurrentPartNumber,
                _ => Role::Other,
            };
            if data.is_empty() {
                return err(ScanErrorCode::EmptyElement, format!("{tei} has no data"));
            }
            Ok(Element {
                qualifier: tei.to_owned(),
                role,
                data,
            })
        })
        .collect()
}

fn check_cage(cage: &str) -> Result<(), ScanError> {
    let ok = cage.len() == 5
        && cage
            .bytes()
            .all(|b| (b.is_ascii_uppercase() && b != b'I' && b != b'O') || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        err(
            ScanErrorCode::BadCage,
            format!("CAGE {cage:?} must be 5 letters or digits, without I and O"),
        )
    }
}

fn check_duns(duns: &str) -> Result<(), ScanError> {
    if duns.len() == 9 && duns.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        err(
            ScanErrorCode::BadDuns,
            format!("DUNS {duns:?} must be 9 digits"),
        )
    }
}

fn uii_chars(what: &str, data: &str) -> Result<(), ScanError> {
    match data.chars().find(|c| !is_uii_char(*c)) {
        None => Ok(()),
        Some(c) => err(
            ScanErrorCode::IllegalChar,
            format!("{what} {data:?} holds {c:?}; a UII allows only A-Z 0-9 - /"),
        ),
    }
}

/// Builds the UII from MIL-STD-130 elements (either syntax).
fn mil_std_130(elements: Vec<Element<'_>>) -> Result<Built, ScanError> {
    let mut seen = std::collections::HashSet::new();
    for e in &elements {
        if !seen.insert(e.qualifier.as_str()) {
            return err(
                ScanErrorCode::DuplicateQualifier,
                format!("{} appears more than once", e.qualifier),
            );
        }
    }
    let find = |roles: &[Role]| -> Vec<&Element<'_>> {
        elements
            .iter()
            .filter(|e| roles.contains(&e.role))
            .collect()
    };
    let complete = find(&[Role::Complete]);
    let c1 = find(&[Role::EnterpriseSerial, Role::SerialC1]);
    let enterprise = find(&[Role::Cage, Role::Duns, Role::Dodaac, Role::IacEnterprise]);
    let part = find(&[Role::PartNumber, Role::Lot]);
    let serial2 = find(&[Role::SerialC2]);

    let mut fields: Vec<(String, String)> = Vec::new();
    for e in &elements {
        uii_chars_if_needed(e)?;
    }
    let kinds = [
        !complete.is_empty(),
        !c1.is_empty(),
        !part.is_empty() || !serial2.is_empty(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return err(
            ScanErrorCode::AmbiguousConstruct,
            "elements of more than one UII construct in one symbol",
        );
    }
    if enterprise.len() > 1 {
        return err(
            ScanErrorCode::AmbiguousConstruct,
            "more than one enterprise identifier",
        );
    }
    if part.len() > 1 {
        return err(
            ScanErrorCode::AmbiguousConstruct,
            "both a part number and a lot number",
        );
    }

    let (uii, construct) = if let Some(c) = complete.first() {
        if !enterprise.is_empty() {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "a complete UII and an enterprise identifier",
            );
        }
        (c.data.to_owned(), Construct::Complete)
    } else if let Some(c) = c1.first() {
        let (iac, ent, serial) = match c.role {
            Role::EnterpriseSerial => {
                if !enterprise.is_empty() {
                    return err(
                        ScanErrorCode::AmbiguousConstruct,
                        "18S carries its enterprise, and another enterprise identifier is present",
                    );
                }
                // 18S: CAGE (5) then the serial.
                let ent = c.data.get(..5).unwrap_or(c.data);
                check_cage(ent)?;
                ("D", ent.to_owned(), c.data[ent.len()..].to_owned())
            }
            _ => {
                let Some(e) = enterprise.first() else {
                    return err(
                        ScanErrorCode::IncompleteConstruct,
                        "a serial without an enterprise identifier",
                    );
                };
                let iac = enterprise_iac(e)?;
                (iac, e.data.to_owned(), c.data.to_owned())
            }
        };
        if serial.is_empty() {
            return err(
                ScanErrorCode::IncompleteConstruct,
                "construct #1 without a serial",
            );
        }
        fields.push(("iac".into(), iac.into()));
        fields.push(("enterprise".into(), ent.clone()));
        fields.push(("serial".into(), serial.clone()));
        (format!("{iac}{ent}{serial}"), Construct::One)
    } else {
        let (Some(e), Some(p), Some(s)) = (enterprise.first(), part.first(), serial2.first())
        else {
            let missing: Vec<&str> = [
                (enterprise.is_empty(), "an enterprise identifier"),
                (part.is_empty(), "a part or lot number"),
                (serial2.is_empty(), "a serial"),
            ]
            .iter()
            .filter(|(m, _)| *m)
            .map(|(_, w)| *w)
            .collect();
            return err(
                ScanErrorCode::IncompleteConstruct,
                format!("no complete UII construct: missing {}", missing.join(", ")),
            );
        };
        let iac = enterprise_iac(e)?;
        fields.push(("iac".into(), iac.into()));
        fields.push(("enterprise".into(), e.data.to_owned()));
        let part_field = if p.role == Role::Lot {
            "lot"
        } else {
            "part_number"
        };
        fields.push((part_field.into(), p.data.to_owned()));
        fields.push(("serial".into(), s.data.to_owned()));
        (
            format!("{iac}{}{}{}", e.data, p.data, s.data),
            Construct::Two,
        )
    };
    for e in &elements {
        match e.role {
            Role::CurrentPartNumber => {
                fields.push(("current_part_number".into(), e.data.to_owned()))
            }
            Role::Other => fields.push((format!("qualifier:{}", e.qualifier), e.data.to_owned())),
            _ => {}
        }
    }
    Ok((Uii::parse(&uii)?, construct, fields))
}

fn uii_chars_if_needed(e: &Element<'_>) -> Result<(), ScanError> {
    match e.role {
        Role::CurrentPartNumber | Role::Other => Ok(()),
        _ => uii_chars(&e.qualifier, e.data),
    }
}

fn enterprise_iac(e: &Element<'_>) -> Result<&'static str, ScanError> {
    match e.role {
        Role::Cage => check_cage(e.data).map(|_| "D"),
        Role::Duns => check_duns(e.data).map(|_| "UN"),
        Role::Dodaac => {
            if e.data.len() == 6 && e.data.bytes().all(|b| b.is_ascii_alphanumeric()) {
                Ok("LD")
            } else {
                err(
                    ScanErrorCode::IllegalChar,
                    format!("DoDAAC {:?} must be 6 letters or digits", e.data),
                )
            }
        }
        // 18V carries the IAC already.
        _ => Ok(""),
    }
}

/// GS1 application identifiers we read: (AI, fixed length or max length, fixed?, numeric?).
const AIS: &[(&str, usize, bool, bool, &str)] = &[
    ("00", 18, true, true, "sscc"),
    ("01", 14, true, true, "gtin"),
    ("10", 20, false, false, "lot"),
    ("11", 6, true, true, "production_date"),
    ("13", 6, true, true, "packaging_date"),
    ("15", 6, true, true, "best_before"),
    ("17", 6, true, true, "expiry"),
    ("21", 20, false, false, "serial"),
    ("240", 30, false, false, "additional_id"),
    ("241", 30, false, false, "customer_part_number"),
    ("250", 30, false, false, "secondary_serial"),
    ("8004", 30, false, false, "giai"),
];

fn gtin_check(gtin: &str) -> Result<(), ScanError> {
    let digits: Vec<u32> = gtin.bytes().map(|b| u32::from(b - b'0')).collect();
    let (body, check) = digits.split_at(digits.len() - 1);
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
        .sum();
    if (10 - sum % 10) % 10 == check[0] {
        Ok(())
    } else {
        err(
            ScanErrorCode::GtinCheckDigit,
            format!("GTIN {gtin} fails its check digit"),
        )
    }
}

/// `YYMMDD` (day `00` = last day of the month) to `YYYY-MM-DD`.
fn gs1_date(ai: &str, s: &str) -> Result<String, ScanError> {
    let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    let (yy, mm, dd) = (n(0..2), n(2..4), n(4..6));
    let year = 2000 + yy;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let last = match mm {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => {
            return err(
                ScanErrorCode::BadDate,
                format!("AI ({ai}) {s}: month {mm} does not exist"),
            )
        }
    };
    let day = if dd == 0 { last } else { dd };
    if day > last {
        return err(
            ScanErrorCode::BadDate,
            format!("AI ({ai}) {s}: day {dd} does not exist"),
        );
    }
    Ok(format!("{year:04}-{mm:02}-{day:02}"))
}

/// GS1 element strings (FNC1 transmitted as GS).
fn parse_gs1(data: &[u8]) -> Result<Built, ScanError> {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(&(ai, len, fixed, numeric, name)) =
            AIS.iter().find(|(ai, ..)| rest.starts_with(ai.as_bytes()))
        else {
            let shown = String::from_utf8_lossy(&rest[..rest.len().min(4)]).into_owned();
            return err(
                ScanErrorCode::UnknownFormat,
                format!("unknown GS1 application identifier at {shown:?}"),
            );
        };
        rest = &rest[ai.len()..];
        let value = if fixed {
            if rest.len() < len {
                return err(
                    ScanErrorCode::TruncatedEnvelope,
                    format!("AI ({ai}) needs {len} characters"),
                );
            }
            let (v, r) = rest.split_at(len);
            rest = r.strip_prefix(&[GS]).unwrap_or(r);
            v
        } else {
            let end = rest.iter().position(|b| *b == GS).unwrap_or(rest.len());
            let (v, r) = rest.split_at(end);
            rest = r.strip_prefix(&[GS]).unwrap_or(r);
            if v.is_empty() {
                return err(
                    ScanErrorCode::EmptyElement,
                    format!("AI ({ai}) has no data"),
                );
            }
            if v.len() > len {
                return err(
                    ScanErrorCode::IllegalChar,
                    format!("AI ({ai}) holds {} characters, at most {len}", v.len()),
                );
            }
            v
        };
        if let Some(b) = value
            .iter()
            .find(|b| !(0x21..=0x7e).contains(*b) || (numeric && !b.is_ascii_digit()))
        {
            return err(
                ScanErrorCode::IllegalChar,
                format!("AI ({ai}) holds byte 0x{b:02x}"),
            );
        }
        let value = std::str::from_utf8(value)
            .expect("printable ASCII")
            .to_owned();
        if fields.iter().any(|(n, _)| n == name) {
            return err(
                ScanErrorCode::DuplicateQualifier,
                format!("AI ({ai}) appears more than once"),
            );
        }
        let value = match ai {
            "01" => {
                gtin_check(&value)?;
                value
            }
            "11" | "13" | "15" | "17" => gs1_date(ai, &value)?,
            _ => value,
        };
        fields.push((name.to_owned(), value));
    }
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (key, construct) = match (get("gtin"), get("serial"), get("giai")) {
        (Some(_), Some(_), Some(_)) => {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "both GTIN + serial and a GIAI",
            )
        }
        (Some(g), Some(s), None) => (format!("{g}/{s}"), Construct::GtinSerial),
        (_, _, Some(giai)) => (giai, Construct::Giai),
        (Some(_), None, None) => {
            return err(
                ScanErrorCode::IncompleteConstruct,
                "a GTIN without a serial (AI 21)",
            )
        }
        _ => {
            return err(
                ScanErrorCode::IncompleteConstruct,
                "no GTIN + serial (AI 01 + 21) and no GIAI (AI 8004)",
            )
        }
    };
    fields.push(("key".into(), key.clone()));
    Ok((Uii::gs1(key), construct, fields))
}

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
