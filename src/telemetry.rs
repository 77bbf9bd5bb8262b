//! Logging and signals. Logs are JSON lines on stderr (`ATLAS_INTEGRATIONS_LOG_FORMAT=text`
//! for plain text), filtered by `RUST_LOG` (default `info`). Secrets never reach them: every
//! secret-holding type masks itself in `Debug`, and handlers log no bodies.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let text = std::env::var("ATLAS_INTEGRATIONS_LOG_FORMAT").is_ok_and(|v| v == "text");
    let _ = if text {
        builder.try_init()
    } else {
        builder.json().with_current_span(true).try_init()
    };
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
