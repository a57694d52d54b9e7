//! A serial port owned by one source task: opened, reported, read, and reopened after it fails.
//!
//! USB adapters and scanners disappear when unplugged and come back under another device node;
//! configured by `/dev/serial/by-id/...` they are found again. [`OwnedPort::read`] hides the
//! reopening: it reports the source down once per outage (event and gauge), backs off between
//! attempts, reports it up when the port opens, and tells the caller so it can restart framing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proofline_common::backoff::Backoff;
use proofline_common::record::StationEvent;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::station::{Input, Metrics};

/// Baud rates a serial source may use.
pub const BAUD_RATES: [u32; 8] = [1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200];

/// A character frame such as `8N1` or `7E1`: data bits, parity, stop bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharFrame {
    pub data: tokio_serial::DataBits,
    pub parity: tokio_serial::Parity,
    pub stop: tokio_serial::StopBits,
    text: &'static str,
}

impl CharFrame {
    const KNOWN: [&'static str; 6] = ["8N1", "8E1", "8O1", "8N2", "7E1", "7O1"];

    pub fn parse(s: &str) -> Result<CharFrame, String> {
        use tokio_serial::{DataBits, Parity, StopBits};
        let Some(text) = Self::KNOWN.iter().copied().find(|k| *k == s) else {
            return Err(format!("{s:?} is not one of {}", Self::KNOWN.join(" ")));
        };
        let b = text.as_bytes();
        Ok(CharFrame {
            data: if b[0] == b'7' {
                DataBits::Seven
            } else {
                DataBits::Eight
            },
            parity: match b[1] {
                b'E' => Parity::Even,
                b'O' => Parity::Odd,
                _ => Parity::None,
            },
            stop: if b[2] == b'2' {
                StopBits::Two
            } else {
                StopBits::One
            },
            text,
        })
    }
}

impl std::fmt::Display for CharFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text)
    }
}

/// A serial port as configured: device path, speed and character frame, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Prefer `/dev/serial/by-id/...`: USB adapters re-enumerate.
    pub path: PathBuf,
    pub baud: u32,
    pub frame: CharFrame,
}

impl SerialSettings {
    pub fn new(path: &std::path::Path, baud: u32, frame: &str) -> Result<SerialSettings, String> {
        if !BAUD_RATES.contains(&baud) {
            return Err(format!("baud: {baud} is not a standard rate"));
        }
        Ok(SerialSettings {
            path: path.to_owned(),
            baud,
            frame: CharFrame::parse(frame).map_err(|e| format!("frame: {e}"))?,
        })
    }
}

/// Opens a serial port with its configured speed and character frame.
pub fn open_port(s: &SerialSettings) -> std::io::Result<tokio_serial::SerialStream> {
    tokio_serial::new(s.path.to_string_lossy(), s.baud)
        .data_bits(s.frame.data)
        .parity(s.frame.parity)
        .stop_bits(s.frame.stop)
        .open_native_async()
        .map_err(std::io::Error::from)
}

/// What [`OwnedPort::read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRead {
    /// The port was (re)opened: bytes of a frame begun before are gone.
    Opened,
    /// This many bytes were read into the buffer.
    Bytes(usize),
    /// Shutdown.
    Stopped,
}

/// A port and the state of its outages.
#[derive(Debug)]
pub struct OwnedPort {
    source: String,
    settings: SerialSettings,
    station: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    port: Option<tokio_serial::SerialStream>,
    backoff: Backoff,
    down_reported: bool,
    /// When the port was last opened.
    opened_at: tokio::time::Instant,
}

impl OwnedPort {
    pub fn new(
        source: &str,
        settings: SerialSettings,
        station: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        metrics.set_up(source, false);
        OwnedPort {
            source: source.to_owned(),
            settings,
            station,
            metrics,
            shutdown,
            port: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            down_reported: false,
            opened_at: tokio::time::Instant::now(),
        }
    }

    async fn down(&mut self, error: String) {
        self.metrics.set_up(&self.source, false);
        if !self.down_reported {
            tracing::warn!(source = %self.source, port = %self.settings.path.display(), %error, "port down");
            let _ = self
                .station
                .send(Input::Event(StationEvent::SourceDown {
                    source: self.source.clone(),
                    error,
                }))
                .await;
            self.down_reported = true;
        }
    }

    /// Waits the next backoff step (or until shutdown); the steps grow up to 10 s.
    async fn wait_backoff(&mut self) {
        let delay = self.backoff.next_delay();
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    /// Reads the next bytes, (re)opening the port as needed.
    pub async fn read(&mut self, buf: &mut [u8]) -> PortRead {
        loop {
            if self.shutdown.is_cancelled() {
                self.metrics.set_up(&self.source, false);
                return PortRead::Stopped;
            }
            let Some(port) = self.port.as_mut() else {
                match open_port(&self.settings) {
                    Ok(p) => {
                        self.port = Some(p);
                        self.opened_at = tokio::time::Instant::now();
                        self.down_reported = false;
                        self.metrics.set_up(&self.source, true);
                        let _ = self
                            .station
                            .send(Input::Event(StationEvent::SourceUp {
                                source: self.source.clone(),
                                detail: format!(
                                    "opened {} at {} {}",
                                    self.settings.path.display(),
                                    self.settings.baud,
                                    self.settings.frame
                                ),
                            }))
                            .await;
                        return PortRead::Opened;
                    }
                    Err(e) => {
                        let msg = format!("cannot open {}: {e}", self.settings.path.display());
                        self.down(msg).await;
                        self.wait_backoff().await;
                        continue;
                    }
                }
            };
            let error = tokio::select! {
                () = self.shutdown.cancelled() => continue,
                r = port.read(buf) => match r {
                    Ok(0) => "port closed".to_owned(),
                    Ok(n) => {
                        self.backoff.reset();
                        return PortRead::Bytes(n);
                    }
                    Err(e) => e.to_string(),
                },
            };
            self.port = None;
            self.down(error).await;
            // A port that opens and fails at once (a USB device in a bad state) is retried with
            // the same growing backoff as one that does not open: no busy loop, no flood of
            // records. A port that worked for a while starts again from the shortest wait.
            if self.opened_at.elapsed() >= Duration::from_secs(10) {
                self.backoff.reset();
            }
            self.wait_backoff().await;
        }
    }
}
