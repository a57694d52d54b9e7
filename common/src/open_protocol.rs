//! Open Protocol (Atlas Copco and many others) framing and the messages the torque source uses.
//!
//! A frame is a 20-byte ASCII header — length (4 digits, the frame without its trailing NUL),
//! MID (4), revision (3, blank = 1), no-ack flag (1), station id (2), spindle id (2), sequence
//! number (2), message parts (1), part number (1) — then the data, then one NUL. Data fields of
//! results carry a two-digit parameter id before each fixed-width value.
//!
//! Everything here is pure: [`FrameReader`] cuts a byte stream into frames and refuses garbage
//! with a reason (the caller decides to resynchronise or reconnect); [`Tightening::decode`] reads
//! MID 0061 revisions 1 and 2.

use std::fmt;

/// Largest frame we accept (the length field has four digits).
pub const MAX_FRAME: usize = 9999;
pub const HEADER_LEN: usize = 20;

pub mod mid {
    pub const COMM_START: u16 = 1;
    pub const COMM_START_ACK: u16 = 2;
    pub const COMM_STOP: u16 = 3;
    pub const COMMAND_ERROR: u16 = 4;
    pub const COMMAND_ACCEPTED: u16 = 5;
    pub const IDENTIFIER_DOWNLOAD: u16 = 50;
    pub const RESULT_SUBSCRIBE: u16 = 60;
    pub const RESULT: u16 = 61;
    pub const RESULT_ACK: u16 = 62;
    pub const RESULT_UNSUBSCRIBE: u16 = 63;
    pub const KEEP_ALIVE: u16 = 9999;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("length field {0:?} is not four digits")]
    BadLength(String),
    #[error("declared length {0} is shorter than the 20-byte header")]
    LengthTooSmall(usize),
    #[error("frame is not terminated by NUL (found 0x{0:02x})")]
    NoTerminator(u8),
    #[error("header field {field} {value:?} is not numeric")]
    BadHeader { field: &'static str, value: String },
    #[error("MID {mid} revision {revision}: expected parameter {expected:02} at data offset {offset}, found {found:?}")]
    UnexpectedParameter {
        mid: u16,
        revision: u16,
        expected: u8,
        offset: usize,
        found: String,
    },
    #[error("MID {mid}: parameter {id:02} value {value:?} is not a number")]
    BadNumber { mid: u16, id: u8, value: String },
    #[error("MID {mid}: parameter {id:02} holds bytes that are not ASCII")]
    NotAscii { mid: u16, id: u8 },
    #[error("MID {mid}: data ends inside parameter {id:02}")]
    Truncated { mid: u16, id: u8 },
    #[error("MID {0} revision {1} is not supported")]
    UnsupportedRevision(u16, u16),
    #[error("MID {0} was expected, got MID {1}")]
    WrongMid(u16, u16),
}

/// One Open Protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub mid: u16,
    /// Revision; a blank field means 1.
    pub revision: u16,
    pub no_ack: bool,
    pub data: Vec<u8>,
    /// The frame as received, header and data, without the NUL.
    pub raw: Vec<u8>,
}

impl Frame {
    /// Encodes a message: header, data, NUL.
    pub fn encode(mid: u16, revision: u16, data: &[u8]) -> Vec<u8> {
        let len = HEADER_LEN + data.len();
        // No-ack flag 0; station, spindle, sequence number, parts and part number blank, which
        // the specification allows and controllers accept.
        let mut out = format!("{len:04}{mid:04}{revision:03}0        ").into_bytes();
        out.extend_from_slice(data);
        out.push(0);
        out
    }

    fn parse(raw: &[u8]) -> Result<Frame, OpError> {
        let field =
            |name: &'static str, r: std::ops::Range<usize>| -> Result<Option<u16>, OpError> {
                let s = std::str::from_utf8(&raw[r]).unwrap_or("?");
                let t = s.trim();
                if t.is_empty() {
                    return Ok(None);
                }
                t.parse::<u16>().map(Some).map_err(|_| OpError::BadHeader {
                    field: name,
                    value: s.to_owned(),
                })
            };
        let mid = field("MID", 4..8)?.ok_or(OpError::BadHeader {
            field: "MID",
            value: "    ".into(),
        })?;
        let revision = field("revision", 8..11)?.unwrap_or(1).max(1);
        let no_ack = raw[11] == b'1';
        Ok(Frame {
            mid,
            revision,
            no_ack,
            data: raw[HEADER_LEN..].to_vec(),
            raw: raw.to_vec(),
        })
    }
}

