//! The benchmark driver (issue 6): seeds the databases through the storage layer, starts the
//! ceiling (`ceiling`, a bare hyper server) and `atlas-integrations serve` on SQLite (and on
//! PostgreSQL when it answers) as child processes, drives the five workloads over 64 Digest
//! keep-alive connections in alternating rounds, and reports medians, ratios to the ceiling,
//! CPU time per request, memory, cold start and binary size against the issue's targets.
//!
//! ```sh
//! scripts/bench [--projects N] [--rounds R] [--seconds S] [--quick] [--out DIR]
//! # which is: cargo build --release --bins && target/release/bench "$@"
//! ```
//!
//! It looks for `atlas-integrations` and `ceiling` next to its own executable (so build all
//! the release binaries first) and keeps its seeded databases in `<target>/bench-data/`, reused
//! by later runs with the same N. `--quick` (200 projects, one 1-second round) only checks
//! that every workload runs without transport errors or unexpected statuses; it judges no
//! target and writes no results unless `--out` is given.

#[path = "bench/client.rs"]
mod client;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/seed.rs"]
mod seed;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/spec.rs"]
mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use atlas_integrations::domain::integration::IntegrationType;
use clap::Parser;

use load::{RunResult, RunSpec, Workload};
use report::{Extras, Machine, Run, Settings};
use seed::Seeded;
use server::Server;

/// Benchmarks atlas-integrations against a bare hyper ceiling (issue 6).
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Projects to seed (× 5 integrations) [default: 100000; 200 with --quick].
    #[arg(long)]
    projects: Option<usize>,
    /// Rounds (each: every workload on the ceiling, then on our servers) [default: 5; 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured seconds per workload, server and round [default: 5; 1 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// A few seconds: checks that every workload runs cleanly, judges no target.
    #[arg(long)]
    quick: bool,
    /// Where to write latest.md and latest.json [default: bench/results; none with --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// PostgreSQL server to use (a database `bench_<N>` is created next to this one).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// Skip PostgreSQL.
    #[arg(long)]
    no_postgres: bool,
    /// Only these workloads (comma-separated, e.g. `W1,W3`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the seeded databases live [default: <target>/bench-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// An environment variable for our servers, `NAME=VALUE` (repeatable; for experiments such
    /// as `MALLOC_ARENA_MAX=2`). Recorded in the results.
    #[arg(long = "server-env", value_name = "NAME=VALUE")]
    server_env: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    atlas_integrations::telemetry::run_main(false, run(args))
}

/// Other processes' CPU (cores) above which a run is run again (twice at most).
const DISTURBED: f64 = 0.25;

/// What a target's W3 created and has not deleted yet.
type Created = Arc<Mutex<Vec<(u32, IntegrationType)>>>;

/// The servers a round drives.
struct Targets {
    ceiling: Server,
    sqlite: Server,
    sqlite_one: Option<(Server, Arc<seed::Seed>)>,
    postgres: Option<(Server, Arc<seed::Seed>)>,
    seed: Arc<seed::Seed>,
}

impl Targets {
    /// `(label, server, seed)` for each server that runs `workload`, ceiling first.
    fn for_workload(&mut self, workload: Workload) -> Vec<(&mut Server, Arc<seed::Seed>)> {
        let mut out = vec![
            (&mut self.ceiling, Arc::clone(&self.seed)),
            (&mut self.sqlite, Arc::clone(&self.seed)),
        ];
        if workload == Workload::W1 {
            if let Some((server, seed)) = &mut self.sqlite_one {
                out.push((server, Arc::clone(seed)));
            }
            if let Some((server, seed)) = &mut self.postgres {
                out.push((server, Arc::clone(seed)));
            }
        }
        out
    }

