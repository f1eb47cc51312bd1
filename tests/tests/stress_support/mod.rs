//! Helpers of the stress tests under load (`stress_load.rs`): writers, listeners that check
//! every change as it arrives, memory and CPU sampling of the daemons, flush jobs and point
//! queries.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, flush, rss_kb, wait_for};
use kalam_link::{KalamLinkClient, LiveConnection};
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::live_support::*;
/// Id ranges of concurrent writers into one table or partition never overlap.
pub const WRITER_STRIDE: i64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `KALAM_SOAK_SECS`, when set: how long the soak-capable tests run their load.
pub fn soak() -> Option<Duration> {
    let secs = std::env::var("KALAM_SOAK_SECS").ok()?;
    let secs = secs.trim().parse().unwrap_or_else(|_| panic!("KALAM_SOAK_SECS={secs:?} is not a number of seconds"));
    Some(Duration::from_secs(secs))
}

/// When a writer stops.
#[derive(Clone)]
pub enum Until {
    Rounds(usize),
    Deadline(Instant),
    Stopped(Arc<AtomicBool>),
}

impl Until {
    /// `rounds` rounds by default, `KALAM_SOAK_SECS` from now in soak mode.
    pub fn rounds_or_soak(rounds: usize) -> Until {
        soak().map_or(Until::Rounds(rounds), |d| Until::Deadline(Instant::now() + d))
    }

    pub fn done(&self, round: usize) -> bool {
        match self {
            Until::Rounds(n) => round >= *n,
            Until::Deadline(t) => Instant::now() >= *t,
            Until::Stopped(flag) => flag.load(Ordering::Relaxed),
        }
    }
}

/// Spawns a writer of multi-row INSERTs of `batch` rows `(id, body)` into `table`, ids counting
/// up from `first_id`, each body `body_len` bytes, until `until`; returns the acknowledged
/// ids in commit order.
pub fn spawn_writer(
    client: KalamLinkClient,
    table: &str,
    first_id: i64,
    batch: usize,
    body_len: usize,
    until: Until,
) -> JoinHandle<Vec<i64>> {
    let table = table.to_owned();
    tokio::spawn(async move {
        let pad = "x".repeat(body_len);
        let mut ids = Vec::new();
        let mut round = 0;
        while !until.done(round) {
            let first = first_id + ids.len() as i64;
            let batch_ids = first..first + batch as i64;
            let values: Vec<String> = batch_ids.clone().map(|id| format!("({id}, '{id}:{pad}')")).collect();
            exec(&client, &format!("INSERT INTO {table} (id, body) VALUES {}", values.join(", "))).await;
            ids.extend(batch_ids);
            round += 1;
        }
        ids
    })
}

/// One writer per client (writer `w` from id `w * WRITER_STRIDE + first`), all awaited.
pub async fn run_writers(
    clients: &[KalamLinkClient],
    table: &str,
    first: i64,
    batch: usize,
    until: Until,
) -> Vec<Vec<i64>> {
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(w, c)| spawn_writer(c.clone(), table, w as i64 * WRITER_STRIDE + first, batch, 256, until.clone()))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(join(t).await);
    }
    out
}

pub fn users(prefix: &str, n: usize, cluster: &Cluster) -> Vec<KalamLinkClient> {
    (0..n).map(|i| cluster.client(&format!("{prefix}{i}"))).collect()
}

pub fn mb(kb: u64) -> u64 {
    kb / 1024
}

/// Samples a process's resident memory every 50 ms until stopped; the peak in kB.
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    /// One sample a second, for the soak timeline.
    timeline: Arc<std::sync::Mutex<Vec<u64>>>,
    sampling: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PeakRss {
    pub fn start(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(rss_kb(pid).unwrap_or(0)));
        let sampling = Arc::new(AtomicBool::new(true));
        let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, t, s) = (peak.clone(), timeline.clone(), sampling.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while s.load(Ordering::Relaxed) {
                let Some(rss) = rss_kb(pid) else { break };
                p.fetch_max(rss, Ordering::Relaxed);
                if n.is_multiple_of(20) {
                    t.lock().unwrap_or_else(|e| e.into_inner()).push(rss);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        PeakRss { peak, timeline, sampling, task }
    }

    /// The peak, and one sample a second, in kB.
    pub async fn stop(self) -> (u64, Vec<u64>) {
        self.sampling.store(false, Ordering::Relaxed);
        join(self.task).await;
        let timeline = std::mem::take(&mut *self.timeline.lock().unwrap_or_else(|e| e.into_inner()));
        (self.peak.load(Ordering::Relaxed), timeline)
    }
}

/// CPU time (user + system, all threads) `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The fields after the command name (which may hold spaces), from field 3 (state) on:
    // utime is field 14, stime field 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 1..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    ticks as f64 / per_sec as f64
}

pub const DAEMONS: [&str; 3] = ["kalamd", "kalam-lived", "kalam-flushd"];

pub async fn daemon_pids(cluster: &Cluster) -> Vec<u32> {
    let mut pids = Vec::new();
    for d in DAEMONS {
        pids.push(cluster.running_pid(d).await);
    }
    pids
}

/// Waits until no flush job is new, queued, running or retrying.
pub async fn wait_jobs_idle(client: &KalamLinkClient) {
    wait_for(Duration::from_secs(60), "no active flush job", || async {
        let sql = "SELECT count(*) AS n FROM system.jobs WHERE status IN ('new', 'queued', 'running', 'retrying')";
        let r = client.query(sql).await.ok()?;
        (r.results.last()?.rows.as_ref()?.first()?.get("n")?.as_i64()? == 0).then_some(())
    })
    .await;
}