/// Cuts a TCP byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` until one has arrived, or why the stream is not Open
    /// Protocol. After an error the buffer is cleared: the link must be resynchronised (in
    /// practice: reconnected).
    pub fn next_frame(&mut self) -> Option<Result<Frame, OpError>> {
        // Controllers may send a stray NUL or line end between frames.
        let skip = self
            .buf
            .iter()
            .take_while(|b| matches!(b, 0 | b'\r' | b'\n'))
            .count();
        self.buf.drain(..skip);
        if self.buf.len() < 4 {
            return None;
        }
        let len_s = &self.buf[..4];
        let len = match std::str::from_utf8(len_s)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(s) => s.parse::<usize>().expect("four digits"),
            None => {
                let e = OpError::BadLength(String::from_utf8_lossy(len_s).into_owned());
                self.buf.clear();
                return Some(Err(e));
            }
        };
        if len < HEADER_LEN {
            self.buf.clear();
            return Some(Err(OpError::LengthTooSmall(len)));
        }
        if self.buf.len() < len + 1 {
            return None;
        }
        if self.buf[len] != 0 {
            let e = OpError::NoTerminator(self.buf[len]);
            self.buf.clear();
            return Some(Err(e));
        }
        let raw: Vec<u8> = self.buf.drain(..=len).take(len).collect();
        Some(Frame::parse(&raw))
    }
}

/// A tightening result (MID 0061).
#[derive(Debug, Clone, PartialEq)]
pub struct Tightening {
    pub revision: u16,
    pub cell_id: u32,
    pub channel_id: u32,
    pub controller: String,
    /// The identifier downloaded with MID 0050 (the scanned UII), as the controller reports it.
    pub identifier: String,
    pub job_id: u32,
    pub pset: u32,
    pub batch_size: u32,
    pub batch_counter: u32,
    pub ok: bool,
    /// 0 low, 1 OK, 2 high.
    pub torque_status: u8,
    pub angle_status: u8,
    /// N·m.
    pub torque_min: f64,
    pub torque_max: f64,
    pub torque_target: f64,
    pub torque: f64,
    /// Degrees.
    pub angle_min: f64,
    pub angle_max: f64,
    pub angle_target: f64,
    pub angle: f64,
    /// Controller clock, `YYYY-MM-DDTHH:MM:SS` (controllers rarely know their zone).
    pub time: String,
    pub last_pset_change: String,
    /// 0 NOK, 1 OK, 2 not used, 3 running.
    pub batch_status: u8,
    pub tightening_id: u64,
    /// Revision 2 and later.
    pub tool_serial: Option<String>,
    pub strategy: Option<u32>,
    pub error_status: Option<String>,
}

/// Reads `<id><value>` fields of fixed width, checking each id.
struct Fields<'a> {
    data: &'a [u8],
    at: usize,
    mid: u16,
    revision: u16,
}

impl<'a> Fields<'a> {
    fn take(&mut self, id: u8, width: usize) -> Result<&'a str, OpError> {
        let head = self
            .data
            .get(self.at..self.at + 2)
            .ok_or(OpError::Truncated { mid: self.mid, id })?;
        if head != format!("{id:02}").as_bytes() {
            return Err(OpError::UnexpectedParameter {
                mid: self.mid,
                revision: self.revision,
                expected: id,
                offset: self.at,
                found: String::from_utf8_lossy(head).into_owned(),
            });
        }
        let v = self
            .data
            .get(self.at + 2..self.at + 2 + width)
            .ok_or(OpError::Truncated { mid: self.mid, id })?;
        self.at += 2 + width;
        if !v.is_ascii() {
            return Err(OpError::NotAscii { mid: self.mid, id });
        }
        Ok(std::str::from_utf8(v).expect("ASCII"))
    }

    fn text(&mut self, id: u8, width: usize) -> Result<String, OpError> {
        Ok(self.take(id, width)?.trim_end().to_owned())
    }

    fn num(&mut self, id: u8, width: usize) -> Result<u64, OpError> {
        let v = self.take(id, width)?;
        v.trim().parse::<u64>().map_err(|_| OpError::BadNumber {
            mid: self.mid,
            id,
            value: v.to_owned(),
        })
    }

    fn small(&mut self, id: u8, width: usize) -> Result<u32, OpError> {
        let n = self.num(id, width)?;
        u32::try_from(n).map_err(|_| OpError::BadNumber {
            mid: self.mid,
            id,
            value: n.to_string(),
        })
    }

    fn status(&mut self, id: u8) -> Result<u8, OpError> {
        Ok(self.num(id, 1)? as u8)
    }

    /// Torque in N·m × 100.
    fn torque(&mut self, id: u8) -> Result<f64, OpError> {
        Ok(self.num(id, 6)? as f64 / 100.0)
    }

    fn time(&mut self, id: u8) -> Result<String, OpError> {
        // "YYYY-MM-DD:HH:MM:SS" → "YYYY-MM-DDTHH:MM:SS"
        let v = self.take(id, 19)?;
        let shape = b"0000-00-00:00:00:00";
        let ok = v.len() == 19
            && v.bytes().zip(shape).all(|(b, s)| {
                if *s == b'0' {
                    b.is_ascii_digit()
                } else {
                    b == *s
                }
            });
        if !ok {
            return Err(OpError::BadNumber {
                mid: self.mid,
                id,
                value: v.to_owned(),
            });
        }
        Ok(format!("{}T{}", &v[..10], &v[11..]))
    }
}

