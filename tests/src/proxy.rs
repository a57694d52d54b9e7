//! A TCP proxy between an agent and a simulated device that can damage the device's replies:
//! garbage in place of the next reply, or the next reply cut short (a truncated frame).

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
