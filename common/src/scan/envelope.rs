//! ISO/IEC 15434 envelopes (formats 06, 12, DD and 05) and the element syntaxes inside them:
//! ANSI MH10.8.2 data identifiers and ATA text element identifiers.

use super::gs1::parse_gs1;
use super::mil_std_130::mil_std_130;
use super::*;

pub(super) fn parse_envelope(data: &[u8]) -> Result<Parsed, ScanError> {
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
pub(super) enum Role {
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

pub(super) struct Element<'a> {
    pub(super) qualifier: String,
    pub(super) role: Role,
    pub(super) data: &'a str,
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