    async fn stop(self) {
        self.ceiling.stop().await;
        self.sqlite.stop().await;
        if let Some((server, _)) = self.sqlite_one {
            server.stop().await;
        }
        if let Some((server, _)) = self.postgres {
            server.stop().await;
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if std::env::var_os("ATLAS_INTEGRATIONS_MASTER_KEY").is_some() {
        bail!("unset ATLAS_INTEGRATIONS_MASTER_KEY: the benchmark databases use their own keys");
    }
    let quick = args.quick;
    let settings = Settings {
        projects: args
            .projects
            .unwrap_or(if quick { 200 } else { 100_000 })
            .max(1),
        rounds: args.rounds.unwrap_or(if quick { 1 } else { 5 }).max(1),
        seconds: args
            .seconds
            .unwrap_or(if quick { 1.0 } else { 5.0 })
            .max(0.1),
        connections: args.connections.max(1),
        quick,
        command: std::env::args()
            .enumerate()
            .map(|(i, a)| if i == 0 { "bench".to_owned() } else { a })
            .collect::<Vec<_>>()
            .join(" "),
    };
    let workloads: Vec<Workload> = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|w| Workload::parse(w).with_context(|| format!("unknown workload {w:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?;
    let server_bin = bin_dir.join("atlas-integrations");
    let ceiling_bin = bin_dir.join("ceiling");
    for binary in [&server_bin, &ceiling_bin] {
        if !binary.exists() {
            bail!(
                "{} is missing: build every release binary first (`cargo build --release --bins`, \
                 or run scripts/bench)",
                binary.display()
            );
        }
    }
    let data_root = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => bin_dir.parent().unwrap_or(bin_dir).join("bench-data"),
    };
    std::fs::create_dir_all(&data_root)
        .with_context(|| format!("cannot create {}", data_root.display()))?;
    let mut machine = Machine::describe(&data_root);
    let mut extras = Extras::default();
    let n = settings.projects;
    let mut server_env = Vec::new();
    for pair in &args.server_env {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--server-env {pair:?} is not NAME=VALUE"))?;
        server_env.push((name, value));
        extras
            .notes
            .push(format!("Our servers ran with {name}={value}."));
    }

    eprintln!(
        "seeding SQLite with {n} projects in {}",
        data_root.display()
    );
    let sqlite = seed::sqlite(&data_root, n).await?;
    note_seed(&mut extras, "sqlite", &sqlite);
    let sqlite_one = if n > 1 && workloads.contains(&Workload::W1) {
        let one = seed::sqlite(&data_root, 1).await?;
        note_seed(&mut extras, "sqlite-1", &one);
        Some(one)
    } else {
        None
    };
    let postgres = if args.no_postgres || !workloads.contains(&Workload::W1) {
        extras
            .notes
            .push("PostgreSQL not run (--no-postgres or no W1).".to_owned());
        None
    } else {
        eprintln!("seeding PostgreSQL with {n} projects");
        let seeded = seed::postgres(&data_root, &args.postgres_url, n).await?;
        match &seeded {
            Some(s) => {
                note_seed(&mut extras, "postgres", s);
                machine.postgres = seed::postgres_version(&args.postgres_url).await;
            }
            None => extras.notes.push(format!(
                "PostgreSQL at {} did not answer: its W1 was not run.",
                args.postgres_url
            )),
        }
        seeded
    };

    let scratch = data_root.join("scratch");
    for (name, binary) in [
        ("atlas-integrations", &server_bin),
        ("ceiling", &ceiling_bin),
    ] {
        extras
            .stripped_bytes
            .insert(name.to_owned(), server::stripped_size(binary, &scratch));
    }

    eprintln!("cold starts (spawn → first 200 on /health), 3 each");
    let cold_runs = if quick { 1 } else { 3 };
    for (label, seeded) in
        std::iter::once(("sqlite", &sqlite)).chain(postgres.iter().map(|p| ("postgres", p)))
    {
        for _ in 0..cold_runs {
            let (server, elapsed) = Server::ours(&server_bin, seeded, label, &server_env).await?;
            server.stop().await;
            extras
                .cold_start_ms
                .entry(label.to_owned())
                .or_default()
                .push(report::ms(elapsed));
        }
    }

    eprintln!("starting the servers");
    let ceiling = Server::ceiling(&ceiling_bin, &data_root).await?;
    let (sqlite_server, _) = Server::ours(&server_bin, &sqlite, "sqlite", &server_env).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    extras.idle_rss_kb.insert(
        "sqlite".to_owned(),
        server::status_kb(sqlite_server.pid(), "VmRSS")?,
    );
    extras.idle_rss_kb.insert(
        "ceiling".to_owned(),
        server::status_kb(ceiling.pid(), "VmRSS")?,
    );
    let mut targets = Targets {
        ceiling,
        sqlite: sqlite_server,
        sqlite_one: None,
        postgres: None,
        seed: Arc::clone(&sqlite.seed),
    };
    let started = start_optional(
        &server_bin,
        sqlite_one.as_ref(),
        "sqlite-1",
        &server_env,
        &mut extras,
    )
    .await;
    targets.sqlite_one = started?;
    let started = start_optional(
        &server_bin,
        postgres.as_ref(),
        "postgres",
        &server_env,
        &mut extras,
    )
    .await;
    targets.postgres = match started {
        Ok(server) => server,
        Err(err) => {
            targets.stop().await;
            return Err(err);
        }
    };

    let outcome = drive(&mut targets, &workloads, &settings).await;
    for (label, server) in [
        ("sqlite", Some(&targets.sqlite)),
        ("sqlite-1", targets.sqlite_one.as_ref().map(|(s, _)| s)),
        ("postgres", targets.postgres.as_ref().map(|(s, _)| s)),
        ("ceiling", Some(&targets.ceiling)),
    ] {
        if let Some(kb) = server.and_then(|s| server::status_kb(s.pid(), "VmHWM").ok()) {
            extras.hwm_kb.insert(label.to_owned(), kb);
        }
    }
    targets.stop().await;
    let runs = outcome?;

    let mut rows = report::rows(&runs);
    let judged = report::judge(&mut rows, &extras, &settings);
    let markdown = report::markdown(&machine, &settings, &rows, &judged, &extras);
    println!("{markdown}");
    let out = args
        .out
        .clone()
        .or_else(|| (!quick).then(|| PathBuf::from("bench/results")));
    if let Some(out) = out {
        write_results(
            &out,
            &markdown,
            &report::json(&machine, &settings, &runs, &rows, &judged, &extras),
        )?;
        eprintln!(
            "results written to {}/latest.md and latest.json",
            out.display()
        );
    }

    let mut clean = true;
    for run in &runs {
        let r = &run.result;
        if r.requests == 0 || r.transport_errors > 0 || r.unexpected > 0 {
            clean = false;
            eprintln!(
                "FAILED: round {} {:?} on {}: {} requests, {} transport errors, {} unexpected statuses{}",
                run.round,
                run.workload,
                run.server,
                r.requests,
                r.transport_errors,
                r.unexpected,
                r.unexpected_sample
                    .as_ref()
                    .map(|s| format!(" (e.g. {s})"))
                    .unwrap_or_default()
            );
        }
    }
    if clean {
        eprintln!(
            "every workload ran without transport errors or unexpected statuses ({} runs)",
            runs.len()
        );
    }
    Ok(clean)
}

fn note_seed(extras: &mut Extras, label: &str, seeded: &Seeded) {
    if seeded.fresh {
        extras
            .seed_seconds
            .insert(label.to_owned(), seeded.seed.seconds);
    } else {
        extras.notes.push(format!(
            "{label}: reused the database seeded earlier in {} ({:.0} s to seed then).",
            seeded.dir.display(),
            seeded.seed.seconds
        ));
    }
}

async fn start_optional(
    binary: &Path,
    seeded: Option<&Seeded>,
    label: &str,
    env: &[(&str, &str)],
    extras: &mut Extras,
) -> anyhow::Result<Option<(Server, Arc<seed::Seed>)>> {
    let Some(seeded) = seeded else {
        return Ok(None);
    };
    let (server, _) = Server::ours(binary, seeded, label, env).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(kb) = server::status_kb(server.pid(), "VmRSS") {
        extras.idle_rss_kb.insert(label.to_owned(), kb);
    }
    Ok(Some((server, Arc::clone(&seeded.seed))))
}

/// Warm-up slices at most, per server.
const WARM_UP_MOST_SLICES: u32 = 30;

/// Warm-up, then the rounds.
async fn drive(
    targets: &mut Targets,
    workloads: &[Workload],
    settings: &Settings,
) -> anyhow::Result<Vec<Run>> {
    let ticks = server::ticks_per_second();
    let mut created: HashMap<String, Created> = HashMap::new();
    // A server is warm when two consecutive slices of W1 agree within 10 %: a database that
    // was seeded long ago (PostgreSQL above all) first reads its pages from disk, and a fixed
    // 2 s warm-up left two of five rounds of PostgreSQL's W1 at 2,000–16,000 req/s.
    let (slice, most_slices) = if settings.quick {
        (Duration::from_secs_f64(0.2), 1)
    } else {
        (Duration::from_secs(1), WARM_UP_MOST_SLICES)
    };
    eprintln!(
        "warming up (W1 on each server, {:.1} s slices until two agree within 10 %, at most {most_slices})",
        slice.as_secs_f64()
    );
    for (server, seed) in targets.for_workload(Workload::W1) {
        let created = Arc::clone(created.entry(server.label.clone()).or_default());
        let mut last: Option<f64> = None;
        for slices in 1..=most_slices {
            let result = one_run(
                server,
                Arc::clone(&seed),
                Workload::W1,
                slice,
                settings,
                ticks,
                Arc::clone(&created),
                0,
            )
            .await?;
            let steady = last.is_some_and(|prev| (result.rps - prev).abs() <= 0.1 * prev);
            last = Some(result.rps);
            if steady || slices == most_slices {
                eprintln!(
                    "  {}: {:.0} req/s after {slices} slices",
                    server.label, result.rps
                );
                break;
            }
        }
    }
    let mut runs = Vec::new();
    for round in 1..=settings.rounds {
        for &workload in workloads {
            for (server, seed) in targets.for_workload(workload) {
                let kept = Arc::clone(created.entry(server.label.clone()).or_default());
                let duration = Duration::from_secs_f64(settings.seconds);
                let salt = (round as u64) << 8 | workload as u64;
                let mut attempt = 0;
                let result = loop {
                    attempt += 1;
                    if !settings.quick {
                        // Other processes on the machine skew everything: let them finish.
                        let busy = server::wait_quiet(0.15, Duration::from_secs(120), ticks).await;
                        if busy > 0.15 {
                            eprintln!(
                                "  (the machine is still busy: {busy:.2} cores in use before this run)"
                            );
                        }
                    }
                    let result = one_run(
                        server,
                        Arc::clone(&seed),
                        workload,
                        duration,
                        settings,
                        ticks,
                        Arc::clone(&kept),
                        salt,
                    )
                    .await?;
                    if settings.quick || result.other_cores <= DISTURBED || attempt == 3 {
                        break result;
                    }
                    eprintln!(
                        "  (round {round} {workload:?} on {}: other processes used {:.2} cores; running it again)",
                        server.label, result.other_cores
                    );
                };
                eprintln!(
                    "round {round} {workload:?} {:<9} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  server {:>6.1} µs/req ({:.2} cores)  client {:>5.1} µs/req{}  RSS {:>5.1} MiB  softirq {:.2} steal {:.2} others {:.2} cores{}{}",
                    server.label,
                    result.rps,
                    result.p50_us / 1e3,
                    result.p99_us / 1e3,
                    result.cpu_us_per_request,
                    result.server_cores,
                    result.client_cpu_us_per_request,
                    if result.database_cpu_us_per_request > 0.0 {
                        format!("  database {:.1} µs/req", result.database_cpu_us_per_request)
                    } else {
                        String::new()
                    },
                    result.peak_rss_kb as f64 / 1024.0,
                    result.irq_cores,
                    result.steal_cores,
                    result.other_cores,
                    result
                        .by_method
                        .iter()
                        .map(|(method, m)| format!(
                            "\n    {method:<6} p50 {:>6.2} ms  p99 {:>6.2} ms",
                            m.p50_us / 1e3,
                            m.p99_us / 1e3
                        ))
                        .collect::<String>(),
                    if result.transport_errors + result.unexpected > 0 {
                        format!(
                            "  ({} transport errors, {} unexpected: {})",
                            result.transport_errors,
                            result.unexpected,
                            result.unexpected_sample.as_deref().unwrap_or("")
                        )
                    } else {
                        String::new()
                    }
                );
                runs.push(Run {
                    round,
                    workload,
                    server: server.label.clone(),
                    result,
                });
            }
        }
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
async fn one_run(
    server: &mut Server,
    seed: Arc<seed::Seed>,
    workload: Workload,
    duration: Duration,
    settings: &Settings,
    ticks: f64,
    created: Created,
    salt: u64,
) -> anyhow::Result<RunResult> {
    if !server.alive() {
        bail!(
            "{} is not running any more: {}",
            server.label,
            server.stderr_tail()
        );
    }
    Ok(load::run(RunSpec {
        workload,
        addr: server.addr,
        pid: server.pid(),
        database_process: (server.label == "postgres").then_some("postgres"),
        ceiling: server.label == "ceiling",
        seed,
        connections: settings.connections,
        duration,
        created,
        seed_value: 0x0bad_5eed ^ salt.wrapping_mul(0x9e37_79b9),
        ticks,
    })
    .await)
}

fn write_results(dir: &Path, markdown: &str, json: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("latest.md"), markdown)?;
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(json)? + "\n",
    )?;
    Ok(())
}
