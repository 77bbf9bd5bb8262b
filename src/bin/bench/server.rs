//! The servers under test as child processes: spawning `atlas-integrations serve` and the
//! ceiling, waiting for the first 200 on `/health` (the cold start), stopping them, and what
//! `/proc` says about them (CPU time, resident memory).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::client::Conn;
use super::seed::Seeded;

/// A running server.
pub struct Server {
    /// A short name (`ceiling`, `sqlite`, `sqlite-1`, `postgres`).
    pub label: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process.
    child: Child,
    /// Its stderr, for error messages.
    stderr_path: PathBuf,
}

/// A free port on 127.0.0.1 (bound then released; the server binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Server {
    /// Starts `atlas-integrations serve` on `seeded`'s database and waits until `/health`
    /// answers 200; also returns the time from spawn to that first 200.
    pub async fn ours(
        binary: &Path,
        seeded: &Seeded,
        label: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<(Self, Duration)> {
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&seeded.dir)
            .arg("--auth-failure-limit")
            .arg("0");
        if let Some(url) = &seeded.database_url {
            command.arg("--database-url").arg(url);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ATLAS_INTEGRATIONS_") {
                command.env_remove(name);
            }
        }
        command.env("RUST_LOG", "warn");
        for (name, value) in extra_env {
            command.env(name, value);
        }
        Self::spawn(command, label, port, &seeded.dir).await
    }

    /// Starts the ceiling and waits until it answers.
    pub async fn ceiling(binary: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(binary);
        command.arg(port.to_string());
        Ok(Self::spawn(command, "ceiling", port, log_dir).await?.0)
    }

    async fn spawn(
        mut command: Command,
        label: &str,
        port: u16,
        log_dir: &Path,
    ) -> anyhow::Result<(Self, Duration)> {
        std::fs::create_dir_all(log_dir)?;
        let stdout_path = log_dir.join(format!("{label}.stdout.log"));
        let stderr_path = log_dir.join(format!("{label}.stderr.log"));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {label} ({command:?})"))?;
        let mut server = Self {
            label: label.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stderr_path,
        };
        match server.wait_healthy(started).await {
            Ok(elapsed) => Ok((server, elapsed)),
            Err(err) => {
                server.stop().await;
                Err(err)
            }
        }
    }

    /// Polls `/health` every millisecond until it answers 200 (30 s at most).
    async fn wait_healthy(&mut self, started: Instant) -> anyhow::Result<Duration> {
        let give_up = started + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before answering: {}",
                    self.label,
                    self.stderr_tail()
                );
            }
            if let Ok(mut conn) = Conn::connect(self.addr).await {
                if let Ok(response) = conn.send("GET", "/health", None, None).await {
                    if response.status == 200 {
                        return Ok(started.elapsed());
                    }
                }
            }
            if Instant::now() > give_up {
                bail!(
                    "{} did not answer 200 on /health within 30 s: {}",
                    self.label,
                    self.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The end of its stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].trim().to_owned()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 5 s.
    pub async fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    /// A server left running when the driver fails is killed, not orphaned.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after it.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime) are the 12th and 13th after the name.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("unexpected /proc/PID/stat")
    };
    Ok(field(11)? + field(12)?)
}

/// CPU time of the whole machine, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// user + nice + system (guest time is already in user).
    pub processes: u64,
    /// irq + softirq: loopback TCP is processed in softirq, which `/proc/PID/stat` does not
    /// charge to the process.
    pub interrupts: u64,
    /// Time the hypervisor gave this VM's CPUs to other guests while they had work.
    pub steal: u64,
}

impl MachineTicks {
    /// Reads the first line of `/proc/stat`.
    pub fn read() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
        Self::parse(&text).context("unexpected /proc/stat")
    }

    /// The `cpu` line of a `/proc/stat` text: user nice system idle iowait irq softirq steal.
    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().next().filter(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(Self {
            processes: at(0) + at(1) + at(2),
            interrupts: at(5) + at(6),
            steal: at(7),
        })
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            processes: self.processes.saturating_sub(earlier.processes),
            interrupts: self.interrupts.saturating_sub(earlier.interrupts),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// Waits (up to `patience`) until the machine is quiet: less than `max_cores` of CPU busy
/// over a 300 ms window. Returns the last busy figure, in cores.
pub async fn wait_quiet(max_cores: f64, patience: Duration, ticks: f64) -> f64 {
    let give_up = Instant::now() + patience;
    loop {
        let before = MachineTicks::read().unwrap_or_default().processes;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = MachineTicks::read().unwrap_or_default().processes;
        let cores = after.saturating_sub(before) as f64 / ticks / started.elapsed().as_secs_f64();
        if cores <= max_cores || Instant::now() >= give_up {
            return cores;
        }
    }
}

/// CPU time in clock ticks of every process named `name` (e.g. `postgres`: the database
/// server and its backends, which work for the server under test).
pub fn cpu_ticks_named(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(comm, _)| comm);
        if comm == Some(name) {
            total += cpu_ticks(pid).unwrap_or(0);
        }
    }
    total
}

/// This process's CPU time in clock ticks.
pub fn own_cpu_ticks() -> anyhow::Result<u64> {
    cpu_ticks(std::process::id())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when that fails).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in kB.
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The size of `binary` once stripped (a copy is stripped), or why it is unknown.
pub fn stripped_size(binary: &Path, scratch: &Path) -> Result<u64, String> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "binary".to_owned());
    std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let copy = scratch.join(format!("{name}.stripped"));
    std::fs::copy(binary, &copy).map_err(|e| format!("cannot copy {}: {e}", binary.display()))?;
    let status = Command::new("strip").arg(&copy).status();
    let result = match status {
        Ok(s) if s.success() => std::fs::metadata(&copy)
            .map(|m| m.len())
            .map_err(|e| e.to_string()),
        Ok(s) => Err(format!("strip failed ({s})")),
        Err(e) => Err(format!("`strip` is not available ({e})")),
    };
    let _ = std::fs::remove_file(&copy);
    result
}

#[cfg(test)]
mod tests {
    use super::MachineTicks;

    #[test]
    fn proc_stat_splits_processes_interrupts_and_steal() {
        let text = "cpu  435401 7 142900 380094 4989 11 60598 4246 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let ticks = MachineTicks::parse(text).expect("a cpu line");
        assert_eq!(
            ticks,
            MachineTicks {
                processes: 435_401 + 7 + 142_900,
                interrupts: 11 + 60_598,
                steal: 4_246,
            }
        );
        let later = MachineTicks {
            processes: ticks.processes + 10,
            interrupts: ticks.interrupts + 2,
            steal: ticks.steal + 3,
        };
        assert_eq!(
            later.since(ticks),
            MachineTicks {
                processes: 10,
                interrupts: 2,
                steal: 3
            }
        );
        assert_eq!(MachineTicks::parse("intr 1 2\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 x 3\n"), None);
    }
}
