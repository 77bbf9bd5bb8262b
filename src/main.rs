//! The `atlas-integrations` binary: parses the command line and runs the command.

use std::process::ExitCode;

use clap::Parser;

use atlas_integrations::config::{Cli, Command};
use atlas_integrations::{admin, startup, telemetry};

/// mimalloc rather than the system allocator: glibc's malloc and free were 8 % of the CPU
/// of an authenticated GET in the benchmark's profile. With the crate's `override` feature
/// it also serves C's `malloc`, which SQLite's page caches use: under glibc each commit
/// (which empties a reader's cache) freed them, glibc gave the memory back to the system, and
/// the next reads faulted it in again (W3: 0.7 page faults per request, 131,379 in 8 s;
/// with `override`, 3,359; ≈ 9 MiB more resident under W3, within its 64 MiB target).
///
/// Rust's allocations reach it through the system allocator, that is C's `malloc`, which the
/// `override` feature makes mimalloc's: `MiMalloc` would pass every allocation to
/// `mi_malloc_aligned`, whose fast path gives up on blocks over 1 KiB that are not a power of
/// two (hyper's buffers, SQLite's rows) and over-allocates them instead (≈ 2,200 of an
/// authenticated GET's 72,000 instructions under callgrind). `System` calls `malloc` for
/// every alignment up to 16 bytes and `posix_memalign` (mimalloc's too) above.
#[global_allocator]
static ALLOCATOR: std::alloc::System = std::alloc::System;

/// Links mimalloc, whose `malloc` and `free` replace the C library's for the whole process.
use mimalloc as _;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    telemetry::run_main(true, async { run(cli).await.map(|()| true) })
}

/// Help and version go out as clap prints them; every other command-line error becomes one
/// line on stderr, like every other error of the CLI.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::from(2);
        }
        _ => {}
    }
    let text = err.to_string();
    let message = text.split("\n\nUsage:").next().unwrap_or(&text);
    let message = message.trim_start_matches("error: ");
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("error: {one_line} (see --help)");
    ExitCode::from(2)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    let output = match cli.command {
        Command::Serve(serve) => {
            telemetry::init();
            let app = startup::Application::build(&global, &serve).await?;
            let addr = app.local_addr()?;
            let base = serve
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}"));
            if let Some(first) = app.first_start() {
                let text = first.text(&base);
                print_out(&text);
                let path = global.data_dir.join("first-start-credentials.txt");
                std::fs::create_dir_all(&global.data_dir)?;
                startup::write_private_file(&path, &text)?;
                print_out(&format!(
                    "(also written to {}, readable only by you)",
                    path.display()
                ));
            }
            tracing::info!(%addr, "listening");
            app.run_until_stopped(telemetry::shutdown_signal()).await?;
            tracing::info!("stopped");
            return Ok(());
        }
        Command::Migrate => {
            startup::open_database(&global, true).await?;
            serde_json::json!({"migrated": true})
        }
        Command::Orgs(c) => admin::orgs(&global, c).await?,
        Command::Projects(c) => admin::projects(&global, c).await?,
        Command::ApiKeys(c) => admin::api_keys(&global, c).await?,
        Command::Keys(c) => admin::keys(&global, c).await?,
    };
    print_out(&serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// Writes a line on stdout; a reader that went away (`| head`) is not an error worth a panic.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}
