//! What both programs do around their main job: log setup and stopping on SIGTERM/SIGINT.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Logs to stderr at `PROOFLINE_LOG` (a level name) or `default`. The embedded MQTT broker
/// logs every connection at INFO: it is kept to warnings.
pub fn init_logging(default: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = std::env::var("PROOFLINE_LOG")
        .ok()
        .and_then(|s| s.parse::<tracing::Level>().ok())
        .unwrap_or(default);
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("rumqttd", tracing::Level::WARN.min(level));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .try_init();
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT. The task, on `tasks`, ends then or when
/// `shutdown` is cancelled otherwise.
pub fn cancel_on_signals(tasks: &TaskTracker, shutdown: CancellationToken) {
    tasks.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM and SIGINT");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
            () = shutdown.cancelled() => return,
        }
        shutdown.cancel();
    });
}

/// Runs a program's main job on a two-thread runtime until SIGTERM or SIGINT (or until the job
/// ends by itself), then waits for the signal task.
pub fn run_until_signal<F, Fut, T>(job: F) -> anyhow::Result<T>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use anyhow::Context;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        cancel_on_signals(&tasks, shutdown.clone());
        let r = job(shutdown.clone()).await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        r
    })
}

thread_local! {
    /// Depth of [`contained`] calls on this thread.
    static CONTAINED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Makes any panic end the process (after it is logged), wherever it happens: a library thread
/// (the embedded broker's router), a task, the main thread. A program that lost a thread must
/// not stay up half-working: systemd restarts it (DESIGN §7). Panics inside [`contained`] are
/// the exception: they are reported to its caller. Both programs call this first thing.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if CONTAINED.with(|c| c.get()) == 0 {
            tracing::error!(panic = %info, "a thread panicked; ending the process");
            std::process::abort();
        }
    }));
}

/// Runs `f`, turning a panic in it into an `Err` even under [`abort_on_panic`]: for a library
/// known to panic on damaged input (the storage engine recovering a damaged log).
pub fn contained<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    CONTAINED.with(|c| c.set(c.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get() - 1));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs this test binary again as a child that installs the hook and panics on a thread
    /// of its own; returns how the child ended.
    fn child(case: &str) -> std::process::ExitStatus {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::panics_end_the_process_except_contained",
                "--nocapture",
            ])
            .env("PROOFLINE_PANIC_CHILD", case)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    #[test]
    fn panics_end_the_process_except_contained() {
        use std::os::unix::process::ExitStatusExt;
        match std::env::var("PROOFLINE_PANIC_CHILD").as_deref() {
            Ok("thread") => {
                abort_on_panic();
                let _ = std::thread::spawn(|| panic!("a library thread dies")).join();
                // Not reached: the panic ended the process.
                std::process::exit(0);
            }
            Ok("contained") => {
                abort_on_panic();
                let r = contained(|| panic!("damaged input"));
                std::process::exit(if r.is_err() { 7 } else { 0 });
            }
            _ => {
                let died = child("thread");
                assert_eq!(died.signal(), Some(6), "{died:?}: SIGABRT");
                let kept = child("contained");
                assert_eq!(kept.code(), Some(7), "{kept:?}");
            }
        }
    }
}