impl Tightening {
    /// Decodes MID 0061 revision 1 or 2.
    pub fn decode(frame: &Frame) -> Result<Tightening, OpError> {
        if frame.mid != mid::RESULT {
            return Err(OpError::WrongMid(mid::RESULT, frame.mid));
        }
        let mut f = Fields {
            data: &frame.data,
            at: 0,
            mid: frame.mid,
            revision: frame.revision,
        };
        match frame.revision {
            1 => {
                let t = Tightening {
                    revision: 1,
                    cell_id: f.small(1, 4)?,
                    channel_id: f.small(2, 2)?,
                    controller: f.text(3, 25)?,
                    identifier: f.text(4, 25)?,
                    job_id: f.small(5, 2)?,
                    pset: f.small(6, 3)?,
                    batch_size: f.small(7, 4)?,
                    batch_counter: f.small(8, 4)?,
                    ok: f.status(9)? == 1,
                    torque_status: f.status(10)?,
                    angle_status: f.status(11)?,
                    torque_min: f.torque(12)?,
                    torque_max: f.torque(13)?,
                    torque_target: f.torque(14)?,
                    torque: f.torque(15)?,
                    angle_min: f.num(16, 5)? as f64,
                    angle_max: f.num(17, 5)? as f64,
                    angle_target: f.num(18, 5)? as f64,
                    angle: f.num(19, 5)? as f64,
                    time: f.time(20)?,
                    last_pset_change: f.time(21)?,
                    batch_status: f.status(22)?,
                    tightening_id: f.num(23, 10)?,
                    tool_serial: None,
                    strategy: None,
                    error_status: None,
                };
                Ok(t)
            }
            2 => {
                let cell_id = f.small(1, 4)?;
                let channel_id = f.small(2, 2)?;
                let controller = f.text(3, 25)?;
                let identifier = f.text(4, 25)?;
                let job_id = f.small(5, 4)?;
                let pset = f.small(6, 3)?;
                let strategy = f.small(7, 2)?;
                f.take(8, 5)?; // strategy options
                let batch_size = f.small(9, 4)?;
                let batch_counter = f.small(10, 4)?;
                let ok = f.status(11)? == 1;
                let batch_status = f.status(12)?;
                let torque_status = f.status(13)?;
                let angle_status = f.status(14)?;
                for id in 15..=19 {
                    f.take(id, 1)?; // rundown angle, current, self-tap, prevail statuses
                }
                let error_status = f.text(20, 10)?;
                let torque_min = f.torque(21)?;
                let torque_max = f.torque(22)?;
                let torque_target = f.torque(23)?;
                let torque = f.torque(24)?;
                let angle_min = f.num(25, 5)? as f64;
                let angle_max = f.num(26, 5)? as f64;
                let angle_target = f.num(27, 5)? as f64;
                let angle = f.num(28, 5)? as f64;
                for (id, w) in [(29, 5), (30, 5), (31, 5), (32, 3), (33, 3), (34, 3)] {
                    f.take(id, w)?;
                }
                for id in 35..=40 {
                    f.take(id, 6)?;
                }
                let tightening_id = f.num(41, 10)?;
                f.take(42, 5)?;
                f.take(43, 5)?;
                let tool_serial = f.text(44, 14)?;
                let time = f.time(45)?;
                let last_pset_change = f.time(46)?;
                Ok(Tightening {
                    revision: 2,
                    cell_id,
                    channel_id,
                    controller,
                    identifier,
                    job_id,
                    pset,
                    batch_size,
                    batch_counter,
                    ok,
                    torque_status,
                    angle_status,
                    torque_min,
                    torque_max,
                    torque_target,
                    torque,
                    angle_min,
                    angle_max,
                    angle_target,
                    angle,
                    time,
                    last_pset_change,
                    batch_status,
                    tightening_id,
                    tool_serial: Some(tool_serial),
                    strategy: Some(strategy),
                    error_status: Some(error_status),
                })
            }
            r => Err(OpError::UnsupportedRevision(frame.mid, r)),
        }
    }

