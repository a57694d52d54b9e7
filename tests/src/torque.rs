//! A simulated torque controller on Open Protocol.
//!
//! It answers MID 0001 with 0002, MID 0060 with 0005 (revision 1 or 2), MID 0050 with 0005
//! (keeping the identifier for the next results), echoes MID 9999, and sends one MID 0061 per
//! tightening, each time waiting for MID 0062 before the next; an unacknowledged result is sent
//! again after a reconnect. Faults: skip a tightening id (a lost result), drop the connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proofline_common::open_protocol::{mid, Frame, FrameReader, Tightening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default)]
struct State {
    /// Tightenings still to be sent (the controller's result queue).
    allowed: u32,
    next_id: u64,
    sent: Vec<Tightening>,
    /// Tightening ids acknowledged with MID 0062.
    acked: Vec<u64>,
    identifier: String,
    /// Skip this many ids before the next result.
    skip: u64,
    /// Close the connection at the next opportunity.
    drop_link: bool,
    /// MID 0062 received while no result was outstanding.
    stray_acks: u32,
    /// A result sent but not acknowledged when the link dropped: sent again first.
    resend: Option<Tightening>,
    /// Results generated so far (drives the simulated values).
    count: u64,
}

/// A running controller.
#[derive(Debug, Clone)]
pub struct Controller {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Controller {
    pub async fn start(name: &'static str) -> std::io::Result<Controller> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            next_id: 1000,
            ..State::default()
        }));
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // One client at a time, as on a real controller's integrator port.
                serve(stream, Arc::clone(&st), name).await;
            }
        });
        Ok(Controller { addr, state })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Lets the controller run `n` more tightenings.
    pub fn tighten(&self, n: u32) {
        self.with(|s| s.allowed += n);
    }

    /// The next tightening skips `n` ids (results the integrator will never see).
    pub fn skip_ids(&self, n: u64) {
        self.with(|s| s.skip += n);
    }

    /// The controller's tightening counter starts over (a reset or a replaced controller): the
    /// next tightening gets id `next`.
    pub fn restart_ids(&self, next: u64) {
        self.with(|s| {
            s.next_id = next.saturating_sub(1);
            s.skip = 0;
        });
    }

    pub fn drop_link(&self) {
        self.with(|s| s.drop_link = true);
    }

    pub fn sent(&self) -> Vec<Tightening> {
        self.with(|s| s.sent.clone())
    }

    pub fn acked(&self) -> Vec<u64> {
        self.with(|s| s.acked.clone())
    }

    pub fn identifier(&self) -> String {
        self.with(|s| s.identifier.clone())
    }

    pub fn stray_acks(&self) -> u32 {
        self.with(|s| s.stray_acks)
    }
}

fn tightening(name: &str, id: u64, identifier: &str, n: u64) -> Tightening {
    let torque = 50.0 + ((n * 37) % 900) as f64 / 100.0 - 4.5;
    Tightening {
        revision: 1,
        cell_id: 1,
        channel_id: 1,
        controller: name.into(),
        identifier: identifier.into(),
        job_id: 0,
        pset: 12,
        batch_size: 4,
        batch_counter: (n % 4 + 1) as u32,
        ok: (45.0..=55.0).contains(&torque),
        torque_status: 1,
        angle_status: 1,
        torque_min: 45.0,
        torque_max: 55.0,
        torque_target: 50.0,
        torque: (torque * 100.0).round() / 100.0,
        angle_min: 10.0,
        angle_max: 90.0,
        angle_target: 45.0,
        angle: 40.0 + (n % 10) as f64,
        time: "2025-03-05T14:22:31".into(),
        last_pset_change: "2025-03-01T08:00:00".into(),
        batch_status: 1,
        tightening_id: id,
        tool_serial: Some("B0071234".into()),
        strategy: Some(1),
        error_status: Some("0000000000".into()),
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, name: &'static str) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    let mut subscribed: Option<u16> = None;
    // The result sent and not yet acknowledged.
    let mut outstanding: Option<u64> = None;
    loop {
        // Send the next result when subscribed, allowed and nothing is outstanding.
        let next = {
            let mut s = lock();
            if s.drop_link {
                s.drop_link = false;
                if let Some(id) = outstanding {
                    s.resend = s.sent.iter().find(|t| t.tightening_id == id).cloned();
                }
                return;
            }
            match (subscribed, outstanding) {
                (Some(_), None) if s.resend.is_some() => s.resend.take(),
                (Some(rev), None) if s.allowed > 0 => {
                    s.allowed -= 1;
                    s.next_id += 1 + s.skip;
                    s.skip = 0;
                    s.count += 1;
                    let mut t = tightening(name, s.next_id, &s.identifier, s.count);
                    if rev >= 2 {
                        t.revision = 2;
                    } else {
                        t.tool_serial = None;
                        t.strategy = None;
                        t.error_status = None;
                    }
                    s.sent.push(t.clone());
                    Some(t)
                }
                _ => None,
            }
        };
        if let Some(t) = next {
            outstanding = Some(t.tightening_id);
            if stream
                .write_all(&Frame::encode(mid::RESULT, t.revision, &t.encode_data()))
                .await
                .is_err()
            {
                return;
            }
        }
        let read = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await;
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                if let Some(id) = outstanding {
                    let mut s = lock();
                    s.resend = s.sent.iter().find(|t| t.tightening_id == id).cloned();
                }
                return;
            }
            Ok(Ok(k)) => reader.push(&buf[..k]),
        }
        while let Some(f) = reader.next_frame() {
            let Ok(f) = f else { return };
            let reply = match f.mid {
                mid::COMM_START => Some(Frame::encode(
                    mid::COMM_START_ACK,
                    1,
                    b"010001020103PF6000-SIM                ",
                )),
                mid::RESULT_SUBSCRIBE => {
                    if f.revision > 2 {
                        Some(Frame::encode(mid::COMMAND_ERROR, 1, b"006097"))
                    } else {
                        subscribed = Some(f.revision);
                        Some(Frame::encode(mid::COMMAND_ACCEPTED, 1, b"0060"))
                    }
                }
                mid::IDENTIFIER_DOWNLOAD => {
                    lock().identifier = String::from_utf8_lossy(&f.data).trim().to_owned();
                    Some(Frame::encode(mid::COMMAND_ACCEPTED, 1, b"0050"))
                }
                mid::RESULT_ACK => {
                    match outstanding.take() {
                        Some(id) => lock().acked.push(id),
                        None => lock().stray_acks += 1,
                    }
                    None
                }
                mid::KEEP_ALIVE => Some(Frame::encode(mid::KEEP_ALIVE, 1, b"")),
                other => Some(Frame::encode(
                    mid::COMMAND_ERROR,
                    1,
                    format!("{other:04}99").as_bytes(),
                )),
            };
            if let Some(r) = reply {
                if stream.write_all(&r).await.is_err() {
                    return;
                }
            }
        }
    }
}
