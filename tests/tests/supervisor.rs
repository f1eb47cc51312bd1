//! The supervisor as an operator sees it: resource figures in `system.processes`, hung daemons
//! (no `health` answer) killed and restarted within the configured time, and daemons over their
//! memory limit restarted and finally given up.

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
