//! Decoding Modbus registers into values, as configured per point.
//!
//! Word and byte order are defined by wire bytes (`reference/devices.md`): registers travel high
//! byte first, and for a value whose big-endian bytes are `A B C D`:
//! `ABCD` = `A B C D` on the wire, `CDAB` = `C D A B`, `BADC` = `B A D C`, `DCBA` = `D C B A`.
//! For wider values the same rules apply per register: `CDAB` reverses the register order,
//! `BADC` swaps the bytes inside each register, `DCBA` does both.

use std::fmt;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub const ALL: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    pub fn parse(s: &str) -> Option<WordOrder> {
        match s {
            "ABCD" => Some(WordOrder::Abcd),
            "CDAB" => Some(WordOrder::Cdab),
            "BADC" => Some(WordOrder::Badc),
            "DCBA" => Some(WordOrder::Dcba),
            _ => None,
        }
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WordOrder::Abcd => "ABCD",
            WordOrder::Cdab => "CDAB",
            WordOrder::Badc => "BADC",
            WordOrder::Dcba => "DCBA",
        })
    }
}

/// What a point's registers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointType {
    U16,
    I16,
    U32,
    I32,
    F32,
    F64,
    /// ASCII, two characters per register.
    String,
}

impl PointType {
    /// Registers a value of this type spans (`String` spans what its point says).
    pub fn width(self) -> Option<usize> {
        match self {
            PointType::U16 | PointType::I16 => Some(1),
            PointType::U32 | PointType::I32 | PointType::F32 => Some(2),
            PointType::F64 => Some(4),
            PointType::String => None,
        }
    }
}

/// A decoded point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{ty:?} needs {need} registers, the block holds {have}")]
    TooShort {
        ty: PointType,
        need: usize,
        have: usize,
    },
    #[error("register text holds byte 0x{0:02x}, which is not printable ASCII")]
    NotAscii(u8),
    #[error("value is not a finite number")]
    NotFinite,
}

/// The value's big-endian bytes from its registers in the given order.
pub fn value_bytes(regs: &[u16], order: WordOrder) -> Vec<u8> {
    let mut regs: Vec<u16> = regs.to_vec();
    if matches!(order, WordOrder::Cdab | WordOrder::Dcba) {
        regs.reverse();
    }
    if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
        for r in &mut regs {
            *r = r.swap_bytes();
        }
    }
    regs.iter().flat_map(|r| r.to_be_bytes()).collect()
}

/// Decodes `regs` (exactly the point's registers) as `ty` in `order`, then applies
/// `raw × scale + offset` to numbers.
pub fn decode(
    regs: &[u16],
    ty: PointType,
    order: WordOrder,
    scale: f64,
    offset: f64,
) -> Result<Value, DecodeError> {
    if let Some(need) = ty.width() {
        if regs.len() < need {
            return Err(DecodeError::TooShort {
                ty,
                need,
                have: regs.len(),
            });
        }
    }
    let b = value_bytes(&regs[..ty.width().unwrap_or(regs.len())], order);
    let raw = match ty {
        PointType::U16 => f64::from(u16::from_be_bytes([b[0], b[1]])),
        PointType::I16 => f64::from(i16::from_be_bytes([b[0], b[1]])),
        PointType::U32 => f64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        PointType::I32 => f64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        PointType::F32 => f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        PointType::F64 => f64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        PointType::String => return text(&b).map(Value::Text),
    };
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    Ok(Value::Number(apply_scale(raw, scale) + offset))
}

/// `raw × scale`, dividing instead when the scale is 1/10ⁿ so that implied decimals come out as
/// the nearest double to the decimal the device meant (5012 × 0.01 → 50.12, not 50.120000000000005).
fn apply_scale(raw: f64, scale: f64) -> f64 {
    if scale > 0.0 && scale < 1.0 {
        let inv = (1.0 / scale).round();
        if (inv * scale - 1.0).abs() < 1e-12 {
            return raw / inv;
        }
    }
    raw * scale
}

