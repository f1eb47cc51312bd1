//! Fuzzing the SQL endpoint's parse-and-plan path (api.md §2, STYLE.md "nothing panics on user
//! input") with proptest: statements built from the grammar (SELECT / INSERT / UPDATE / DELETE,
//! DDL and admin fragments with random identifiers, literals, operators, functions and
//! placeholders), byte-level mutations of valid statements, and malformed request bodies, with
//! random `params`, posted to one running server as the loopback (system) identity and as a
//! `user`-role API key. Every answer must be a well-formed JSON envelope with a status below 500;
//! kalamd must stay healthy, never restart and never log a panic. SQL nested a few thousand
//! levels deep must be refused, not crash the server.
//!
//! `KALAM_FUZZ_CASES` (or `PROPTEST_CASES`) sets the number of cases (default 4000), `KALAM_FUZZ_SECONDS` a time limit,
//! `KALAM_FUZZ_SEED` the seed (a number, or `random`).

mod sql_fuzz_support;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kalam_e2e::Cluster;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{Value as Json, json};

use sql_fuzz_support::*;

const DEFAULT_CASES: u32 = 4000;
const DEFAULT_SEED: u64 = 0x5EED_F022;
/// No rate limit, and a crashed kalamd is always restarted (quickly), so one crash does not end
/// the run.
const CONFIG: &str = "[rate_limit]\nmax_queries_per_sec = 1000000\n\
    [supervisor]\nmax_restarts = 100000\nrestart_backoff_min_ms = 50\nrestart_backoff_max_ms = 200\n";

const SETUP: &str = "CREATE NAMESPACE fz; \
    CREATE USER TABLE fz.u (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), name TEXT, n INT, x DOUBLE, b BOOLEAN, \
        ts TIMESTAMP, d DATE, t TIME, j JSON, bin BYTES); \
    CREATE SHARED TABLE fz.s (k TEXT PRIMARY KEY, v BIGINT, j JSON) ACCESS public; \
    CREATE SHARED TABLE fz.p (k TEXT PRIMARY KEY, v BIGINT) ACCESS private; \
    CREATE STREAM TABLE fz.e (id TEXT PRIMARY KEY DEFAULT ULID(), payload JSON, n INT) TTL 60s; \
    CREATE NAMESPACE scratch; \
    CREATE USER TABLE scratch.s1 (id BIGINT PRIMARY KEY, a TEXT); \
    CREATE SHARED TABLE scratch.s2 (id TEXT PRIMARY KEY, a INT); \
    INSERT INTO fz.s VALUES ('a', 1, '{\"x\": 1}'), ('b', 9223372036854775807, '[1, 2]'), ('c', NULL, NULL); \
    INSERT INTO fz.p VALUES ('a', 1)";
const ROWS: &str = "INSERT INTO fz.u (id, name, n, x, b, ts, d, t, j, bin) VALUES \
    (1, 'one', 1, 1.5, true, '2025-01-01T00:00:00Z', '2025-01-01', '12:00:00', '{\"a\": [1, 2]}', X'DEADBEEF'), \
    (2, 'Ελιά', -2147483648, -0.0, false, NULL, NULL, NULL, '[]', '0x'), \
    (3, NULL, NULL, 'NaN', NULL, '9999-12-31T23:59:59.999999Z', '0001-01-01', '23:59:59.999999', NULL, NULL)";

// ---------------------------------------------------------------------------------------------
// The server side

struct Target {
    url: String,
    key: String,
    http: reqwest::Client,
    log: PathBuf,
    log_offset: RefCell<u64>,
    supervisor_out: PathBuf,
    supervisor_offset: RefCell<u64>,
}

impl Target {
    async fn send(&self, case: &Case) -> Result<(u16, Vec<u8>), String> {
        let mut req = self.http.post(format!("{}/v1/api/sql", self.url)).header("content-type", "application/json");
        let user_as = |req: reqwest::RequestBuilder, id: &str| match reqwest::header::HeaderValue::from_str(id) {
            Ok(v) => req.header("x-user-id", v),
            Err(_) => req,
        };
        req = match &case.who {
            Who::System => req,
            Who::SystemAs(id) => user_as(req, id),
            Who::User => req.header("x-api-key", &self.key),
            Who::UserAs(id) => user_as(req.header("x-api-key", &self.key), id),
        };
        let body = match &case.body {
            Body::Sql { sql, params: Some(p) } => json!({"sql": sql, "params": p}).to_string().into_bytes(),
            Body::Sql { sql, params: None } => json!({"sql": sql}).to_string().into_bytes(),
            Body::Raw(bytes) => bytes.clone(),
        };
        let resp =
            req.body(body).timeout(Duration::from_secs(60)).send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| format!("reading the answer failed: {e}"))?;
        Ok((status, bytes.to_vec()))
    }

    /// What kalamd logged since the last call (the detail behind a 5xx).
    fn new_log(&self) -> String {
        read_from(&self.log, &self.log_offset)
    }

    /// What the supervisor and its daemons wrote to stderr since the last call.
    fn new_supervisor_output(&self) -> String {
        read_from(&self.supervisor_out, &self.supervisor_offset)
    }
}

