//! Serial-line results: cutting a byte stream into lines and reading fields out of a line.
//!
//! Benches that report over RS-232 send one ASCII line per test, in shapes that differ per
//! bench: delimited fields (`,` `;` TAB), `key=value` pairs, or free text that a regular
//! expression with named groups takes apart (`<01>: 487.8 mbar:(OK): 029 Pa`). Lines are
//! bounded: a line longer than the configured maximum is reported and skipped up to its
//! terminator, never buffered without limit.

use regex::Regex;

/// How lines end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Cr,
    Lf,
    /// CR LF; a lone CR or LF also ends a line (benches are not consistent).
    CrLf,
    /// A configured byte (ETX, `#`, ...).
    Byte(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {max} bytes (skipped to its end)")]
    TooLong { max: usize },
    #[error("line has {found} fields, field {wanted} was asked for")]
    MissingField { wanted: usize, found: usize },
    #[error("line does not match the pattern")]
    NoMatch,
    #[error("key {0:?} is not in the line")]
    MissingKey(String),
    #[error("line is not text: {0}")]
    NotText(String),
}

/// Cuts a byte stream into lines.
#[derive(Debug)]
pub struct LineFramer {
    framing: Framing,
    max: usize,
    buf: Vec<u8>,
    /// Inside a line that already went over the limit.
    overlong: bool,
    /// CR seen as the last byte of the previous chunk (CRLF split across reads).
    after_cr: bool,
}

impl LineFramer {
    pub fn new(framing: Framing, max: usize) -> Self {
        LineFramer {
            framing,
            max,
            buf: Vec::new(),
            overlong: false,
            after_cr: false,
        }
    }

    /// Feeds bytes; returns the complete lines (terminators removed) and overlong-line errors
    /// in order. Empty lines are dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut out = Vec::new();
        for &b in bytes {
            let ends = match self.framing {
                Framing::Cr => b == b'\r',
                Framing::Lf => b == b'\n',
                Framing::CrLf => {
                    if b == b'\n' && self.after_cr {
                        // Second half of CR LF: the line already ended at CR.
                        self.after_cr = false;
                        continue;
                    }
                    self.after_cr = b == b'\r';
                    b == b'\r' || b == b'\n'
                }
                Framing::Byte(t) => b == t,
            };
            if ends {
                if self.overlong {
                    out.push(Err(LineError::TooLong { max: self.max }));
                } else if !self.buf.is_empty() {
                    out.push(Ok(std::mem::take(&mut self.buf)));
                }
                self.buf.clear();
                self.overlong = false;
                continue;
            }
            if self.overlong {
                continue;
            }
            if self.buf.len() >= self.max {
                self.overlong = true;
                self.buf.clear();
                continue;
            }
            self.buf.push(b);
        }
        out
    }
}

/// How fields are read from a line.
#[derive(Debug, Clone)]
pub enum LineParser {
    /// Fields split by one byte; fields are addressed by position (1-based).
    Delimited { separator: u8 },
    /// `key=value` pairs split by `separator` (`;`, `,`, TAB or space).
    KeyValue { separator: u8 },
    /// A regular expression whose named groups are the fields.
    Pattern(Regex),
}

/// Fields read from one line, each with its name (`1`, `2`, ... for delimited lines).
pub type LineFields = Vec<(String, String)>;

impl LineParser {
    pub fn parse(&self, line: &[u8]) -> Result<LineFields, LineError> {
        let text = std::str::from_utf8(line).map_err(|e| LineError::NotText(e.to_string()))?;
        match self {
            LineParser::Delimited { separator } => Ok(text
                .split(*separator as char)
                .enumerate()
                .map(|(i, f)| ((i + 1).to_string(), f.trim().to_owned()))
                .collect()),
            LineParser::KeyValue { separator } => Ok(text
                .split(*separator as char)
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()),
            LineParser::Pattern(re) => {
                let caps = re.captures(text).ok_or(LineError::NoMatch)?;
                Ok(re
                    .capture_names()
                    .flatten()
                    .filter_map(|n| {
                        caps.name(n)
                            .map(|m| (n.to_owned(), m.as_str().trim().to_owned()))
                    })
                    .collect())
            }
        }
    }
}

