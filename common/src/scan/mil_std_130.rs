//! MIL-STD-130 UII constructs: the complete UII, construct #1 (enterprise + serial) and
//! construct #2 (enterprise + part or lot + serial), with the enterprise identifier's rules.

use super::envelope::{Element, Role};
use super::*;

pub(super) fn check_cage(cage: &str) -> Result<(), ScanError> {
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

pub(super) fn check_duns(duns: &str) -> Result<(), ScanError> {
    if duns.len() == 9 && duns.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        err(
            ScanErrorCode::BadDuns,
            format!("DUNS {duns:?} must be 9 digits"),
        )
    }
}

pub(super) fn uii_chars(what: &str, data: &str) -> Result<(), ScanError> {
    match data.chars().find(|c| !is_uii_char(*c)) {
        None => Ok(()),
        Some(c) => err(
            ScanErrorCode::IllegalChar,
            format!("{what} {data:?} holds {c:?}; a UII allows only A-Z 0-9 - /"),
        ),
    }
}

/// The elements of one symbol, grouped by what they contribute to a UII.
struct Groups<'e, 'a> {
    complete: Vec<&'e Element<'a>>,
    c1: Vec<&'e Element<'a>>,
    enterprise: Vec<&'e Element<'a>>,
    part: Vec<&'e Element<'a>>,
    serial2: Vec<&'e Element<'a>>,
}

impl<'e, 'a> Groups<'e, 'a> {
    fn of(elements: &'e [Element<'a>]) -> Self {
        let find = |roles: &[Role]| -> Vec<&'e Element<'a>> {
            elements
                .iter()
                .filter(|e| roles.contains(&e.role))
                .collect()
        };
        Groups {
            complete: find(&[Role::Complete]),
            c1: find(&[Role::EnterpriseSerial, Role::SerialC1]),
            enterprise: find(&[Role::Cage, Role::Duns, Role::Dodaac, Role::IacEnterprise]),
            part: find(&[Role::PartNumber, Role::Lot]),
            serial2: find(&[Role::SerialC2]),
        }
    }

    /// Refuses a symbol that mixes constructs or repeats what a UII holds once.
    fn check_unambiguous(&self) -> Result<(), ScanError> {
        let kinds = [
            !self.complete.is_empty(),
            !self.c1.is_empty(),
            !self.part.is_empty() || !self.serial2.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "elements of more than one UII construct in one symbol",
            );
        }
        if self.enterprise.len() > 1 {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "more than one enterprise identifier",
            );
        }
        if self.part.len() > 1 {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "both a part number and a lot number",
            );
        }
        Ok(())
    }
}

/// Builds the UII from MIL-STD-130 elements (either syntax).
pub(super) fn mil_std_130(elements: Vec<Element<'_>>) -> Result<Built, ScanError> {
    let mut seen = std::collections::HashSet::new();
    for e in &elements {
        if !seen.insert(e.qualifier.as_str()) {
            return err(
                ScanErrorCode::DuplicateQualifier,
                format!("{} appears more than once", e.qualifier),
            );
        }
    }
    for e in &elements {
        uii_chars_if_needed(e)?;
    }
    let g = Groups::of(&elements);
    g.check_unambiguous()?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let (uii, construct) = if let Some(c) = g.complete.first() {
        if !g.enterprise.is_empty() {
            return err(
                ScanErrorCode::AmbiguousConstruct,
                "a complete UII and an enterprise identifier",
            );
        }
        (c.data.to_owned(), Construct::Complete)
    } else if let Some(c) = g.c1.first() {
        (construct_one(c, &g, &mut fields)?, Construct::One)
    } else {
        (construct_two(&g, &mut fields)?, Construct::Two)
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

/// Construct #1: an enterprise identifier and a serial unique within it (`18S`, or an
/// enterprise element with `SER`).
fn construct_one(
    c: &Element<'_>,
    g: &Groups<'_, '_>,
    fields: &mut Fields,
) -> Result<String, ScanError> {
    let (iac, ent, serial) = match c.role {
        Role::EnterpriseSerial => {
            if !g.enterprise.is_empty() {
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
            let Some(e) = g.enterprise.first() else {
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
    Ok(format!("{iac}{ent}{serial}"))
}

/// Construct #2: enterprise, part or lot number, and a serial unique within that.
fn construct_two(g: &Groups<'_, '_>, fields: &mut Fields) -> Result<String, ScanError> {
    let (Some(e), Some(p), Some(s)) = (g.enterprise.first(), g.part.first(), g.serial2.first())
    else {
        let missing: Vec<&str> = [
            (g.enterprise.is_empty(), "an enterprise identifier"),
            (g.part.is_empty(), "a part or lot number"),
            (g.serial2.is_empty(), "a serial"),
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
    Ok(format!("{iac}{}{}{}", e.data, p.data, s.data))
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
