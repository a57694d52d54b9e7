//! GS1 application identifiers: GTIN + serial and GIAI keys.

use super::*;

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
pub(super) fn parse_gs1(data: &[u8]) -> Result<Built, ScanError> {
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
