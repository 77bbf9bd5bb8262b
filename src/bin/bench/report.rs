//! Turning runs into results: the machine's description, medians with min–max across rounds,
//! ratios to the ceiling of the same round, the targets with PASS/FAIL, and the
//! markdown and JSON renderings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::load::{RunResult, Workload};

/// Where and on what the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub nproc: usize,
    /// `/proc/cpuinfo`'s first `model name`.
    pub cpu: String,
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `/etc/os-release`'s `PRETTY_NAME`.
    pub os: String,
    /// UTC date and time of the run.
    pub date: String,
    /// The checked-out commit (read from `.git`, without running git).
    pub commit: String,
    /// `rustc --version`.
    pub rustc: String,
    /// Median time of a 4 KiB write + fdatasync at the end of a file in the data directory, ms.
    pub fsync_append_ms: f64,
    /// The same, overwriting the file's first block, ms.
    pub fsync_overwrite_ms: f64,
    /// PostgreSQL's `version()`, when it was reachable.
    pub postgres: Option<String>,
}

impl Machine {
    /// Describes this machine; `data_dir` is where the databases live (for the fsync time).
    pub fn describe(data_dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let os = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(|| "unknown".to_owned(), |v| v.trim_matches('"').to_owned());
        let fsync = fsync_ms(data_dir);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            memory_mib: memory_kb / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
            os,
            date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .unwrap_or_else(|| "unknown".to_owned()),
            commit: git_commit().unwrap_or_else(|| "unknown".to_owned()),
            rustc: command_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned()),
            fsync_append_ms: fsync.map_or(f64::NAN, |f| f.0),
            fsync_overwrite_ms: fsync.map_or(f64::NAN, |f| f.1),
            postgres: None,
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commit `HEAD` points at, from the `.git` directory above the working directory.
fn git_commit() -> Option<String> {
    let cwd = std::env::current_dir().ok()?;
    let git = cwd
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|d| d.is_dir())?;
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Some(head.to_owned());
    };
    if let Ok(commit) = std::fs::read_to_string(git.join(reference)) {
        return Some(format!("{} ({reference})", commit.trim()));
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (commit, name) = line.split_once(' ')?;
        (name == reference).then(|| format!("{commit} ({reference})"))
    })
}

/// Median time (ms) of 30 4 KiB writes each followed by fdatasync in `dir`: `(appending,
/// overwriting)`. Appending grows the file, so the filesystem commits its journal too;
/// overwriting allocated blocks (what SQLite's reused WAL mostly does) only flushes the data.
fn fsync_ms(dir: &Path) -> Option<(f64, f64)> {
    use std::io::{Seek, SeekFrom, Write};
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).ok()?;
    let block = [0x5au8; 4096];
    let time = |file: &mut std::fs::File, overwrite: bool| -> Option<f64> {
        let mut times = Vec::new();
        for _ in 0..30 {
            if overwrite {
                file.seek(SeekFrom::Start(0)).ok()?;
            }
            let started = std::time::Instant::now();
            file.write_all(&block).ok()?;
            file.sync_data().ok()?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Some(median(&times))
    };
    let append = time(&mut file, false);
    let overwrite = time(&mut file, true);
    let _ = std::fs::remove_file(&path);
    Some((append?, overwrite?))
}