/// Runs `FLUSH TABLE` and waits for that job to finish; it must complete.
pub async fn flush_and_wait(client: &KalamLinkClient, table: &str) -> String {
    let job_id = flush(client, table).await;
    let job = wait_for(Duration::from_secs(60), &format!("flush job {job_id} finished"), || async {
        let j = kalam_e2e::job(client, &job_id).await;
        matches!(j["status"].as_str(), Some("completed" | "failed" | "cancelled")).then_some(j)
    })
    .await;
    assert_eq!(job["status"], "completed", "flush of {table} during the writes: {job:?}");
    job_id
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Point SELECTs by primary key as `client`, over ids `1..=rows` in a fixed pseudo-random
/// order, until `done`; the sorted latencies.
pub async fn point_selects(client: &KalamLinkClient, rows: i64, done: impl Fn(usize) -> bool) -> Vec<Duration> {
    let mut lat = Vec::new();
    let mut k: i64 = 7;
    while !done(lat.len()) {
        k = (k * 7919 + 13) % rows;
        let id = k + 1;
        let started = Instant::now();
        let resp = exec(client, &format!("SELECT id, body FROM app.kv WHERE id = {id}")).await;
        lat.push(started.elapsed());
        let got = resp.results[0].rows.as_ref().and_then(|r| r.first().map(|r| r["id"].clone()));
        assert_eq!(got, Some(json!(id)), "point SELECT of {id}");
    }
    lat.sort_unstable();
    lat
}

/// What one listener received, checked message by message and summarised (a soak run delivers
/// millions of changes: none is kept).
#[derive(Debug, Default)]
pub struct Stream {
    pub changes: usize,
    pub last_commit_seq: u64,
    pub last_id: Option<i64>,
    /// Per writer (`id / WRITER_STRIDE`): the id its next change must carry, and how many came.
    pub writers: BTreeMap<i64, (i64, usize)>,
    /// Digests of the `(id, commit_seq)` sequence, of every change and of the even ids only.
    pub order: u64,
    pub even_order: u64,
}

pub fn digest(h: u64, id: i64, commit_seq: u64) -> u64 {
    let h = (h ^ id as u64).wrapping_mul(0x0100_0000_01b3);
    (h ^ commit_seq).wrapping_mul(0x0100_0000_01b3)
}

impl Stream {
    /// Takes one message of subscription `sub_id`, whose writers' ids must arrive `step` apart
    /// (1 for every row, 2 for the even ones) and, for `step` 1, each statement's `batch` rows
    /// together.
    pub fn take(&mut self, m: &Json, sub_id: &str, step: i64, batch: i64) -> Result<(), String> {
        if m["type"] != "change" || m["subscription_id"] != sub_id || kind(m) != "insert" {
            return Err(format!("not an insert of {sub_id}: {m}"));
        }
        self.changes += 1;
        if m["seq"] != self.changes as u64 {
            return Err(format!("seq {} where {} was due: a change lost or repeated", m["seq"], self.changes));
        }
        let commit_seq = m["commit_seq"].as_u64().ok_or_else(|| format!("no commit_seq: {m}"))?;
        if commit_seq <= self.last_commit_seq {
            return Err(format!("commit_seq {commit_seq} after {}: out of commit order", self.last_commit_seq));
        }
        let id = id_of(m);
        let writer = id / WRITER_STRIDE;
        let (next, n) = self.writers.entry(writer).or_insert((writer * WRITER_STRIDE, 0));
        if id != *next {
            return Err(format!("writer {writer}: id {id} where {next} was due (lost, repeated or out of order)"));
        }
        let batch_start = (id % WRITER_STRIDE) % batch == 0;
        if step == 1 && !batch_start && self.last_id != Some(id - 1) {
            return Err(format!("id {id} after {:?}: a statement's rows interleaved with another's", self.last_id));
        }
        (*next, *n) = (id + step, *n + 1);
        (self.last_commit_seq, self.last_id) = (commit_seq, Some(id));
        self.order = digest(self.order, id, commit_seq);
        if id % 2 == 0 {
            self.even_order = digest(self.even_order, id, commit_seq);
        }
        Ok(())
    }
}

/// Checks `sub_id`'s changes (written `batch` rows per statement) as they arrive until `due`
/// says how many are due, that many came, and nothing more arrives for a second.
pub async fn listen(
    mut ws: LiveConnection,
    sub_id: &'static str,
    step: i64,
    batch: i64,
    mut due: watch::Receiver<Option<usize>>,
    limit: Duration,
    name: String,
) -> Stream {
    let deadline = Instant::now() + limit;
    let mut stream = Stream::default();
    loop {
        let target = *due.borrow_and_update();
        if let Some(t) = target
            && stream.changes >= t
        {
            if let Some(m) = recv_within(&mut ws, Duration::from_secs(1)).await {
                panic!("{name}: a message after all {t} changes: {m}");
            }
            return stream;
        }
        assert!(Instant::now() < deadline, "{name}: {} changes after {limit:?}, {target:?} due", stream.changes);
        if let Some(m) = recv_within(&mut ws, Duration::from_millis(200)).await {
            stream.take(&m, sub_id, step, batch).unwrap_or_else(|e| panic!("{name}: change {}: {e}", stream.changes));
        }
    }
}
