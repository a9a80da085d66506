//! One shutdown signal (SIGTERM or SIGINT) fanned out to every task through a cancellation token.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
        trigger.cancel();
    });
    token
}

/// How long shutdown waits for blocking work (a git fetch in flight) before the process exits.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a daemon's async main on a multi-threaded runtime. Unlike `#[tokio::main]`, whose runtime
/// waits without limit for blocking tasks when dropped, a fetch stuck on a silent server cannot
/// hold the process after the daemon's own shutdown has finished.
pub fn run<F, T>(daemon: F) -> T
where
    F: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(daemon);
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}