    /// Encodes this result as the MID 0061 data of its revision (what a controller sends).
    pub fn encode_data(&self) -> Vec<u8> {
        let mut s = String::new();
        let mut put = |id: u8, v: String| {
            s.push_str(&format!("{id:02}{v}"));
        };
        let t = |x: &str| match (x.get(..10), x.get(11..)) {
            (Some(date), Some(time)) => format!("{date}:{time}"),
            _ => format!("{x:<19}"),
        };
        let cn = |x: f64| format!("{:06}", (x * 100.0).round() as u64);
        let deg = |x: f64| format!("{:05}", x.round() as u64);
        match self.revision {
            1 => {
                put(1, format!("{:04}", self.cell_id));
                put(2, format!("{:02}", self.channel_id));
                put(3, format!("{:<25}", self.controller));
                put(4, format!("{:<25}", self.identifier));
                put(5, format!("{:02}", self.job_id));
                put(6, format!("{:03}", self.pset));
                put(7, format!("{:04}", self.batch_size));
                put(8, format!("{:04}", self.batch_counter));
                put(9, u8::from(self.ok).to_string());
                put(10, self.torque_status.to_string());
                put(11, self.angle_status.to_string());
                put(12, cn(self.torque_min));
                put(13, cn(self.torque_max));
                put(14, cn(self.torque_target));
                put(15, cn(self.torque));
                put(16, deg(self.angle_min));
                put(17, deg(self.angle_max));
                put(18, deg(self.angle_target));
                put(19, deg(self.angle));
                put(20, t(&self.time));
                put(21, t(&self.last_pset_change));
                put(22, self.batch_status.to_string());
                put(23, format!("{:010}", self.tightening_id));
            }
            _ => {
                put(1, format!("{:04}", self.cell_id));
                put(2, format!("{:02}", self.channel_id));
                put(3, format!("{:<25}", self.controller));
                put(4, format!("{:<25}", self.identifier));
                put(5, format!("{:04}", self.job_id));
                put(6, format!("{:03}", self.pset));
                put(7, format!("{:02}", self.strategy.unwrap_or(1)));
                put(8, "00000".into());
                put(9, format!("{:04}", self.batch_size));
                put(10, format!("{:04}", self.batch_counter));
                put(11, u8::from(self.ok).to_string());
                put(12, self.batch_status.to_string());
                put(13, self.torque_status.to_string());
                put(14, self.angle_status.to_string());
                for id in 15..=19 {
                    put(id, "1".into());
                }
                put(
                    20,
                    format!(
                        "{:<10}",
                        self.error_status.clone().unwrap_or_else(|| "0".repeat(10))
                    ),
                );
                put(21, cn(self.torque_min));
                put(22, cn(self.torque_max));
                put(23, cn(self.torque_target));
                put(24, cn(self.torque));
                put(25, deg(self.angle_min));
                put(26, deg(self.angle_max));
                put(27, deg(self.angle_target));
                put(28, deg(self.angle));
                for (id, w) in [(29, 5), (30, 5), (31, 5), (32, 3), (33, 3), (34, 3)] {
                    put(id, "0".repeat(w));
                }
                for id in 35..=40 {
                    put(id, "0".repeat(6));
                }
                put(41, format!("{:010}", self.tightening_id));
                put(42, "00000".into());
                put(43, "00000".into());
                put(
                    44,
                    format!("{:<14}", self.tool_serial.clone().unwrap_or_default()),
                );
                put(45, t(&self.time));
                put(46, t(&self.last_pset_change));
            }
        }
        s.into_bytes()
    }
}

