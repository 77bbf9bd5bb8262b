//! The workloads and the closed-loop load generator: C connections (64 by default), each a
//! task on the driver's single-threaded runtime, each sending its next request as soon as the
//! previous answer is read, for a fixed time. Per run it records every request's latency,
//! the statuses, transport errors, and the server's CPU time and resident memory.
//!
//! | workload | requests |
//! |---|---|
//! | W1 | `GET /groups/{g}/integrations/{TYPE}` on a random project and seeded type |
//! | W2 | `GET /groups/{g}/integrations` (the list) on a random project |
//! | W3 | 75% W1's GET, 10% W4's PUT, 10% POST of a non-seeded type on a random project (200, or 409 when it is already there), 5% DELETE of one this target created (204; 404 when none is left to delete and a random one is tried) |
//! | W4 | `PUT /groups/{g}/integrations/{TYPE}` (a durable write) |
//! | W5 | W1's GET with a wrong password (401) |
//!
//! The ceiling gets the very same requests (Digest headers included, computed on a fixed
//! nonce since it never challenges) and answers 200 to all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_integrations::domain::integration::IntegrationType;
use serde::Serialize;
use tokio::sync::Barrier;

use super::client::{Conn, DigestState, Response};
use super::seed::Seed;
use super::server;
use super::spec::{self, Rng, CHURN, SEEDED};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Workload {
    /// Authenticated GET of one integration.
    W1,
    /// Authenticated GET of a project's list.
    W2,
    /// 75% GET, 10% PUT, 10% POST, 5% DELETE.
    W3,
    /// Durable writes (PUT).
    W4,
    /// Wrong password (the 401 path).
    W5,
}

impl Workload {
    /// Every workload, in order.
    pub const ALL: [Self; 5] = [Self::W1, Self::W2, Self::W3, Self::W4, Self::W5];

    /// What it does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::W1 => "GET one integration",
            Self::W2 => "GET list",
            Self::W3 => "75% GET / 10% PUT / 10% POST / 5% DELETE",
            Self::W4 => "PUT (durable write)",
            Self::W5 => "wrong password (401)",
        }
    }

    /// Parses `W1`..`W5` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|w| format!("{w:?}").eq_ignore_ascii_case(text.trim()))
    }
}

/// What one run needs.
pub struct RunSpec {
    /// The workload.
    pub workload: Workload,
    /// Where to send it.
    pub addr: SocketAddr,
    /// The server's process, for CPU time and memory.
    pub pid: u32,
    /// Processes of this name work for the server (`postgres`): their CPU is counted apart.
    pub database_process: Option<&'static str>,
    /// True for the ceiling (everything expects 200).
    pub ceiling: bool,
    /// The seeded database's projects and key.
    pub seed: Arc<Seed>,
    /// Concurrent connections.
    pub connections: usize,
    /// Measured time.
    pub duration: Duration,
    /// Integrations this target's W3 created and has not deleted yet (kept across runs).
    pub created: Arc<Mutex<Vec<(u32, IntegrationType)>>>,
    /// Seed for the random choices.
    pub seed_value: u64,
    /// Clock ticks per second.
    pub ticks: f64,
}

/// The outcome of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    /// Requests completed within the measured time.
    pub requests: u64,
    /// The measured time, in seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub p999_us: f64,
    /// Server CPU time (user + system) per request, µs.
    pub cpu_us_per_request: f64,
    /// Server CPU use, in cores.
    pub server_cores: f64,
    /// The load generator's own CPU time per request, µs.
    pub client_cpu_us_per_request: f64,
    /// CPU time of the database server's processes (PostgreSQL) per request, µs.
    pub database_cpu_us_per_request: f64,
    /// CPU used by processes other than the server, its database and the load generator, in
    /// cores: above a few tenths, the run was disturbed.
    pub other_cores: f64,
    /// CPU spent in interrupts and softirq (the loopback TCP stack), in cores.
    pub irq_cores: f64,
    /// CPU the hypervisor took from this VM while it had work (steal), in cores: the host was
    /// busy with other guests.
    pub steal_cores: f64,
    /// Highest resident set seen during the run (sampled every 50 ms), kB.
    pub peak_rss_kb: u64,
    /// Connection failures, resets, unreadable answers.
    pub transport_errors: u64,
    /// Answers with a status the request did not expect.
    pub unexpected: u64,
    /// One unexpected answer, for the report.
    pub unexpected_sample: Option<String>,
    /// `stale=true` challenges answered with a new nonce.
    pub rechallenges: u64,
    /// Requests by `METHOD status`.
    pub statuses: BTreeMap<String, u64>,
    /// Latency by method, for workloads that mix them: p50 and p99 in µs.
    pub by_method: BTreeMap<String, MethodLatency>,
}