fn read_from(path: &PathBuf, offset: &RefCell<u64>) -> String {
    let mut offset = offset.borrow_mut();
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(*offset));
        let _ = f.read_to_end(&mut bytes);
        *offset += bytes.len() as u64;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks one answer: a JSON envelope (api.md §2.2–2.4) whose HTTP status is below 500 and agrees
/// with its `status` field.
fn check_envelope(status: u16, bytes: &[u8]) -> Result<(), String> {
    let body: Json = serde_json::from_slice(bytes).map_err(|e| {
        format!("HTTP {status}: not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]))
    })?;
    let text = || {
        let t = body.to_string();
        t.chars().take(400).collect::<String>()
    };
    if status >= 500 {
        return Err(format!("HTTP {status}: {}", text()));
    }
    if !body["results"].is_array() || !body["took_ms"].is_u64() {
        return Err(format!("HTTP {status}: malformed envelope: {}", text()));
    }
    for r in body["results"].as_array().into_iter().flatten() {
        if !r["columns"].is_array() || !r["row_count"].is_u64() {
            return Err(format!("HTTP {status}: malformed result: {}", text()));
        }
    }
    match (status, body["status"].as_str()) {
        (200, Some("success")) if body.get("error").is_none() => Ok(()),
        (400..=499, Some("error"))
            if body["error"]["code"]
                .as_str()
                .is_some_and(|c| !c.is_empty() && c != "INTERNAL_ERROR" && c != "STORAGE_ERROR")
                && body["error"]["message"].is_string() =>
        {
            Ok(())
        }
        _ => Err(format!("HTTP {status}: status field or error object does not fit: {}", text())),
    }
}

/// A 5xx's server-side reason, reduced to a signature that groups cases failing the same way.
fn signature(log: &str, fallback: &str) -> String {
    let line = log.lines().rev().find(|l| l.contains("ERROR") || l.contains("panicked")).unwrap_or(fallback);
    let line = line.split_once(" ERROR ").map_or(line, |(_, rest)| rest);
    let mut sig = String::new();
    for c in line.chars().take(200) {
        let c = if c.is_ascii_digit() { '#' } else { c };
        if !(c == '#' && sig.ends_with('#')) {
            sig.push(c);
        }
    }
    sig
}

/// Failures grouped by signature, keeping the shortest case of each.
#[derive(Default)]
struct Failures {
    by_signature: BTreeMap<String, (usize, String)>,
}

impl Failures {
    fn add(&mut self, signature: String, case: &Case, problem: &str) {
        let shown = match &case.body {
            Body::Sql { sql, params } => {
                let shown: String = sql.chars().take(600).collect();
                let more = if shown.len() < sql.len() { format!("…({} bytes)", sql.len()) } else { String::new() };
                let params = params.as_ref().map_or("-".into(), Json::to_string);
                format!("{:?} sql={shown:?}{more} params={params}", case.who)
            }
            Body::Raw(bytes) => {
                format!("{:?} raw body={:?}", case.who, String::from_utf8_lossy(&bytes[..bytes.len().min(500)]))
            }
        };
        let shown = format!("{shown}\n      -> {problem}");
        let entry = self.by_signature.entry(signature).or_insert((0, shown.clone()));
        entry.0 += 1;
        if shown.len() < entry.1.len() {
            entry.1 = shown;
        }
    }
    fn count(&self) -> usize {
        self.by_signature.values().map(|(n, _)| n).sum()
    }
    fn report(&self) -> String {
        self.by_signature
            .iter()
            .map(|(sig, (n, case))| format!("  {n}× {sig}\n    e.g. {case}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn env_u64(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok())
}

/// The pid of a running kalamd, if one runs.
fn kalamd_pid(rt: &tokio::runtime::Runtime, cluster: &Cluster) -> Option<u32> {
    let procs = rt.block_on(cluster.processes())?;
    procs.into_iter().find(|p| p.name == "kalamd" && p.state == "running").and_then(|p| p.pid)
}

#[test]
fn sql_endpoint_answers_any_input_with_a_client_error_or_success() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cluster = rt.block_on(Cluster::start_with_config(CONFIG));
    let system = cluster.client("system");
    let key = rt.block_on(async {
        system.query(SETUP).await.expect("setup");
        let resp = system.query("CREATE USER 'fuzzer' WITH ROLE user").await.expect("user");
        cluster.client("fuzzer").query(ROWS).await.expect("rows");
        system.query(ROWS).await.expect("rows");
        resp.results[0].rows.as_ref().unwrap()[0]["apikey"].as_str().unwrap().to_owned()
    });
    let kalamd = Cell::new(rt.block_on(cluster.running_pid("kalamd")));
    let target = Target {
        url: cluster.url(),
        key,
        http: reqwest::Client::new(),
        log: cluster.data_dir().join("logs").join("kalamd.log"),
        log_offset: RefCell::new(0),
        supervisor_out: cluster.dir.path().join(format!("supervisor-{}.out", cluster.port)),
        supervisor_offset: RefCell::new(0),
    };
    target.new_log();
    target.new_supervisor_output();
    let failures = RefCell::new(Failures::default());
    let gave_up = Cell::new(false);
    // After a request got no answer: a crash (kalamd comes back with another pid, the reason is
    // in the supervisor's output) or a request that took too long (kalamd still up).
    let after_no_answer = |case: &Case, problem: &str| {
        let started = Instant::now();
        loop {
            match kalamd_pid(&rt, &cluster) {
                Some(pid) if pid != kalamd.get() => {
                    kalamd.set(pid);
                    rt.block_on(cluster.wait_healthy());
                    let out = target.new_supervisor_output();
                    let reason = out
                        .lines()
                        .find(|l| l.contains("overflowed") || l.contains("panicked") || l.contains("fatal"))
                        .unwrap_or("exited");
                    failures.borrow_mut().add(format!("kalamd crashed: {}", signature(reason, reason)), case, problem);
                    return;
                }
                Some(_)
                    if started.elapsed() > Duration::from_secs(3) && rt.block_on(system.health()).unwrap_or(false) =>
                {
                    failures.borrow_mut().add("no answer, kalamd still up".into(), case, problem);
                    return;
                }
                _ if started.elapsed() > Duration::from_secs(90) => {
                    failures.borrow_mut().add("kalamd did not come back".into(), case, problem);
                    gave_up.set(true);
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    let run_case = |case: &Case| match rt.block_on(target.send(case)) {
        Ok((status, bytes)) => {
            if let Err(problem) = check_envelope(status, &bytes) {
                if status >= 500 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                let sig = signature(&target.new_log(), &problem);
                failures.borrow_mut().add(sig, case, &problem);
            }
        }
        Err(problem) => after_no_answer(case, &problem),
    };
    let healthy = |when: &str| {
        let ok = rt.block_on(system.health()).unwrap_or(false);
        let pid = kalamd_pid(&rt, &cluster);
        if !ok || pid != Some(kalamd.get()) {
            let mut f = failures.borrow_mut();
            let entry =
                f.by_signature.entry("kalamd unhealthy or restarted unnoticed".into()).or_insert((0, String::new()));
            entry.0 += 1;
            entry.1 = format!("{when}: health {ok}, pid {pid:?} (was {})", kalamd.get());
            if let Some(pid) = pid {
                kalamd.set(pid);
            }
        }
    };

    let started = Instant::now();
    let fixed_cases: Vec<Case> = known_cases().into_iter().chain(deep_cases()).collect();
    for case in &fixed_cases {
        run_case(case);
    }
    healthy("after the known and deeply nested cases");
    let fixed = started.elapsed();

    let cases: u32 =
        env_u64(&["KALAM_FUZZ_CASES", "PROPTEST_CASES"]).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    let seed = match env_u64(&["KALAM_FUZZ_SEED"]).as_deref() {
        Some("random") => RngSeed::Random,
        Some(n) => RngSeed::Fixed(n.parse().expect("KALAM_FUZZ_SEED: a number or `random`")),
        None => RngSeed::Fixed(DEFAULT_SEED),
    };
    let config = Config { cases, failure_persistence: None, rng_seed: seed, max_shrink_iters: 0, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let ran = Cell::new(0u32);
    let timed_out = Cell::new(false);
    let fuzz_started = Instant::now();
    let deadline = env_u64(&["KALAM_FUZZ_SECONDS"])
        .and_then(|v| v.parse().ok())
        .map(|secs| fuzz_started + Duration::from_secs(secs));
    // Failures are collected rather than returned, so that one known 5xx does not end the run;
    // the run stops only if kalamd does not come back after a crash.
    let result = runner.run(&case(), |case| {
        if gave_up.get() {
            return Err(TestCaseError::fail("kalamd is gone"));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            timed_out.set(true);
            return Err(TestCaseError::fail("time limit reached"));
        }
        run_case(&case);
        ran.set(ran.get() + 1);
        if ran.get().is_multiple_of(250) {
            healthy(&format!("after {} cases", ran.get()));
        }
        Ok(())
    });
    healthy("after the run");
    let panics: Vec<String> = [target.log.clone(), target.supervisor_out.clone()]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().filter(|l| l.contains("panicked")).map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for p in panics.iter().take(10) {
        failures.borrow_mut().by_signature.entry(format!("panic: {}", signature(p, p))).or_insert((1, p.clone()));
    }
    let failures = failures.into_inner();
    eprintln!(
        "{} known + deeply nested cases in {fixed:.1?}; {} fuzz cases (seed {:?}) in {:.1?}; {} failing case(s) \
         of {} kind(s)",
        fixed_cases.len(),
        ran.get(),
        runner.config().rng_seed,
        fuzz_started.elapsed(),
        failures.count(),
        failures.by_signature.len()
    );
    if !gave_up.get() && !timed_out.get() {
        result.expect("proptest run");
    }
    assert!(failures.by_signature.is_empty(), "server errors, malformed answers or crashes:\n{}", failures.report());
}