impl fmt::Display for Tightening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tightening {} on {}: {} N.m {} deg {}",
            self.tightening_id,
            self.controller,
            self.torque,
            self.angle,
            if self.ok { "OK" } else { "NOK" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_frame() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/open-protocol-mid0061-rev1.txt"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let line = text
            .lines()
            .find(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        let mut b = line.as_bytes().to_vec();
        b.push(0);
        b
    }

    #[test]
    fn the_vector_frame_decodes_to_its_listed_values() {
        let bytes = vector_frame();
        assert_eq!(bytes.len(), 232, "231 bytes and a NUL");
        let mut r = FrameReader::new();
        r.push(&bytes);
        let frame = r.next_frame().unwrap().unwrap();
        assert_eq!((frame.mid, frame.revision, frame.no_ack), (61, 1, false));
        let t = Tightening::decode(&frame).unwrap();
        assert_eq!(t.cell_id, 1);
        assert_eq!(t.channel_id, 1);
        assert_eq!(t.controller, "PF6000-CELL3");
        assert_eq!(t.identifier, "D1ABC57734-0012000123");
        assert_eq!((t.job_id, t.pset), (0, 12));
        assert_eq!((t.batch_counter, t.batch_size), (1, 4));
        assert!(t.ok);
        assert_eq!((t.torque_status, t.angle_status), (1, 1));
        assert_eq!(
            (t.torque, t.torque_min, t.torque_max, t.torque_target),
            (50.12, 45.0, 55.0, 50.0)
        );
        assert_eq!(
            (t.angle, t.angle_min, t.angle_max, t.angle_target),
            (47.0, 10.0, 90.0, 45.0)
        );
        assert_eq!(t.time, "2025-03-05T14:22:31");
        assert_eq!(t.last_pset_change, "2025-03-01T08:00:00");
        assert_eq!(t.batch_status, 1);
        assert_eq!(t.tightening_id, 12345);
        // Re-encoding gives the exact bytes back.
        assert_eq!(Frame::encode(61, 1, &t.encode_data())[20..], bytes[20..]);
    }

    #[test]
    fn revision_2_round_trips_with_the_tool_serial() {
        let mut r = FrameReader::new();
        r.push(&vector_frame());
        let mut t = Tightening::decode(&r.next_frame().unwrap().unwrap()).unwrap();
        t.revision = 2;
        t.tool_serial = Some("B0071234".into());
        t.strategy = Some(1);
        t.error_status = Some("0000000000".into());
        r.push(&Frame::encode(61, 2, &t.encode_data()));
        let back = Tightening::decode(&r.next_frame().unwrap().unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut stream = Frame::encode(mid::KEEP_ALIVE, 1, b"");
        stream.extend(vector_frame());
        stream.extend(Frame::encode(mid::COMMAND_ERROR, 1, b"0060 97"));
        for cut in 0..stream.len() {
            let mut r = FrameReader::new();
            r.push(&stream[..cut]);
            let mut mids = Vec::new();
            while let Some(f) = r.next_frame() {
                mids.push(f.unwrap().mid);
            }
            r.push(&stream[cut..]);
            while let Some(f) = r.next_frame() {
                mids.push(f.unwrap().mid);
            }
            assert_eq!(mids, [9999, 61, 4], "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let mut r = FrameReader::new();
        r.push(b"HELLO WORLD\0");
        assert!(matches!(r.next_frame(), Some(Err(OpError::BadLength(_)))));
        assert_eq!(r.pending(), 0);
        let mut r = FrameReader::new();
        r.push(b"0005xx");
        assert!(matches!(
            r.next_frame(),
            Some(Err(OpError::LengthTooSmall(5)))
        ));
        let mut bad = vector_frame();
        let n = bad.len();
        bad[n - 1] = b'X';
        let mut r = FrameReader::new();
        r.push(&bad);
        assert!(matches!(
            r.next_frame(),
            Some(Err(OpError::NoTerminator(b'X')))
        ));
        // A result whose fields are out of place names the parameter.
        let mut frame = vector_frame();
        frame[20 + 6] = b'9';
        let mut r = FrameReader::new();
        r.push(&frame);
        let err = Tightening::decode(&r.next_frame().unwrap().unwrap()).unwrap_err();
        assert!(
            matches!(err, OpError::UnexpectedParameter { expected: 2, .. }),
            "{err}"
        );
        let short = Frame::encode(61, 1, b"010001");
        let mut r = FrameReader::new();
        r.push(&short);
        assert!(matches!(
            Tightening::decode(&r.next_frame().unwrap().unwrap()),
            Err(OpError::Truncated { id: 2, .. })
        ));
    }
}
