//! kalam-bench at `--quick` sizes: every benchmark and every per-daemon driver still runs to
//! the end against this build and writes a results file with each figure it promises, so the
//! harness cannot rot between the runs that produce `docs/benchmarks.md`. The figures
//! themselves are not checked: a debug build on a loaded CI machine says nothing about speed.

use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;

/// Runs kalam-bench with `args` plus `--quick --out <file>` and returns the results file.
fn run(dir: &Path, args: &[&str]) -> Json {
    let out = dir.join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_kalam-bench"))
        .args(args)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run kalam-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kalam-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&out).expect("results file")).expect("results JSON")
}

fn names(results: &Json) -> Vec<String> {
    results["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

fn measurement<'a>(results: &'a Json, name: &str) -> &'a Json {
    results["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_full_run_measures_every_benchmark_with_its_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(dir.path(), &[]);
    let got = names(&results);
    let mut expected = vec![
        "baseline.axum_hello.c1",
        "baseline.axum_hello.c64",
        "baseline.rocksdb.single",
        "baseline.rocksdb.batch1000",
        "idle.start",
        "insert.single.c1",
        "insert.single.c64",
        "insert.batch1000",
        "select.point.text",
        "select.point.param",
        "insert.load.c4",
        "flush.rows",
        "live.subscribe.snapshot1000",
        "live.notify.subs1",
        "live.notify.subs100",
        "live.resume",
        "live.fanout",
        "idle.after",
    ];
    for q in ["scan", "aggregate", "join"] {
        for kind in ["query.{q}.buffered", "query.{q}.flushed", "baseline.datafusion.{q}"] {
            expected.push(Box::leak(kind.replace("{q}", q).into_boxed_str()));
        }
    }
    for name in &expected {
        assert!(got.iter().any(|g| g == name), "{name} missing from {got:?}");
    }
    // Ratios to the ceilings measured in the same run.
    let insert = measurement(&results, "insert.single.c1");
    assert!(insert["ratios"]["baseline.axum_hello.c1"].as_f64().unwrap() > 0.0, "{insert}");
    assert!(insert["latency"]["p99_ms"].as_f64().unwrap() >= insert["latency"]["p50_ms"].as_f64().unwrap());
    assert!(insert["rss_mb"]["kalamd"].as_f64().unwrap() > 0.0 && insert["cpu_percent"]["kalamd"].is_number());
    let join = measurement(&results, "query.join.flushed");
    assert!(join["ratios"]["baseline.datafusion.join"].as_f64().unwrap() > 0.0, "{join}");

    // Comparing with an earlier file matches measurements by name.
    let earlier = dir.path().join("earlier.json");
    std::fs::rename(dir.path().join("results.json"), &earlier).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kalam-bench"))
        .args(["--quick", "--only", "baselines", "--compare"])
        .arg(&earlier)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Compared with") && text.contains("baseline.axum_hello.c1"), "{text}");
    assert!(text.contains("insert.single.c1") && text.contains("(not run this time)"), "{text}");
}

#[test]
fn a_missing_compare_file_is_refused_before_the_run() {
    let output = Command::new(env!("CARGO_BIN_EXE_kalam-bench"))
        .args(["--compare", "/nonexistent/results.json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/results.json"));
}

#[test]
fn kalam_lived_alone_delivers_a_synthetic_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(dir.path(), &["lived"]);
    let fixed = measurement(&results, "lived.fixed_rate");
    // 200 records/s for 2 s, each to its user's 5 subscriptions: all delivered.
    assert_eq!(fixed["ops"], 2000, "{fixed}");
    assert!(fixed["rss_mb"]["kalam-lived"].as_f64().unwrap() > 0.0);
    let saturation = measurement(&results, "lived.saturation");
    assert!(saturation["ops"].as_u64().unwrap() > 0);
    assert_eq!(saturation["extra"]["undelivered"], 0.0, "every saturation notification delivered: {saturation}");
}

#[test]
fn kalam_flushd_alone_flushes_through_slow_and_failing_storage() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(dir.path(), &["flushd"]);
    for name in ["flushd.local", "flushd.slow_storage", "flushd.failing_storage"] {
        assert_eq!(measurement(&results, name)["ops"], 4000, "{name}: 2 jobs of 2,000 rows");
    }
    assert_eq!(measurement(&results, "flushd.local")["extra"].get("retries").and_then(Json::as_f64), Some(0.0));
    // Every second write fails: each job needs at least one retry.
    let failing = measurement(&results, "flushd.failing_storage");
    assert!(failing["extra"]["retries"].as_f64().unwrap() >= 1.0, "{failing}");
    assert_eq!(failing["extra"]["retries"], failing["extra"]["failed_attempts"], "{failing}");
}

#[test]
fn kalamd_alone_serves_sql_without_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let results = run(dir.path(), &["kalamd"]);
    for name in ["insert.single.c1", "insert.single.c64", "select.point.param", "query.join.buffered"] {
        let m = measurement(&results, &format!("kalamd_alone.{name}"));
        assert!(m["per_sec"].as_f64().unwrap() > 0.0, "{m}");
    }
}