/// Median (mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// A median with its range.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    /// The median.
    pub median: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[f64]) -> Self {
        let (min, max) = min_max(values);
        Self {
            median: median(values),
            min,
            max,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Round number, from 1.
    pub round: usize,
    /// The workload.
    pub workload: Workload,
    /// The server (`ceiling`, `sqlite`, `sqlite-1`, `postgres`).
    pub server: String,
    /// What it measured.
    #[serde(flatten)]
    pub result: RunResult,
}

/// One workload on one server, across rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The workload.
    pub workload: Workload,
    /// The server.
    pub server: String,
    /// Requests per second.
    pub rps: Spread,
    /// Median latency, µs (median over rounds).
    pub p50_us: Spread,
    /// 99th percentile, µs.
    pub p99_us: Spread,
    /// Server CPU per request, µs.
    pub cpu_us_per_request: Spread,
    /// Highest sampled RSS over the rounds, kB.
    pub peak_rss_kb: u64,
    /// Ratio of requests/s to the ceiling's in the same round (`None` for the ceiling).
    pub ratio: Option<Spread>,
    /// The load generator's CPU per request, µs.
    pub client_cpu_us_per_request: f64,
    /// The database server's CPU per request (PostgreSQL), µs.
    pub database_cpu_us_per_request: f64,
    /// The most CPU other processes used during one of these runs, in cores.
    pub other_cores_max: f64,
    /// The most CPU the hypervisor took from this VM (steal) during one of these runs, in cores.
    pub steal_cores_max: f64,
    /// Requests by status over all rounds.
    pub statuses: BTreeMap<String, u64>,
    /// The target for this row, if the issue sets one.
    pub target: Option<String>,
    /// Whether the target is met.
    pub pass: Option<bool>,
}

/// Groups runs into rows, in the order they first ran.
pub fn rows(runs: &[Run]) -> Vec<Row> {
    let mut keys: Vec<(Workload, String)> = Vec::new();
    for run in runs {
        let key = (run.workload, run.server.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|(w, _)| *w);
    keys.into_iter()
        .map(|(workload, server)| {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == workload && r.server == server)
                .collect();
            let values = |f: fn(&RunResult) -> f64| -> Vec<f64> {
                mine.iter().map(|r| f(&r.result)).collect()
            };
            let ratio = (server != "ceiling").then(|| {
                let ratios: Vec<f64> = mine
                    .iter()
                    .filter_map(|r| {
                        let ceiling = runs.iter().find(|c| {
                            c.round == r.round && c.workload == workload && c.server == "ceiling"
                        })?;
                        (ceiling.result.rps > 0.0).then(|| r.result.rps / ceiling.result.rps)
                    })
                    .collect();
                Spread::of(&ratios)
            });
            let mut statuses = BTreeMap::new();
            for run in &mine {
                for (status, count) in &run.result.statuses {
                    *statuses.entry(status.clone()).or_insert(0) += count;
                }
            }
            Row {
                workload,
                rps: Spread::of(&values(|r| r.rps)),
                p50_us: Spread::of(&values(|r| r.p50_us)),
                p99_us: Spread::of(&values(|r| r.p99_us)),
                cpu_us_per_request: Spread::of(&values(|r| r.cpu_us_per_request)),
                peak_rss_kb: mine.iter().map(|r| r.result.peak_rss_kb).max().unwrap_or(0),
                ratio,
                client_cpu_us_per_request: median(&values(|r| r.client_cpu_us_per_request)),
                database_cpu_us_per_request: median(&values(|r| r.database_cpu_us_per_request)),
                other_cores_max: values(|r| r.other_cores).into_iter().fold(0.0, f64::max),
                steal_cores_max: values(|r| r.steal_cores).into_iter().fold(0.0, f64::max),
                statuses,
                server,
                target: None,
                pass: None,
            }
        })
        .collect()
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The figure measured, as text.
    pub figure: String,
    /// The threshold, as text.
    pub threshold: String,
    /// Met or not (`None`: not measured in this run).
    pub pass: Option<bool>,
}

/// Everything measured besides the rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extras {
    /// Spawn to first 200 on `/health`, per server label, ms.
    pub cold_start_ms: BTreeMap<String, Vec<f64>>,
    /// VmRSS after start, before any load, per server, kB.
    pub idle_rss_kb: BTreeMap<String, u64>,
    /// VmHWM at the end, per server, kB.
    pub hwm_kb: BTreeMap<String, u64>,
    /// Stripped binary sizes (bytes) or why unknown.
    pub stripped_bytes: BTreeMap<String, Result<u64, String>>,
    /// Seeding time when this run seeded, s, per database.
    pub seed_seconds: BTreeMap<String, f64>,
    /// Notes (skipped parts, reused data).
    pub notes: Vec<String>,
}

