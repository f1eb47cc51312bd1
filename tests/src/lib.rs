//! End-to-end harness: starts the real binaries through kalam-supervisor on a free port and a
//! temporary data directory, and talks to them over HTTP, WebSocket and the internal RPC
//! services. Tests wait on observable events (health, process table, job status) with
//! deadlines, never on fixed sleeps.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kalam_link::KalamLinkClient;
use kalam_rpc::ProcessInfo;
use serde_json::{Map, Value as Json};

/// Directory holding the workspace binaries (`target/<profile>`), found from the test binary
/// (`target/<profile>/deps/<test>`), or `KALAMDB_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KALAMDB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().expect("binary dir");
    // Test binaries live in `target/<profile>/deps`, tools next to the daemons.
    if dir.join("kalam-supervisor").exists() {
        dir.to_path_buf()
    } else {
        dir.parent().expect("profile dir").to_path_buf()
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Resident set size of `pid` in kB (`VmRSS` of /proc/<pid>/status); `None` once it is gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running KalamDB (supervisor + daemons) owned by one test.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    supervisor: std::sync::Mutex<Child>,
}

impl Cluster {
    /// Starts a supervisor in a fresh data directory and waits for the health check.
    pub async fn start() -> Cluster {
        Self::start_with_config("").await
    }

    /// Like [`Cluster::start`], with `toml` as the server's `kalam.toml`.
    pub async fn start_with_config(toml: &str) -> Cluster {
        Self::start_with(toml, &[]).await
    }

    /// Like [`Cluster::start_with_config`], with extra environment variables for the
    /// supervisor (and so for every daemon it starts).
    pub async fn start_with(toml: &str, env: &[(&str, &Path)]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("kalam.toml"), toml).expect("write kalam.toml");
        let port = free_port();
        let supervisor = spawn_supervisor(dir.path(), port, env);
        let cluster = Cluster { dir, port, supervisor: std::sync::Mutex::new(supervisor) };
        cluster.wait_healthy().await;
        for daemon in ["kalamd", "kalam-flushd", "kalam-lived"] {
            cluster.running_pid(daemon).await;
        }
        cluster
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self, user: &str) -> KalamLinkClient {
        KalamLinkClient::new(self.url()).with_user(user).expect("acting user")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data_dir().join("run")
    }

    pub async fn wait_healthy(&self) {
        let client = KalamLinkClient::new(self.url());
        wait_for(Duration::from_secs(180), "health check", || {
            let client = client.clone();
            async move { client.health().await.ok().filter(|ok| *ok) }
        })
        .await;
    }

    /// The supervisor's process table.
    pub async fn processes(&self) -> Option<Vec<ProcessInfo>> {
        let client = kalam_rpc::transport::connect_supervisor(&self.run_dir()).await.ok()?;
        client.processes(tarpc::context::current()).await.ok()
    }

    /// Waits until `name` runs (healthy) and returns its pid.
    pub async fn running_pid(&self, name: &str) -> u32 {
        self.running_pid_other_than(name, None).await
    }

    /// Waits until `name` runs with a pid other than `old` (after a restart).
    pub async fn running_pid_other_than(&self, name: &str, old: Option<u32>) -> u32 {
        wait_for(Duration::from_secs(60), &format!("{name} running"), || async {
            let procs = self.processes().await?;
            let p = procs.into_iter().find(|p| p.name == name)?;
            (p.state == "running" && p.pid.is_some() && p.pid != old).then_some(p.pid?)
        })
        .await
    }

    /// SIGKILLs a daemon and waits for the supervisor to bring it back; returns the new pid.
    pub async fn kill_and_wait_restart(&self, name: &str) -> u32 {
        let old = self.running_pid(name).await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill -9");
        self.running_pid_other_than(name, Some(old)).await
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.supervisor.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn supervisor_pid(&self) -> u32 {
        self.child().id()
    }

    /// Sends SIGTERM to the supervisor and waits (up to `timeout`) for it to exit.
    pub fn terminate(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.supervisor_pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).ok()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The supervisor's exit status, if it has exited.
    pub fn try_exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// True while the supervisor process is alive.
    pub fn supervisor_alive(&self) -> bool {
        self.try_exit_status().is_none()
    }
}

