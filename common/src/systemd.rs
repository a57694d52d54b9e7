//! systemd notifications (`sd_notify`): READY, STOPPING and the watchdog, over the datagram
//! socket systemd names in `NOTIFY_SOCKET`. Without it (not under systemd) these do nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Sends one notification; failures are logged, never fatal.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, msg, "sd_notify failed");
    }
}

/// Pings the watchdog at half the interval systemd asked for (`WATCHDOG_USEC`), on `tasks`,
/// until `shutdown`, as long as `healthy` finds no problem: a program that is up but cannot do
/// its job stops pinging, and systemd restarts it. Nothing when systemd asked for no watchdog.
pub fn spawn_watchdog<F>(tasks: &TaskTracker, shutdown: CancellationToken, healthy: F)
where
    F: Fn() -> Vec<String> + Send + 'static,
{
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
    else {
        return;
    };
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return;
        }
    }
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    tasks.spawn(async move {
        let mut t = tokio::time::interval(every);
        let mut was_healthy = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = t.tick() => {}
            }
            let problems = healthy();
            if problems.is_empty() {
                notify("WATCHDOG=1");
            } else if was_healthy {
                tracing::error!(problems = %problems.join("; "), "unhealthy: the watchdog is no longer fed, so systemd restarts the program");
            }
            was_healthy = problems.is_empty();
        }
    });
}