/// The settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Seeded projects.
    pub projects: usize,
    /// Rounds.
    pub rounds: usize,
    /// Seconds per run.
    pub seconds: f64,
    /// Concurrent connections.
    pub connections: usize,
    /// `--quick`.
    pub quick: bool,
    /// The command line.
    pub command: String,
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn row<'a>(rows: &'a [Row], workload: Workload, server: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.server == server)
}

fn ratio_target(
    rows: &mut [Row],
    targets: &mut Vec<Target>,
    workload: Workload,
    server: &str,
    min_ratio: f64,
    label: &str,
) {
    let Some(r) = rows
        .iter_mut()
        .find(|r| r.workload == workload && r.server == server)
    else {
        targets.push(Target {
            name: label.to_owned(),
            figure: "not run".to_owned(),
            threshold: format!("≥ {min_ratio}× ceiling"),
            pass: None,
        });
        return;
    };
    let ratio = r.ratio.map_or(f64::NAN, |s| s.median);
    let pass = ratio >= min_ratio;
    r.target = Some(format!("≥ {min_ratio}×"));
    r.pass = Some(pass);
    targets.push(Target {
        name: label.to_owned(),
        figure: format!("{ratio:.3}× ({} req/s)", thousands(r.rps.median)),
        threshold: format!("≥ {min_ratio}× ceiling"),
        pass: Some(pass),
    });
}

/// Judges the targets, marking the rows they concern.
pub fn judge(rows: &mut [Row], extras: &Extras, settings: &Settings) -> Vec<Target> {
    let n = thousands(settings.projects as f64);
    let mut targets = Vec::new();
    ratio_target(
        rows,
        &mut targets,
        Workload::W1,
        "sqlite",
        0.5,
        "W1 req/s (SQLite)",
    );
    if let Some(r) = rows
        .iter_mut()
        .find(|r| r.workload == Workload::W1 && r.server == "sqlite")
    {
        let p99_ms = r.p99_us.median / 1e3;
        let pass = p99_ms <= 2.0;
        let both = r.pass.unwrap_or(false) && pass;
        r.target = Some("≥ 0.5×, p99 ≤ 2 ms".to_owned());
        r.pass = Some(both);
        targets.push(Target {
            name: "W1 p99 (SQLite)".to_owned(),
            figure: format!("{p99_ms:.2} ms"),
            threshold: "≤ 2 ms".to_owned(),
            pass: Some(pass),
        });
    }
    ratio_target(
        rows,
        &mut targets,
        Workload::W3,
        "sqlite",
        0.4,
        "W3 req/s (SQLite)",
    );
    ratio_target(
        rows,
        &mut targets,
        Workload::W5,
        "sqlite",
        0.6,
        "W5 req/s (SQLite)",
    );
    match rows
        .iter_mut()
        .find(|r| r.workload == Workload::W4 && r.server == "sqlite")
    {
        Some(r) => {
            let pass = r.rps.median >= 4000.0;
            r.target = Some("≥ 4,000/s".to_owned());
            r.pass = Some(pass);
            targets.push(Target {
                name: "W4 durable writes/s (SQLite, synchronous=FULL)".to_owned(),
                figure: format!("{}/s", thousands(r.rps.median)),
                threshold: "≥ 4,000/s".to_owned(),
                pass: Some(pass),
            });
        }
        None => targets.push(Target {
            name: "W4 durable writes/s (SQLite, synchronous=FULL)".to_owned(),
            figure: "not run".to_owned(),
            threshold: "≥ 4,000/s".to_owned(),
            pass: None,
        }),
    }
    ratio_target(
        rows,
        &mut targets,
        Workload::W1,
        "postgres",
        0.3,
        "W1 req/s (PostgreSQL)",
    );
    let idle = extras.idle_rss_kb.get("sqlite").copied();
    targets.push(Target {
        name: format!("idle RSS (SQLite, {n} projects)"),
        figure: idle.map_or_else(
            || "not measured".to_owned(),
            |kb| format!("{:.1} MiB", mib(kb)),
        ),
        threshold: "≤ 20 MiB".to_owned(),
        pass: idle.map(|kb| mib(kb) <= 20.0),
    });
    let w3 = row(rows, Workload::W3, "sqlite").map(|r| r.peak_rss_kb);
    targets.push(Target {
        name: format!("peak RSS under W3 (SQLite, {n} projects)"),
        figure: w3.map_or_else(|| "not run".to_owned(), |kb| format!("{:.1} MiB", mib(kb))),
        threshold: "≤ 64 MiB".to_owned(),
        pass: w3.map(|kb| mib(kb) <= 64.0),
    });
    let cold = extras.cold_start_ms.get("sqlite").map(|v| median(v));
    targets.push(Target {
        name: format!("cold start (SQLite, {n} projects, median of 3)"),
        figure: cold.map_or_else(|| "not measured".to_owned(), |ms| format!("{ms:.1} ms")),
        threshold: "≤ 100 ms".to_owned(),
        pass: cold.map(|ms| ms <= 100.0),
    });
    let big = row(rows, Workload::W1, "sqlite").map(|r| r.p99_us.median);
    let one = row(rows, Workload::W1, "sqlite-1").map(|r| r.p99_us.median);
    let (figure, pass) = match (big, one) {
        (Some(big), Some(one)) if one > 0.0 => (
            format!(
                "{:.3}× ({:.2} ms vs {:.2} ms)",
                big / one,
                big / 1e3,
                one / 1e3
            ),
            Some(big / one <= 1.2),
        ),
        _ => ("not run".to_owned(), None),
    };
    targets.push(Target {
        name: format!("W1 p99 with {n} projects vs 1 project"),
        figure,
        threshold: "≤ 1.2×".to_owned(),
        pass,
    });
    targets
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "—",
    }
}

fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", value.round());
    let (sign, digits) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// The main results table.
pub fn table(rows: &[Row], judged: bool) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | server | req/s median [min–max] | p50 ms | p99 ms | server CPU µs/req | peak RSS MiB | × ceiling [min–max] | target | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = r.ratio.map_or_else(
            || "1".to_owned(),
            |s| format!("{:.2} [{:.2}–{:.2}]", s.median, s.min, s.max),
        );
        let _ = writeln!(
            out,
            "| {w:?} {desc} | {server} | {rps} [{lo}–{hi}] | {p50:.2} | {p99:.2} | {cpu:.1} | {rss:.1} | {ratio} | {target} | {result} |",
            w = r.workload,
            desc = r.workload.describe(),
            server = r.server,
            rps = thousands(r.rps.median),
            lo = thousands(r.rps.min),
            hi = thousands(r.rps.max),
            p50 = r.p50_us.median / 1e3,
            p99 = r.p99_us.median / 1e3,
            cpu = r.cpu_us_per_request.median,
            rss = mib(r.peak_rss_kb),
            target = if judged { r.target.as_deref().unwrap_or("") } else { "" },
            result = if judged && r.target.is_some() { verdict(r.pass) } else { "" },
        );
    }
    out
}

/// The targets table.
pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | threshold | result |\n|---|---|---|---|\n");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.figure,
            t.threshold,
            verdict(t.pass)
        );
    }
    out
}

fn extras_table(extras: &Extras) -> String {
    let mut out = String::from("| measure | server | value |\n|---|---|---|\n");
    for (server, times) in &extras.cold_start_ms {
        let spread = Spread::of(times);
        let _ = writeln!(
            out,
            "| cold start (spawn → first 200 on /health), median [min–max] of {} | {server} | {:.1} ms [{:.1}–{:.1}] |",
            times.len(),
            spread.median,
            spread.min,
            spread.max
        );
    }
    for (server, kb) in &extras.idle_rss_kb {
        let _ = writeln!(
            out,
            "| idle RSS after start | {server} | {:.1} MiB |",
            mib(*kb)
        );
    }
    for (server, kb) in &extras.hwm_kb {
        let _ = writeln!(out, "| VmHWM at the end | {server} | {:.1} MiB |", mib(*kb));
    }
    for (binary, size) in &extras.stripped_bytes {
        let value = match size {
            Ok(bytes) => format!(
                "{:.2} MiB ({} bytes)",
                *bytes as f64 / 1_048_576.0,
                thousands(*bytes as f64)
            ),
            Err(why) => why.clone(),
        };
        let _ = writeln!(out, "| stripped binary size | {binary} | {value} |");
    }
    for (database, seconds) in &extras.seed_seconds {
        let _ = writeln!(out, "| seeding time | {database} | {seconds:.1} s |");
    }
    out
}