/// Starts `kalam-supervisor` for `dir` on `port`; output goes to `<dir>/supervisor.out`.
pub fn spawn_supervisor(dir: &Path, port: u16, env: &[(&str, &Path)]) -> Child {
    let out = std::fs::File::create(dir.join(format!("supervisor-{port}.out"))).expect("log file");
    let bin = bin_dir().join("kalam-supervisor");
    assert!(bin.exists(), "{} is missing: build the workspace binaries first (cargo build --workspace)", bin.display());
    Command::new(bin)
        .current_dir(dir)
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("KALAMDB_LOG_LEVEL", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start kalam-supervisor")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(30)).is_none() {
            let mut child = self.child();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A moto S3 server (PyPI `moto[server]`) on a free loopback port, stopped on drop. The binary
/// is `$KALAMDB_MOTO_SERVER` (set by `scripts/test.sh`) or `moto_server` on `PATH`.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    pub async fn start() -> S3Server {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port` (again, after [`S3Server::stop`]; moto keeps no state).
    pub async fn start_on(port: u16) -> S3Server {
        let bin = std::env::var("KALAMDB_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); run the tests through scripts/test.sh"));
        let server = S3Server { port, child };
        wait_for(Duration::from_secs(30), "moto S3 server", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts any credentials).
    pub fn create_bucket(&self, bucket: &str) {
        let status = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.endpoint()), "-o", "/dev/null"])
            .status()
            .expect("curl");
        assert!(status.success(), "bucket {bucket} not created");
    }

    /// Keys of the objects in `bucket`.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/{bucket}?list-type=2", self.endpoint())])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
    }
}

impl S3Server {
    /// Kills the server (an outage, as far as KalamDB can tell).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inserts `(id, 'row <id>')` for ids `from..to` into `table` (two columns: a BIGINT key and a
/// TEXT), one by one, retrying through daemon restarts; returns the acknowledged ids. A retry
/// that hits a duplicate key means the earlier attempt committed (its answer was lost).
pub async fn insert_through_faults(client: KalamLinkClient, table: &str, from: i64, to: i64) -> Vec<i64> {
    let mut acked = Vec::new();
    for id in from..to {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.query_raw(&format!("INSERT INTO {table} VALUES ({id}, 'row {id}')")).await {
                Ok((200, _)) => {
                    acked.push(id);
                    break;
                }
                Ok((_, resp)) if resp.error.as_ref().is_some_and(|e| e.code == "CONSTRAINT_VIOLATION") => break,
                _ => {
                    assert!(Instant::now() < deadline, "insert {id} never succeeded");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    acked
}

// Helpers shared by the end-to-end tests.

pub async fn rows(client: &KalamLinkClient, sql: &str) -> Vec<Map<String, Json>> {
    let resp = client.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    resp.results.last().and_then(|r| r.rows.clone()).unwrap_or_default()
}

pub async fn job(client: &KalamLinkClient, job_id: &str) -> Map<String, Json> {
    let sql = format!(
        "SELECT status, attempts, max_attempts, dead_letter, error_message, next_retry_at, completed_at \
         FROM system.jobs WHERE job_id = '{job_id}'"
    );
    rows(client, &sql).await.into_iter().next().unwrap_or_else(|| panic!("job {job_id} missing"))
}

pub async fn wait_status(client: &KalamLinkClient, job_id: &str, status: &str) -> Map<String, Json> {
    wait_for(Duration::from_secs(60), &format!("job {job_id} {status}"), || async {
        let j = job(client, job_id).await;
        (j["status"] == status).then_some(j)
    })
    .await
}

pub async fn flush(client: &KalamLinkClient, table: &str) -> String {
    let r = rows(client, &format!("FLUSH TABLE {table}")).await;
    r[0]["job_id"].as_str().expect("job id").to_owned()
}

pub async fn count(client: &KalamLinkClient, table: &str) -> i64 {
    rows(client, &format!("SELECT count(*) AS n FROM {table}")).await[0]["n"].as_i64().expect("count")
}

/// Files under `dir` (recursively) whose name matches `keep`.
pub fn files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
    fn walk(dir: &Path, keep: &dyn Fn(&str) -> bool, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, keep, out);
            } else if keep(&name) {
                out.push(path.display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, keep, &mut out);
    out
}

/// A TCP proxy on a free loopback port in front of `upstream`, which a test can cut (every
/// connection closed, new ones refused) and open again: a network outage between one client
/// and the server, with the server itself untouched.
pub struct TcpProxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: u16) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            }
        });
        TcpProxy { port, open, conns, accept }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// Closes every proxied connection and refuses new ones until [`TcpProxy::allow`].
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            conn.abort();
        }
    }

    pub fn allow(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
