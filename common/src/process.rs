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