/// The whole markdown report.
pub fn markdown(
    machine: &Machine,
    settings: &Settings,
    rows: &[Row],
    targets: &[Target],
    extras: &Extras,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results\n");
    let _ = writeln!(out, "`{}`\n", settings.command);
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {} MiB RAM, {}, kernel {}; 4 KiB write + fdatasync in the data directory {:.2} ms appending, {:.2} ms overwriting (medians); {}{}.\n",
        machine.nproc,
        machine.cpu,
        machine.memory_mib,
        machine.os,
        machine.kernel,
        machine.fsync_append_ms,
        machine.fsync_overwrite_ms,
        machine.rustc,
        machine
            .postgres
            .as_ref()
            .map(|v| format!("; {v}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "Run: {}, commit {}.\n", machine.date, machine.commit);
    let _ = writeln!(
        out,
        "{} projects × 5 integrations; {} rounds of {} s per workload and server, alternating ceiling / ours; {} connections (HTTP/1.1 keep-alive, Digest MD5 qop=auth, nonce reused with nc rising); medians over rounds with [min–max]; ratios are to the ceiling's run in the same round. `sqlite-1` is the same server on a one-project database.\n",
        thousands(settings.projects as f64),
        settings.rounds,
        settings.seconds,
        settings.connections
    );
    out.push_str(&table(rows, !settings.quick));
    let _ = writeln!(
        out,
        "\n- Load generator CPU per request (one thread, the same for every server): {}.",
        rows.iter()
            .map(|r| format!(
                "{:?} {} {:.1} µs",
                r.workload, r.server, r.client_cpu_us_per_request
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for r in rows.iter().filter(|r| r.database_cpu_us_per_request > 0.0) {
        let _ = writeln!(
            out,
            "- {:?} {}: PostgreSQL's own processes used another {:.1} µs of CPU per request (not in the server CPU column).",
            r.workload, r.server, r.database_cpu_us_per_request
        );
    }
    let disturbed: Vec<String> = rows
        .iter()
        .filter(|r| r.other_cores_max > 0.25)
        .map(|r| {
            format!(
                "{:?} {} ({:.2} cores)",
                r.workload, r.server, r.other_cores_max
            )
        })
        .collect();
    if let Some(most) = rows
        .iter()
        .max_by(|a, b| a.steal_cores_max.total_cmp(&b.steal_cores_max))
    {
        let _ = writeln!(
            out,
            "- Steal (CPU the hypervisor gave to other guests while this VM had work): at most {:.2} cores in one run ({:?} {}).",
            most.steal_cores_max, most.workload, most.server
        );
    }
    if disturbed.is_empty() {
        out.push_str("- No run saw more than 0.25 cores used by other processes.\n");
    } else {
        let _ = writeln!(
            out,
            "- Runs disturbed by other processes after two retries (most CPU they used during one run): {}.",
            disturbed.join(", ")
        );
    }
    if !settings.quick {
        out.push_str("\n## Targets\n\n");
        out.push_str(&targets_table(targets));
    }
    out.push_str("\n## Also measured\n\n");
    out.push_str(&extras_table(extras));
    if !extras.notes.is_empty() {
        out.push_str("\n## Notes\n\n");
        for note in &extras.notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

/// The JSON rendering.
pub fn json(
    machine: &Machine,
    settings: &Settings,
    runs: &[Run],
    rows: &[Row],
    targets: &[Target],
    extras: &Extras,
) -> Value {
    json!({
        "machine": machine,
        "settings": settings,
        "summary": rows,
        "targets": if settings.quick { Value::Null } else { json!(targets) },
        "extras": extras,
        "runs": runs,
    })
}

/// Seconds as a duration for display.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
