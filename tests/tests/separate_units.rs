//! The daemons without kalam-supervisor, the way `systemd/kalamd.socket`, `kalamd.service`,
//! `kalam-flushd.service` and `kalam-lived.service` run them: kalamd gets the public port by
//! socket activation (`systemd-socket-activate` passes it exactly as systemd does), every daemon
//! reports READY=1 and STOPPING=1 on NOTIFY_SOCKET, and SQL, flushes, live queries and
//! `system.processes` work.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kalam_e2e::{bin_dir, flush, free_port, rows, wait_for, wait_status};
use kalam_link::KalamLinkClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// The daemons of one test; killed if the test fails half-way.
struct Daemons(Vec<(&'static str, Child)>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Notifications received on the test's NOTIFY_SOCKET so far, one string per datagram.
fn notifications(socket: &UnixDatagram, until: impl Fn(&[String]) -> bool, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !until(seen) {
        assert!(Instant::now() < deadline, "timed out waiting for notifications; got {seen:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
    }
}

fn count(seen: &[String], state: &str) -> usize {
    seen.iter().filter(|m| m.lines().any(|l| l == state)).count()
}

fn daemon(name: &str, dir: &Path, env: &[(&str, String)], out: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    cmd.current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(std::fs::File::create(out.with_extension("err")).expect("output file"));
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_run_as_separate_units_with_socket_activation() {
    assert!(
        Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: install Debian's systemd package (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let notify_path: PathBuf = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let env = [
        ("KALAMDB_DATA_DIR", dir.path().join("data").display().to_string()),
        ("KALAMDB_LOG_LEVEL", "info".to_owned()),
        ("NOTIFY_SOCKET", notify_path.display().to_string()),
    ];

    // kalamd.socket + kalamd.service: the socket is bound first; kalamd starts on the first
    // connection and takes the listener as fd 3.
    let mut activate = Command::new(SOCKET_ACTIVATE);
    activate.arg("--listen").arg(format!("127.0.0.1:{port}"));
    for (k, v) in &env {
        activate.arg(format!("--setenv={k}={v}"));
    }
    activate
        .arg(bin_dir().join("kalamd"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("kalamd.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("kalamd.err")).unwrap());
    let mut daemons = Daemons(vec![("kalamd", activate.spawn().expect("systemd-socket-activate"))]);
    // systemd-socket-activate binds the port after it starts; until then a connection is refused.
    // The probing connection itself is what starts kalamd, as it is with kalamd.socket.
    wait_for(Duration::from_secs(10), "systemd-socket-activate to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    let client = KalamLinkClient::new(format!("http://127.0.0.1:{port}")).with_user("u1").expect("acting user");
    let first = client.query("SELECT 1 AS one").await.expect("the first connection starts kalamd");
    assert_eq!(first.status, "success");
    let mut seen = Vec::new();
    notifications(&notify, |s| count(s, "READY=1") >= 1, &mut seen);

    // kalam-flushd.service and kalam-lived.service.
    for name in ["kalam-flushd", "kalam-lived"] {
        let out = dir.path().join(format!("{name}.out"));
        daemons.0.push((name, daemon(name, dir.path(), &env, &out).spawn().expect(name)));
    }
    notifications(&notify, |s| count(s, "READY=1") >= 3, &mut seen);

    client.query("CREATE NAMESPACE app; CREATE USER TABLE app.t (id BIGINT PRIMARY KEY, v TEXT)").await.expect("setup");
    let mut ws = wait_for(Duration::from_secs(30), "kalam-lived to take WebSockets", || async {
        let mut ws = client.connect_live().await.ok()?;
        ws.send_json(&json!({"subscriptions": [{"id": "s", "sql": "SELECT * FROM app.t", "options": {}}]}))
            .await
            .ok()?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next_message()).await {
                Ok(Ok(Some(m))) if m["type"] == "subscription_ack" || m["type"] == "initial_data" => return Some(ws),
                Ok(Ok(Some(m))) if m["type"] == "error" => return None,
                Ok(Ok(Some(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    client.query("INSERT INTO app.t VALUES (1, 'hello')").await.expect("insert");
    let change = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next_message()).await {
            Ok(Ok(Some(m))) if m["type"] == "change" => break m,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no change notification: {other:?}"),
        }
    };
    assert_eq!(change["rows"][0]["v"], "hello", "{change}");
    let job_id = flush(&client, "app.t").await;
    wait_status(&client, &job_id, "completed").await;
    assert_eq!(rows(&client, "SELECT v FROM app.t").await[0]["v"], "hello");

    // No supervisor: system.processes asks the daemons themselves.
    let procs = rows(&client, "SELECT name, pid, state FROM system.processes ORDER BY name").await;
    let names: Vec<&str> = procs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["kalam-flushd", "kalam-lived", "kalamd"], "{procs:?}");
    for p in &procs {
        assert_eq!(p["state"], "running", "{p:?}");
        let expected = daemons.0.iter().find(|(n, _)| *n == p["name"]).map(|(_, c)| c.id()).unwrap();
        assert_eq!(p["pid"].as_u64(), Some(u64::from(expected)), "{p:?}");
    }

    // SIGTERM, as systemd stops a unit: each daemon says STOPPING=1 and exits 0.
    for (_, child) in &daemons.0 {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    }
    for (name, child) in &mut daemons.0 {
        let status = wait_for(Duration::from_secs(20), &format!("{name} to exit"), || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        assert!(status.success(), "{name} exited with {status}");
    }
    notifications(&notify, |s| count(s, "STOPPING=1") >= 3, &mut seen);
}