/// Looks up a field by name; for delimited lines a missing position is reported with the count.
pub fn field<'a>(fields: &'a LineFields, name: &str) -> Result<&'a str, LineError> {
    if let Some((_, v)) = fields.iter().find(|(n, _)| n == name) {
        return Ok(v);
    }
    match name.parse::<usize>() {
        Ok(wanted) => Err(LineError::MissingField {
            wanted,
            found: fields.len(),
        }),
        Err(_) => Err(LineError::MissingKey(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(f: &mut LineFramer, b: &[u8]) -> Vec<Result<String, LineError>> {
        f.push(b)
            .into_iter()
            .map(|r| r.map(|l| String::from_utf8(l).unwrap()))
            .collect()
    }

    #[test]
    fn crlf_lines_split_across_reads_come_out_whole() {
        let stream = b"<01>:30/05/2012 16:52:01\r\n<01>: 487.8 mbar:(OK): 029 Pa\r\n";
        for cut in 0..stream.len() {
            let mut f = LineFramer::new(Framing::CrLf, 256);
            let mut got = lines(&mut f, &stream[..cut]);
            got.extend(lines(&mut f, &stream[cut..]));
            assert_eq!(
                got,
                vec![
                    Ok("<01>:30/05/2012 16:52:01".to_owned()),
                    Ok("<01>: 487.8 mbar:(OK): 029 Pa".to_owned())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn every_framing_ends_lines_where_configured() {
        let mut f = LineFramer::new(Framing::Cr, 64);
        assert_eq!(
            lines(&mut f, b"a\rb\r\rc"),
            vec![Ok("a".into()), Ok("b".into())]
        );
        let mut f = LineFramer::new(Framing::Lf, 64);
        assert_eq!(
            lines(&mut f, b"a\nb\r\n"),
            vec![Ok("a".into()), Ok("b\r".into())]
        );
        let mut f = LineFramer::new(Framing::Byte(0x03), 64);
        assert_eq!(
            lines(&mut f, b"a\x03b\nc\x03"),
            vec![Ok("a".into()), Ok("b\nc".into())]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_is_read() {
        let mut f = LineFramer::new(Framing::Lf, 8);
        let mut got = lines(&mut f, b"0123456789abcdef");
        got.extend(lines(&mut f, b"ghij\nok\n"));
        assert_eq!(
            got,
            vec![Err(LineError::TooLong { max: 8 }), Ok("ok".into())]
        );
    }

    #[test]
    fn delimited_key_value_and_pattern_lines_yield_their_fields() {
        let d = LineParser::Delimited { separator: b';' };
        let fields = d.parse(b"EPS815;TP-0445;62.41; 4.08 ;OK").unwrap();
        assert_eq!(field(&fields, "3").unwrap(), "62.41");
        assert_eq!(field(&fields, "4").unwrap(), "4.08");
        assert_eq!(
            field(&fields, "9"),
            Err(LineError::MissingField {
                wanted: 9,
                found: 5
            })
        );
        let t = LineParser::Delimited { separator: b'\t' };
        assert_eq!(field(&t.parse(b"a\tb").unwrap(), "2").unwrap(), "b");

        let kv = LineParser::KeyValue { separator: b' ' };
        let fields = kv.parse(b"FL=62.4 IDLE=4.1 BL=21 RES=OK").unwrap();
        assert_eq!(field(&fields, "BL").unwrap(), "21");
        assert_eq!(
            field(&fields, "PI"),
            Err(LineError::MissingKey("PI".into()))
        );

        let re = Regex::new(
            r"^<(?P<program>\d+)>:\s*(?P<value>[-\d.]+)\s*(?P<unit>\S+):\((?P<status>OK|NOK)\)",
        )
        .unwrap();
        let p = LineParser::Pattern(re);
        let fields = p.parse(b"<01>: 487.8 mbar:(OK): 029 Pa").unwrap();
        assert_eq!(field(&fields, "value").unwrap(), "487.8");
        assert_eq!(field(&fields, "unit").unwrap(), "mbar");
        assert_eq!(field(&fields, "status").unwrap(), "OK");
        assert_eq!(
            p.parse(b"<01>:30/05/2012 16:52:01"),
            Err(LineError::NoMatch)
        );
        assert!(matches!(p.parse(b"\xff\xfe"), Err(LineError::NotText(_))));
    }
}
