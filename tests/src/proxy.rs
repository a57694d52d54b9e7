//! Links between an agent and a simulated device that damage the device's replies:
//!
//! - [`FaultProxy`], on Modbus TCP: garbage in place of the next reply, or the next reply cut
//!   short (a truncated frame);
//! - [`RtuFaultBridge`], on a Modbus RTU line made of two pty pairs: every n-th reply with a
//!   broken CRC (as line noise leaves it), every m-th cut short (a device that stops sending
//!   in the middle of a frame).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    None,
    Garbage,
    Truncate,
}

/// A running proxy.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    damage: Arc<Mutex<Damage>>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let damage = Arc::new(Mutex::new(Damage::None));
        let d = Arc::clone(&damage);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, Arc::clone(&d)));
            }
        });
        Ok(FaultProxy { addr, damage })
    }

    /// The next reply from the device is replaced by garbage.
    pub fn garbage_next(&self) {
        *self.damage.lock().unwrap_or_else(|e| e.into_inner()) = Damage::Garbage;
    }

    /// The next reply from the device is cut to its first half, and the connection closed.
    pub fn truncate_next(&self) {
        *self.damage.lock().unwrap_or_else(|e| e.into_inner()) = Damage::Truncate;
    }
}

async fn pipe(client: TcpStream, server: TcpStream, damage: Arc<Mutex<Damage>>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    });
    let mut buf = [0u8; 4096];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = std::mem::replace(
            &mut *damage.lock().unwrap_or_else(|e| e.into_inner()),
            Damage::None,
        );
        let ok = match d {
            Damage::None => cw.write_all(&buf[..n]).await.is_ok(),
            Damage::Garbage => {
                let junk: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(37) ^ 0xa5).collect();
                cw.write_all(&junk).await.is_ok()
            }
            Damage::Truncate => {
                let _ = cw.write_all(&buf[..n / 2]).await;
                false
            }
        };
        if !ok {
            break;
        }
    }
    up.abort();
}

/// Replies damaged so far by an [`RtuFaultBridge`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtuDamage {
    /// Replies passed on, damaged or not.
    pub replies: u64,
    pub crc: u64,
    pub truncated: u64,
}

#[derive(Debug, Default)]
struct RtuFaults {
    crc_every: u64,
    truncate_every: u64,
    done: RtuDamage,
}

/// A running RTU bridge: requests pass unchanged; replies are cut into frames by their function
/// code (the length of a read reply is in its byte count) and some are damaged.
#[derive(Debug, Clone)]
pub struct RtuFaultBridge {
    faults: Arc<Mutex<RtuFaults>>,
}

impl RtuFaultBridge {
    /// Bridges `agent_side` (the master of the pty pair whose slave the agent opens) and
    /// `device_side` (the slave of the pair whose master the simulated device serves on).
    pub fn start(
        agent_side: tokio_serial::SerialStream,
        device_side: tokio_serial::SerialStream,
    ) -> RtuFaultBridge {
        let faults = Arc::new(Mutex::new(RtuFaults::default()));
        let (mut from_agent, to_agent) = tokio::io::split(agent_side);
        let (from_device, mut to_device) = tokio::io::split(device_side);
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_agent, &mut to_device).await;
        });
        tokio::spawn(rtu_replies(from_device, to_agent, Arc::clone(&faults)));
        RtuFaultBridge { faults }
    }

    /// From now on every `n`-th reply (counted from the start) reaches the agent with its CRC
    /// broken; 0: none.
    pub fn corrupt_crc_every(&self, n: u64) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .crc_every = n;
    }

    /// From now on every `n`-th reply reaches the agent cut to its first half (the rest never
    /// comes); 0: none. A reply due for both is given a broken CRC.
    pub fn truncate_every(&self, n: u64) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .truncate_every = n;
    }

    pub fn damage(&self) -> RtuDamage {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).done
    }
}

/// Length of the RTU reply frame at the start of `buf` (unit, function, data, CRC), once its
/// header is there.
fn rtu_reply_len(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    Some(match function {
        0x01..=0x04 => 5 + usize::from(*buf.get(2)?),
        0x05 | 0x06 | 0x0F | 0x10 => 8,
        f if f & 0x80 != 0 => 5,
        // Not a reply this bridge knows: pass on what there is.
        _ => buf.len(),
    })
}

async fn rtu_replies(
    mut from_device: impl tokio::io::AsyncRead + Unpin,
    mut to_agent: impl tokio::io::AsyncWrite + Unpin,
    faults: Arc<Mutex<RtuFaults>>,
) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match from_device.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(len) = rtu_reply_len(&pending).filter(|len| *len <= pending.len()) {
            let mut frame: Vec<u8> = pending.drain(..len).collect();
            {
                let mut f = faults.lock().unwrap_or_else(|e| e.into_inner());
                f.done.replies += 1;
                let k = f.done.replies;
                if f.crc_every > 0 && k % f.crc_every == 0 {
                    if let Some(last) = frame.last_mut() {
                        *last ^= 0x5a;
                    }
                    f.done.crc += 1;
                } else if f.truncate_every > 0 && k % f.truncate_every == 0 {
                    frame.truncate(len / 2);
                    f.done.truncated += 1;
                }
            }
            if to_agent.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}
