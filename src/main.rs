//! The `atlas-integrations` binary: parses the command line and runs the command.

use std::process::ExitCode;

use clap::Parser;

use atlas_integrations::config::{Cli, Command};
use atlas_integrations::{admin, startup, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
                println!("{text}");
                let path = global.data_dir.join("first-start-credentials.txt");
                std::fs::create_dir_all(&global.data_dir)?;
                startup::write_private_file(&path, &text)?;
                println!("(also written to {}, readable only by you)", path.display());
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
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
