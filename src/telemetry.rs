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

/// Runs a binary's `main` future on a new tokio runtime (multi-threaded or not) and turns its
/// outcome into an exit code: `Ok(true)` succeeds, `Ok(false)` fails quietly, an error is one
/// line on stderr. A runtime that cannot start is reported the same way.
pub fn run_main(
    multi_thread: bool,
    main: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let outcome = match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(main),
        Err(err) => Err(anyhow::anyhow!("cannot start the runtime: {err}")),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
