//! A serial port owned by one source task: opened, reported, read, and reopened after it fails.
//!
//! USB adapters and scanners disappear when unplugged and come back under another device node;
//! configured by `/dev/serial/by-id/...` they are found again. [`OwnedPort::read`] hides the
//! reopening: it reports the source down once per outage (event and gauge), backs off between
//! attempts, reports it up when the port opens, and tells the caller so it can restart framing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proofline_common::record::StationEvent;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::station::{Input, Metrics};

/// Opens a serial port with a character frame like `8N1` or `8E1`.
pub fn open_port(
    path: &std::path::Path,
    baud: u32,
    frame: &str,
) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::{DataBits, Parity, StopBits};
    let b = frame.as_bytes();
    let data = if b.first() == Some(&b'7') {
        DataBits::Seven
    } else {
        DataBits::Eight
    };
    let parity = match b.get(1) {
        Some(b'E') => Parity::Even,
        Some(b'O') => Parity::Odd,
        _ => Parity::None,
    };
    let stop = if b.get(2) == Some(&b'2') {
        StopBits::Two
    } else {
        StopBits::One
    };
    tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(data)
        .parity(parity)
        .stop_bits(stop)
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
    path: PathBuf,
    baud: u32,
    frame: String,
    station: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    port: Option<tokio_serial::SerialStream>,
    backoff: Duration,
    down_reported: bool,
    /// When the port was last opened.
    opened_at: tokio::time::Instant,
}

impl OwnedPort {
    pub fn new(
        source: &str,
        path: PathBuf,
        baud: u32,
        frame: &str,
        station: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        metrics.set_up(source, false);
        OwnedPort {
            source: source.to_owned(),
            path,
            baud,
            frame: frame.to_owned(),
            station,
            metrics,
            shutdown,
            port: None,
            backoff: Duration::from_millis(200),
            down_reported: false,
            opened_at: tokio::time::Instant::now(),
        }
    }

    async fn down(&mut self, error: String) {
        self.metrics.set_up(&self.source, false);
        if !self.down_reported {
            tracing::warn!(source = %self.source, port = %self.path.display(), %error, "port down");
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

    /// Waits the current backoff (or until shutdown) and doubles it, up to 10 s.
    async fn wait_backoff(&mut self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(self.backoff) => {}
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
    }

    /// Reads the next bytes, (re)opening the port as needed.
    pub async fn read(&mut self, buf: &mut [u8]) -> PortRead {
        loop {
            if self.shutdown.is_cancelled() {
                self.metrics.set_up(&self.source, false);
                return PortRead::Stopped;
            }
            let Some(port) = self.port.as_mut() else {
                match open_port(&self.path, self.baud, &self.frame) {
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
                                    self.path.display(),
                                    self.baud,
                                    self.frame
                                ),
                            }))
                            .await;
                        return PortRead::Opened;
                    }
                    Err(e) => {
                        let msg = format!("cannot open {}: {e}", self.path.display());
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
                        self.backoff = Duration::from_millis(200);
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
                self.backoff = Duration::from_millis(200);
            }
            self.wait_backoff().await;
        }
    }
}