/// Register text: NUL padding and trailing spaces are dropped; anything else non-printable is an
/// error (a wrong address or byte order, not a label).
fn text(bytes: &[u8]) -> Result<String, DecodeError> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    if let Some(b) = bytes[end..].iter().find(|b| **b != 0) {
        return Err(DecodeError::NotAscii(*b));
    }
    let s = &bytes[..end];
    if let Some(b) = s.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
        return Err(DecodeError::NotAscii(*b));
    }
    Ok(String::from_utf8_lossy(s).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/modbus-words.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn regs(v: &serde_json::Value) -> Vec<u16> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as u16)
            .collect()
    }

    fn wire(hex: &str) -> Vec<u16> {
        let b: Vec<u8> = hex
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        b.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    fn num(v: Value) -> f64 {
        match v {
            Value::Number(n) => n,
            other => panic!("not a number: {other:?}"),
        }
    }

    #[test]
    fn float32_vectors_decode_in_every_order() {
        let v = vectors();
        for c in v["float32"].as_array().unwrap() {
            let order = WordOrder::parse(c["order"].as_str().unwrap()).unwrap();
            let r = regs(&c["registers"]);
            assert_eq!(
                r,
                wire(c["wire_hex"].as_str().unwrap()),
                "registers are the wire bytes"
            );
            let got = num(decode(&r, PointType::F32, order, 1.0, 0.0).unwrap());
            assert!(
                (got - c["value"].as_f64().unwrap()).abs() < 1e-5,
                "{order}: {got}"
            );
            // Any other order gives another value.
            for other in WordOrder::ALL.into_iter().filter(|o| *o != order) {
                let x = decode(&r, PointType::F32, other, 1.0, 0.0)
                    .map(num)
                    .unwrap_or(f64::NAN);
                assert!((x - 12.34).abs() > 1e-3, "{other} also decodes to 12.34");
            }
        }
        for c in v["float32_extra"].as_array().unwrap() {
            let order = WordOrder::parse(c["order"].as_str().unwrap()).unwrap();
            let got = num(decode(
                &wire(c["wire_hex"].as_str().unwrap()),
                PointType::F32,
                order,
                1.0,
                0.0,
            )
            .unwrap());
            assert!(
                (got - c["value_approx"].as_f64().unwrap()).abs() < 1e-3,
                "{got}"
            );
        }
    }

    #[test]
    fn uint32_vectors_decode() {
        for c in vectors()["uint32"].as_array().unwrap() {
            let order = WordOrder::parse(c["order"].as_str().unwrap()).unwrap();
            let got = num(decode(&regs(&c["registers"]), PointType::U32, order, 1.0, 0.0).unwrap());
            assert_eq!(got, c["value"].as_f64().unwrap());
            let signed =
                num(decode(&regs(&c["registers"]), PointType::I32, order, 1.0, 0.0).unwrap());
            assert_eq!(
                signed,
                c["value"].as_f64().unwrap(),
                "positive values read the same signed"
            );
        }
    }

    #[test]
    fn scaled_int16_vectors_decode() {
        for c in vectors()["int16_scaled"].as_array().unwrap() {
            let ty = if c["signed"].as_bool().unwrap() {
                PointType::I16
            } else {
                PointType::U16
            };
            let r = [c["register"].as_u64().unwrap() as u16];
            let got =
                num(decode(&r, ty, WordOrder::Abcd, c["scale"].as_f64().unwrap(), 0.0).unwrap());
            assert!(
                (got - c["value"].as_f64().unwrap()).abs() < 1e-9,
                "{c}: {got}"
            );
        }
    }

    #[test]
    fn string_vectors_decode() {
        for c in vectors()["string"].as_array().unwrap() {
            let got = decode(
                &regs(&c["registers"]),
                PointType::String,
                WordOrder::Abcd,
                1.0,
                0.0,
            )
            .unwrap();
            assert_eq!(got, Value::Text(c["value"].as_str().unwrap().to_owned()));
            // Byte-swapped devices: BADC reads the swapped text back.
            let swapped: Vec<u16> = regs(&c["registers"])
                .iter()
                .map(|r| r.swap_bytes())
                .collect();
            let got = decode(&swapped, PointType::String, WordOrder::Badc, 1.0, 0.0).unwrap();
            assert_eq!(got, Value::Text(c["value"].as_str().unwrap().to_owned()));
        }
    }

    #[test]
    fn f64_orders_and_padding_and_offsets() {
        let bits = 1234.5678f64.to_be_bytes();
        let abcd: Vec<u16> = bits
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        let mut cdab = abcd.clone();
        cdab.reverse();
        assert_eq!(
            num(decode(&abcd, PointType::F64, WordOrder::Abcd, 1.0, 0.0).unwrap()),
            1234.5678
        );
        assert_eq!(
            num(decode(&cdab, PointType::F64, WordOrder::Cdab, 1.0, 0.0).unwrap()),
            1234.5678
        );
        assert_eq!(
            num(decode(&[100], PointType::U16, WordOrder::Abcd, 0.5, -10.0).unwrap()),
            40.0
        );
        assert_eq!(
            decode(
                &[0x4142, 0x4300, 0x0000],
                PointType::String,
                WordOrder::Abcd,
                1.0,
                0.0
            )
            .unwrap(),
            Value::Text("ABC".into())
        );
        assert!(matches!(
            decode(&[0x4101], PointType::String, WordOrder::Abcd, 1.0, 0.0),
            Err(DecodeError::NotAscii(1))
        ));
        assert!(matches!(
            decode(&[1], PointType::F32, WordOrder::Abcd, 1.0, 0.0),
            Err(DecodeError::TooShort { need: 2, .. })
        ));
        assert!(matches!(
            decode(&[0x7fc0, 0], PointType::F32, WordOrder::Abcd, 1.0, 0.0),
            Err(DecodeError::NotFinite)
        ));
    }
}
