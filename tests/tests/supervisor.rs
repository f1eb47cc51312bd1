//! The supervisor as an operator sees it: resource figures in `system.processes`, hung daemons
//! (no `health` answer) killed and restarted within the configured time, and daemons over their
//! memory limit restarted and finally given up; per-process log files rotated by size, and
//! RocksDB's own logs bounded.

use std::time::{Duration, Instant};

use kalam_e2e::{Cluster, rows, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What the supervisor printed (its log goes to stderr, collected by the harness).
fn supervisor_output(cluster: &Cluster) -> String {
    let dir = cluster.data_dir().parent().expect("cluster dir").to_path_buf();
    std::fs::read_to_string(dir.join(format!("supervisor-{}.out", cluster.port))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_processes_reports_each_daemons_resources() {
    let cluster = Cluster::start().await;
    let client = cluster.client("system");
    let procs = wait_for(Duration::from_secs(10), "sampled figures", || async {
        let procs = rows(
            &client,
            "SELECT name, pid, state, uptime_seconds, memory_bytes, cpu_percent FROM system.processes ORDER BY name",
        )
        .await;
        procs.iter().all(|p| !p["memory_bytes"].is_null() && !p["cpu_percent"].is_null()).then_some(procs)
    })
    .await;
    let names: Vec<&str> = procs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["kalam-flushd", "kalam-lived", "kalamd"]);
    for p in &procs {
        eprintln!("{p:?}");
        assert_eq!(p["state"], "running", "{p:?}");
        assert!(p["pid"].as_i64().unwrap() > 0);
        assert!(p["uptime_seconds"].as_i64().unwrap() >= 0);
        // Every daemon maps at least a few MiB; the figure is bytes, not KiB or pages.
        assert!(p["memory_bytes"].as_i64().unwrap() > 4 * 1024 * 1024, "{p:?}");
        assert!(p["cpu_percent"].as_f64().unwrap() >= 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_daemon_is_killed_and_restarted_within_the_configured_time() {
    let config = "[supervisor]\nhealth_interval_ms = 200\nhealth_misses = 3\n";
    let cluster = Cluster::start_with_config(config).await;
    for name in ["kalam-lived", "kalam-flushd"] {
        let old = cluster.running_pid(name).await;
        let stopped = Instant::now();
        kill(Pid::from_raw(old as i32), Signal::SIGSTOP).expect("SIGSTOP");
        let new = cluster.running_pid_other_than(name, Some(old)).await;
        let took = stopped.elapsed();
        eprintln!("{name}: SIGSTOP of {old} → restarted as {new} after {} ms", took.as_millis());
        // 3 unanswered checks 200 ms apart, then a kill and a restart.
        assert!(took < Duration::from_secs(5), "{name} restarted only after {took:?}");
        // The hung process is gone, not left stopped.
        assert!(kill(Pid::from_raw(old as i32), None).is_err(), "{name} {old} still exists");
    }
    assert!(supervisor_output(&cluster).contains("health check not answered"));
    // The database kept serving.
    let resp = cluster.client("u1").query("SELECT 1 AS one").await.expect("query");
    assert_eq!(resp.status, "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_over_its_memory_limit_is_restarted_then_given_up() {
    let config = "[supervisor]\nlived_memory_limit_mb = 1\nmax_restarts = 2\nrestart_window_seconds = 600\n";
    let cluster = Cluster::start_with_config(config).await;
    let failed = wait_for(Duration::from_secs(60), "kalam-lived given up", || async {
        let procs = cluster.processes().await?;
        let lived = procs.into_iter().find(|p| p.name == "kalam-lived")?;
        (lived.state == "failed").then_some(lived)
    })
    .await;
    eprintln!("kalam-lived after its limit: {failed:?}");
    assert!(failed.restarts >= 2, "{failed:?}");
    assert!(supervisor_output(&cluster).contains("over its memory limit"));
    // The other daemons are unaffected and the SQL API answers.
    let procs = cluster.processes().await.expect("process table");
    for name in ["kalamd", "kalam-flushd"] {
        let p = procs.iter().find(|p| p.name == name).unwrap();
        assert_eq!((p.state.as_str(), p.restarts), ("running", 0), "{p:?}");
    }
    let resp = cluster.client("u1").query("SELECT 1 AS one").await.expect("query");
    assert_eq!(resp.status, "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_the_same_data_directory_refuses_to_start() {
    let cluster = Cluster::start().await;
    let port = kalam_e2e::free_port();
    let mut second = kalam_e2e::spawn_supervisor(cluster.dir.path(), port, &[]);
    let status = wait_for(Duration::from_secs(30), "second supervisor exits", || {
        let status = second.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(!status.success(), "{status:?}");
    let out = std::fs::read_to_string(cluster.dir.path().join(format!("supervisor-{port}.out"))).unwrap();
    assert!(out.contains("already running"), "{out}");
    // The first one still serves, its sockets untouched.
    let resp = cluster.client("u1").query("SELECT 1 AS one").await.expect("query");
    assert_eq!(resp.status, "success");
    assert!(cluster.processes().await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_crashes_on_start_is_restarted_with_growing_delays_then_given_up() {
    // The real kalamd and kalam-lived, and a kalam-flushd that records its start and exits.
    let bins = tempfile::tempdir().expect("bin dir");
    let real = kalam_e2e::bin_dir();
    for name in ["kalamd", "kalam-lived"] {
        std::os::unix::fs::symlink(real.join(name), bins.path().join(name)).expect("symlink");
    }
    let starts = bins.path().join("starts.log");
    let script = format!("#!/bin/sh\ndate +%s%N >> '{}'\nexit 3\n", starts.display());
    let flushd = bins.path().join("kalam-flushd");
    std::fs::write(&flushd, script).expect("script");
    std::fs::set_permissions(&flushd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");

    let dir = tempfile::tempdir().expect("data dir");
    let config = "[supervisor]\nrestart_backoff_min_ms = 1000\nrestart_backoff_max_ms = 8000\nmax_restarts = 3\n";
    std::fs::write(dir.path().join("kalam.toml"), config).expect("config");
    let port = kalam_e2e::free_port();
    let mut supervisor = kalam_e2e::spawn_supervisor(dir.path(), port, &[("KALAMDB_BIN_DIR", bins.path())]);
    let client =
        kalam_link::KalamLinkClient::new(format!("http://127.0.0.1:{port}")).with_user("u1").expect("acting user");
    let failed = wait_for(Duration::from_secs(60), "kalam-flushd given up", || async {
        let procs = rows(&client, "SELECT name, state, restarts FROM system.processes").await;
        procs.into_iter().find(|p| p["name"] == "kalam-flushd" && p["state"] == "failed")
    })
    .await;
    let times: Vec<i128> =
        std::fs::read_to_string(&starts).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
    let gaps_ms: Vec<i128> = times.windows(2).map(|w| (w[1] - w[0]) / 1_000_000).collect();
    eprintln!("kalam-flushd starts: {}, gaps between them (ms): {gaps_ms:?}; {failed:?}", times.len());
    // The first start plus max_restarts restarts, then no more.
    assert_eq!(times.len(), 4, "{gaps_ms:?}");
    assert_eq!(failed["restarts"], 3);
    assert!(gaps_ms.iter().all(|g| *g >= 1_000), "restarted faster than once per second: {gaps_ms:?}");
    assert!(gaps_ms.windows(2).all(|w| w[1] > w[0]), "delays do not grow: {gaps_ms:?}");
    let out = std::fs::read_to_string(dir.path().join(format!("supervisor-{port}.out"))).unwrap_or_default();
    assert!(out.contains("too many restarts; giving up"), "{out}");
    // kalamd keeps serving without kalam-flushd.
    assert_eq!(client.query("SELECT 1 AS one").await.expect("query").status, "success");
    let _ = kill(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM);
    let _ = supervisor.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_sockets_cleanly_and_keeps_every_acknowledged_write() {
    let cluster = Cluster::start().await;
    let client = cluster.client("u1");
    client.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("setup");
    let mut ws = client.connect_live().await.expect("ws");
    ws.subscribe("s", "SELECT * FROM app.t").await.expect("subscribe");
    let ack = tokio::time::timeout(Duration::from_secs(10), ws.next_message()).await.expect("ack").unwrap().unwrap();
    assert_eq!(ack["type"], "subscription_ack");
    // Writers run until the server goes away; every acknowledged id must survive.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (client, acked) = (cluster.client("u1"), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = w * 1_000_000 + i;
                match client.query(&format!("INSERT INTO app.t VALUES ({id}, 'x')")).await {
                    Ok(r) if r.status == "success" => acked.lock().unwrap().push(id),
                    _ => return,
                }
            }
        }));
    }
    // The subscriber reads as a client does, so it answers the server's close in time.
    let reader = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next_frame()).await {
                Ok(Ok(Some(kalam_link::live::Frame::Close(code)))) => return code,
                Ok(Ok(Some(_))) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pids: Vec<u32> = cluster.processes().await.expect("process table").iter().filter_map(|p| p.pid).collect();
    assert_eq!(pids.len(), 3);
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| cluster.terminate(Duration::from_secs(60))).expect("supervisor exited");
    let took = started.elapsed();
    for w in writers {
        let _ = w.await;
    }
    // The subscriber sees a close with 1001 (going away) after whatever changes were queued.
    let close_code = reader.await.expect("reader");
    eprintln!("SIGTERM → exit {status:?} in {} ms; close code {close_code:?}", took.as_millis());
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
    assert_eq!(close_code, Some(1001));
    // No daemon is left running.
    for pid in pids {
        assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "daemon {pid} still exists");
    }
    // Restart on the same data directory: every acknowledged write is there.
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "only {} writes before the shutdown", acked.len());
    let port = kalam_e2e::free_port();
    let mut again = kalam_e2e::spawn_supervisor(cluster.dir.path(), port, &[]);
    let client =
        kalam_link::KalamLinkClient::new(format!("http://127.0.0.1:{port}")).with_user("u1").expect("acting user");
    let stored = wait_for(Duration::from_secs(120), "restarted server", || async {
        client.query("SELECT id FROM app.t").await.ok()?.results.into_iter().next()?.rows
    })
    .await;
    let stored: std::collections::HashSet<i64> = stored.iter().filter_map(|r| r["id"].as_i64()).collect();
    let missing: Vec<&i64> = acked.iter().filter(|id| !stored.contains(id)).collect();
    eprintln!("{} acknowledged writes, {} rows after restart", acked.len(), stored.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    let _ = kill(Pid::from_raw(again.id() as i32), Signal::SIGTERM);
    let _ = again.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_once_every_daemon_is_healthy_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let socket = std::sync::Arc::new(socket);
    let port = kalam_e2e::free_port();
    let mut supervisor = kalam_e2e::spawn_supervisor(dir.path(), port, &[("NOTIFY_SOCKET", &socket_path)]);
    let recv = |socket: std::sync::Arc<std::os::unix::net::UnixDatagram>| {
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf).expect("notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    };
    let ready = recv(socket.clone()).await.unwrap();
    assert!(ready.contains("READY=1"), "{ready}");
    // By then every daemon answers health.
    let run_dir = dir.path().join("data").join("run");
    let client = kalam_rpc::transport::connect_supervisor(&run_dir).await.expect("supervisor rpc");
    let procs = client.processes(tarpc::context::current()).await.expect("processes");
    assert!(procs.iter().all(|p| p.state == "running"), "{procs:?}");
    kill(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let stopping = recv(socket).await.unwrap();
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let status = tokio::task::spawn_blocking(move || supervisor.wait()).await.unwrap().expect("exit");
    assert!(status.success(), "{status:?}");
}

/// Names of the files in `dir` that start with `prefix`.
fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with(prefix));
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_logs_to_its_own_size_rotated_file_and_rocksdb_logs_are_bounded() {
    let config = "[logging]\nformat = \"json\"\nmax_file_size = 20000\nmax_files = 2\n\
                  [storage.rocksdb]\nkeep_log_file_num = 2\n[misspelled]\nsection_key = 1\n";
    // The harness sets KALAMDB_LOG_LEVEL=info, which wins over the file.
    let cluster = Cluster::start_with(config, &[("KALAMDB_LOG_LEVEL", std::path::Path::new("debug"))]).await;
    let client = cluster.client("u1");
    client.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("setup");
    let logs = cluster.data_dir().join("logs");
    // Enough requests for kalamd's debug log to pass its size limit several times.
    wait_for(Duration::from_secs(60), "kalamd's log to rotate twice", || async {
        for i in 0..20 {
            client.query(&format!("INSERT INTO app.t VALUES ({}, 'x')", rand_id(i))).await.ok()?;
        }
        (files_named(&logs, "kalamd.log.").len() == 2).then_some(())
    })
    .await;
    for process in ["kalam-supervisor", "kalamd", "kalam-flushd", "kalam-lived"] {
        let current = logs.join(format!("{process}.log"));
        let text = std::fs::read_to_string(&current).unwrap_or_else(|e| panic!("{}: {e}", current.display()));
        let first = text.lines().next().unwrap_or_else(|| panic!("{process}.log is empty"));
        let line: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{first}: {e}"));
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    // max_files = 2: `.1` and `.2` only, each rotated just after passing the size limit.
    assert_eq!(files_named(&logs, "kalamd.log"), ["kalamd.log", "kalamd.log.1", "kalamd.log.2"]);
    for name in ["kalamd.log.1", "kalamd.log.2"] {
        let len = std::fs::metadata(logs.join(name)).unwrap().len();
        assert!((20_000..40_000).contains(&len), "{name}: {len} bytes");
    }
    // The supervisor's log rotates at the same small size: the warning may be in `.1` or `.2`.
    let warned =
        |text: &str| text.contains("unknown configuration key ignored") && text.contains("misspelled.section_key");
    let files = files_named(&logs, "kalam-supervisor.log");
    assert!(
        files.iter().any(|f| std::fs::read_to_string(logs.join(f)).is_ok_and(|t| warned(&t))),
        "no supervisor log file ({files:?}) holds the unknown-key warning"
    );
    // RocksDB starts a new info LOG each time kalamd opens it; only keep_log_file_num remain.
    for _ in 0..4 {
        cluster.kill_and_wait_restart("kalamd").await;
    }
    let rocksdb_logs = files_named(&cluster.data_dir().join("rocksdb"), "LOG");
    assert!(rocksdb_logs.len() <= 2 && rocksdb_logs.contains(&"LOG".to_owned()), "{rocksdb_logs:?}");
}

/// Distinct ids for the log test's inserts.
fn rand_id(i: i64) -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 100 + i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_service_restarts_one_daemon_and_shuts_everything_down() {
    let cluster = Cluster::start().await;
    let supervisor = kalam_rpc::transport::connect_supervisor(&cluster.run_dir()).await.expect("supervisor socket");
    let ctx = tarpc::context::current;

    let unknown = supervisor.restart(ctx(), "kalam-nope".into()).await.unwrap().unwrap_err();
    assert!(unknown.message.contains("kalam-nope"), "{unknown:?}");

    // An operator's restart: graceful, immediate, counted, and not a failure.
    let old = cluster.running_pid("kalam-flushd").await;
    let answer = supervisor.restart(ctx(), "kalam-flushd".into()).await.unwrap().expect("restart");
    assert_eq!(answer, "Restarting kalam-flushd");
    let new = cluster.running_pid_other_than("kalam-flushd", Some(old)).await;
    assert_ne!(old, new);
    let procs = cluster.processes().await.expect("process table");
    let flushd = procs.iter().find(|p| p.name == "kalam-flushd").unwrap();
    assert_eq!((flushd.state.as_str(), flushd.restarts), ("running", 1), "{flushd:?}");
    assert!(supervisor_output(&cluster).contains("restart requested"));
    let client = cluster.client("u1");
    client.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY)").await.expect("setup");
    client.query("INSERT INTO app.t VALUES (1)").await.expect("insert");
    let job = kalam_e2e::flush(&client, "app.t").await;
    kalam_e2e::wait_status(&client, &job, "completed").await;

    // Shutdown over RPC: the same ordered stop as SIGTERM, exit code 0.
    supervisor.shutdown(ctx()).await.expect("shutdown");
    let status = wait_for(Duration::from_secs(30), "the supervisor to exit", || {
        let status = cluster.try_exit_status();
        async move { status }
    })
    .await;
    assert!(status.success(), "{status}");
    for name in ["kalamd", "kalam-flushd", "kalam-lived"] {
        let pid = procs.iter().find(|p| p.name == name).and_then(|p| p.pid).unwrap();
        assert!(kill(Pid::from_raw(pid as i32), None).is_err(), "{name} ({pid}) still runs");
    }
}