/// One method's latency within a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MethodLatency {
    /// Requests.
    pub requests: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

/// One request about to be sent.
struct Request {
    method: &'static str,
    uri: String,
    body: Option<String>,
    /// For W3's POST: what to remember on success.
    creates: Option<(u32, IntegrationType)>,
    expected: &'static [u16],
}

struct Chooser {
    workload: Workload,
    seed: Arc<Seed>,
    created: Arc<Mutex<Vec<(u32, IntegrationType)>>>,
    rng: Rng,
}

impl Chooser {
    fn next(&mut self) -> Request {
        match self.workload {
            Workload::W1 | Workload::W5 => self.get_one(),
            Workload::W2 => {
                let project = self.project();
                Request {
                    method: "GET",
                    uri: spec::path(&self.seed.groups[project as usize], None),
                    body: None,
                    creates: None,
                    expected: &[200],
                }
            }
            Workload::W3 => match self.rng.below(100) {
                0..75 => self.get_one(),
                75..85 => self.put(),
                85..95 => self.post(),
                _ => self.delete(),
            },
            Workload::W4 => self.put(),
        }
    }

    fn project(&mut self) -> u32 {
        self.rng.below(self.seed.groups.len()) as u32
    }

    fn get_one(&mut self) -> Request {
        let project = self.project();
        let kind = SEEDED[self.rng.below(SEEDED.len())];
        Request {
            method: "GET",
            uri: spec::path(&self.seed.groups[project as usize], Some(kind)),
            body: None,
            creates: None,
            expected: if self.workload == Workload::W5 {
                &[401]
            } else {
                &[200]
            },
        }
    }

    fn put(&mut self) -> Request {
        let project = self.project();
        let kind = SEEDED[self.rng.below(SEEDED.len())];
        Request {
            method: "PUT",
            uri: spec::path(&self.seed.groups[project as usize], Some(kind)),
            body: Some(spec::body(kind, self.rng.next_u64())),
            creates: None,
            expected: &[200],
        }
    }

    fn post(&mut self) -> Request {
        let project = self.project();
        let kind = CHURN[self.rng.below(CHURN.len())];
        Request {
            method: "POST",
            uri: spec::path(&self.seed.groups[project as usize], Some(kind)),
            body: Some(spec::body(kind, self.rng.next_u64())),
            creates: Some((project, kind)),
            expected: &[200, 409],
        }
    }

    fn delete(&mut self) -> Request {
        let taken = self.created.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (project, kind) =
            taken.unwrap_or_else(|| (self.project(), CHURN[self.rng.below(CHURN.len())]));
        Request {
            method: "DELETE",
            uri: spec::path(&self.seed.groups[project as usize], Some(kind)),
            body: None,
            creates: None,
            expected: &[204, 404],
        }
    }
}

/// What one connection measured.
#[derive(Default)]
struct ConnStats {
    latencies_ns: Vec<u64>,
    /// The method of each request of `latencies_ns`.
    methods: Vec<&'static str>,
    transport_errors: u64,
    unexpected: u64,
    unexpected_sample: Option<String>,
    rechallenges: u64,
    statuses: BTreeMap<String, u64>,
}

/// A connection with its Digest state, past the first challenge.
struct Session {
    conn: Conn,
    digest: DigestState,
}

/// The nonce used with the ceiling, which never challenges.
const CEILING_NONCE: &str = "ceilingceilingceilingceilingceilingceil0";

async fn open_session(spec: &RunSpec, index: usize) -> std::io::Result<(Session, Option<String>)> {
    let mut conn = Conn::connect(spec.addr).await?;
    let password = if spec.workload == Workload::W5 {
        "00000000-0000-4000-8000-000000000000"
    } else {
        spec.seed.private_key.as_str()
    };
    let cnonce = format!(
        "{:016x}",
        spec.seed_value ^ (index as u64).wrapping_mul(0x9e37)
    );
    let mut digest = DigestState::new(&spec.seed.public_key, password, cnonce);
    // The first request goes out without credentials, like curl's: the answer is the challenge.
    let uri = spec::path(&spec.seed.groups[index % spec.seed.groups.len()], None);
    let response = conn.send("GET", &uri, None, None).await?;
    let mut problem = None;
    match response.challenge.as_deref() {
        Some(challenge) if response.status == 401 => {
            if digest.take_challenge(challenge).is_none() {
                problem = Some(format!("not a Digest challenge: {challenge}"));
            }
        }
        _ if spec.ceiling => digest.set_nonce(CEILING_NONCE),
        _ => {
            problem = Some(format!(
                "the first request got {} instead of a challenge",
                response.status
            ));
        }
    }
    Ok((Session { conn, digest }, problem))
}

async fn connection(spec: Arc<RunSpec>, index: usize, barrier: Arc<Barrier>) -> ConnStats {
    let mut stats = ConnStats {
        latencies_ns: Vec::with_capacity(16 * 1024),
        ..ConnStats::default()
    };
    let mut chooser = Chooser {
        workload: spec.workload,
        seed: Arc::clone(&spec.seed),
        created: Arc::clone(&spec.created),
        rng: Rng::new(spec.seed_value ^ ((index as u64 + 1) << 32)),
    };
    let mut session = match open_session(&spec, index).await {
        Ok((session, problem)) => {
            if let Some(problem) = problem {
                stats.unexpected += 1;
                stats.unexpected_sample.get_or_insert(problem);
            }
            Some(session)
        }
        Err(err) => {
            stats.transport_errors += 1;
            stats
                .unexpected_sample
                .get_or_insert(format!("connect: {err}"));
            None
        }
    };
    barrier.wait().await;
    let deadline = Instant::now() + spec.duration;
    while Instant::now() < deadline {
        let Some(current) = session.as_mut() else {
            match open_session(&spec, index).await {
                Ok((s, _)) => session = Some(s),
                Err(_) => {
                    stats.transport_errors += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            continue;
        };
        let request = chooser.next();
        let started = Instant::now();
        let outcome = send_answering_stale(current, &request, &mut stats).await;
        let finished = Instant::now();
        match outcome {
            Ok(response) => {
                if finished > deadline {
                    break;
                }
                stats
                    .latencies_ns
                    .push(u64::try_from((finished - started).as_nanos()).unwrap_or(u64::MAX));
                stats.methods.push(request.method);
                *stats
                    .statuses
                    .entry(format!("{} {}", request.method, response.status))
                    .or_insert(0) += 1;
                let ok = if spec.ceiling {
                    response.status == 200
                } else {
                    request.expected.contains(&response.status)
                };
                if !ok {
                    stats.unexpected += 1;
                    if stats.unexpected_sample.is_none() {
                        let body = String::from_utf8_lossy(current.conn.body(&response));
                        stats.unexpected_sample = Some(format!(
                            "{} {} -> {}: {}",
                            request.method,
                            request.uri,
                            response.status,
                            body.chars().take(300).collect::<String>()
                        ));
                    }
                } else if let (Some(created), 200) = (request.creates, response.status) {
                    spec.created
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(created);
                }
                if response.close {
                    session = None;
                }
            }
            Err(err) => {
                if finished <= deadline {
                    stats.transport_errors += 1;
                    stats
                        .unexpected_sample
                        .get_or_insert(format!("{} {}: {err}", request.method, request.uri));
                }
                session = None;
            }
        }
    }
    stats
}

/// Sends a request; on `401` with `stale=true`, takes the new nonce and sends it again.
async fn send_answering_stale(
    session: &mut Session,
    request: &Request,
    stats: &mut ConnStats,
) -> std::io::Result<Response> {
    let mut attempts = 0;
    loop {
        let response = session
            .conn
            .send(
                request.method,
                &request.uri,
                Some(&mut session.digest),
                request.body.as_deref().map(str::as_bytes),
            )
            .await?;
        attempts += 1;
        if response.status == 401 && attempts < 3 {
            if let Some(challenge) = &response.challenge {
                let mut fresh = session.digest.clone();
                if fresh.take_challenge(challenge) == Some(true) {
                    session.digest = fresh;
                    stats.rechallenges += 1;
                    continue;
                }
            }
        }
        return Ok(response);
    }
}

/// Runs one workload against one server for `spec.duration`.
pub async fn run(spec: RunSpec) -> RunResult {
    let spec = Arc::new(spec);
    let barrier = Arc::new(Barrier::new(spec.connections + 1));
    let mut tasks = Vec::with_capacity(spec.connections);
    for index in 0..spec.connections {
        tasks.push(tokio::spawn(connection(
            Arc::clone(&spec),
            index,
            Arc::clone(&barrier),
        )));
    }
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = spec.pid;
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(server::status_kb(pid, "VmRSS").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak.max(server::status_kb(pid, "VmRSS").unwrap_or(0))
        })
    };
    barrier.wait().await;
    let started = Instant::now();
    let server_before = server::cpu_ticks(pid).unwrap_or(0);
    let client_before = server::own_cpu_ticks().unwrap_or(0);
    let machine_before = server::MachineTicks::read().unwrap_or_default();
    let database_before = spec.database_process.map_or(0, server::cpu_ticks_named);
    let mut all = ConnStats::default();
    for task in tasks {
        let Ok(stats) = task.await else {
            all.transport_errors += 1;
            continue;
        };
        all.latencies_ns.extend_from_slice(&stats.latencies_ns);
        all.methods.extend_from_slice(&stats.methods);
        all.transport_errors += stats.transport_errors;
        all.unexpected += stats.unexpected;
        all.rechallenges += stats.rechallenges;
        if all.unexpected_sample.is_none() {
            all.unexpected_sample = stats.unexpected_sample;
        }
        for (status, count) in stats.statuses {
            *all.statuses.entry(status).or_insert(0) += count;
        }
    }
    let server_after = server::cpu_ticks(pid).unwrap_or(0);
    let client_after = server::own_cpu_ticks().unwrap_or(0);
    let machine = server::MachineTicks::read()
        .unwrap_or_default()
        .since(machine_before);
    let database_after = spec.database_process.map_or(0, server::cpu_ticks_named);
    let wall = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let peak_rss_kb = sampler.await.unwrap_or(0);
    let seconds = spec.duration.as_secs_f64();
    let requests = all.latencies_ns.len() as u64;
    let per_request = |ticks: u64| {
        if requests == 0 {
            0.0
        } else {
            ticks as f64 / spec.ticks * 1e6 / requests as f64
        }
    };
    let server_ticks = server_after.saturating_sub(server_before);
    let client_ticks = client_after.saturating_sub(client_before);
    let database_ticks = database_after.saturating_sub(database_before);
    let other_ticks = machine
        .processes
        .saturating_sub(server_ticks + client_ticks + database_ticks);
    let by_method = by_method(&all.latencies_ns, &all.methods);
    let mut latencies = all.latencies_ns;
    RunResult {
        requests,
        seconds,
        rps: requests as f64 / seconds,
        p50_us: percentile(&mut latencies, 0.50) / 1e3,
        p99_us: percentile(&mut latencies, 0.99) / 1e3,
        p999_us: percentile(&mut latencies, 0.999) / 1e3,
        cpu_us_per_request: per_request(server_ticks),
        server_cores: server_ticks as f64 / spec.ticks / wall,
        client_cpu_us_per_request: per_request(client_ticks),
        database_cpu_us_per_request: per_request(database_ticks),
        other_cores: other_ticks as f64 / spec.ticks / wall,
        irq_cores: machine.interrupts as f64 / spec.ticks / wall,
        steal_cores: machine.steal as f64 / spec.ticks / wall,
        peak_rss_kb,
        transport_errors: all.transport_errors,
        unexpected: all.unexpected,
        unexpected_sample: all.unexpected_sample,
        rechallenges: all.rechallenges,
        statuses: all.statuses,
        by_method,
    }
}

/// Latency by method, when there is more than one.
fn by_method(latencies: &[u64], methods: &[&'static str]) -> BTreeMap<String, MethodLatency> {
    let mut split: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (&latency, &method) in latencies.iter().zip(methods) {
        split.entry(method).or_default().push(latency);
    }
    if split.len() < 2 {
        return BTreeMap::new();
    }
    split
        .into_iter()
        .map(|(method, mut values)| {
            let latency = MethodLatency {
                requests: values.len() as u64,
                p50_us: percentile(&mut values, 0.50) / 1e3,
                p99_us: percentile(&mut values, 0.99) / 1e3,
            };
            (method.to_owned(), latency)
        })
        .collect()
}

/// The `q` quantile (nearest rank) in ns; 0 for no samples.
fn percentile(values: &mut [u64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, value, _) = values.select_nth_unstable(rank);
    *value as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut values: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut values, 0.5), 50.0);
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.99), 0.0);
    }

    #[test]
    fn workloads_parse_by_name() {
        assert_eq!(Workload::parse("w3"), Some(Workload::W3));
        assert_eq!(Workload::parse("W9"), None);
    }
}
