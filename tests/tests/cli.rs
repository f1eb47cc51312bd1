//! The `kalam` CLI against a real server: one-shot modes and exit codes, the interactive shell
//! driven through a pseudo-terminal (completion, meta-commands, multi-line input, Ctrl+C,
//! output formats, history, subscriptions), `kalam subscribe` and `kalam admin`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use expectrl::{ControlCode, Expect, Regex};
use kalam_e2e::{Cluster, bin_dir};

const SETUP: &str = "CREATE NAMESPACE app; CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT); \
    CREATE SHARED TABLE app.big (id BIGINT PRIMARY KEY)";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn start(rt: &tokio::runtime::Runtime, config: &str) -> Cluster {
    rt.block_on(async {
        let cluster = Cluster::start_with_config(config).await;
        cluster.client("system").execute_query(SETUP).await.expect("setup");
        cluster
    })
}

fn sql(rt: &tokio::runtime::Runtime, cluster: &Cluster, user: &str, sql: &str) {
    rt.block_on(cluster.client(user).execute_query(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `kalam` with its home (config, history) in `home`, talking to `cluster` as `user`.
fn kalam(cluster: &Cluster, home: &Path, user: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join("kalam"));
    cmd.env("HOME", home).env("TERM", "xterm").env_remove("KALAM_TOKEN").env_remove("KALAM_APIKEY");
    cmd.args(["--host", &cluster.url(), "-u", user]);
    cmd
}

fn run(mut cmd: Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.output().expect("run kalam");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn run_stdin(mut cmd: Command, input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kalam");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("kalam output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_shot_modes_print_formats_and_exit_codes() {
    let rt = runtime();
    let cluster = start(&rt, "");
    let home = tempfile::tempdir().unwrap();
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (1, 'hello, \"world\"'), (2, NULL)");

    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["-c", "SELECT id, body FROM app.notes ORDER BY id"]);
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("│ id │ body"), "{out}");
    assert!(out.contains("│ 2  │ NULL"), "{out}");
    assert!(out.contains("(2 rows)") && out.contains("Took: "), "{out}");

    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--json", "-c", "SELECT body, id FROM app.notes WHERE id = 1"]);
    let (code, out, _) = run(cmd);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rows, serde_json::json!([{"body": "hello, \"world\"", "id": 1}]));
    assert!(out.find("\"body\"").unwrap() < out.find("\"id\"").unwrap(), "columns keep their order: {out}");

    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--csv", "-c", "SELECT id, body FROM app.notes ORDER BY id"]);
    let (_, out, _) = run(cmd);
    assert_eq!(out, "id,body\n1,\"hello, \"\"world\"\"\"\n2,\n");

    // A reader that goes away (`kalam -c … | head -1`) ends kalam quietly, without a panic.
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--csv", "-c", "SELECT id FROM app.notes"]);
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn kalam");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("kalam output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A file: statements and meta-commands run in order and stop at the first error.
    let file = home.path().join("script.sql");
    std::fs::write(
        &file,
        "-- setup\nINSERT INTO app.notes VALUES (3, 'a;b');\n\\dn\n/* block */ SELECT count(*) AS n\n  FROM app.notes;\n\
         SELECT * FROM app.missing;\nINSERT INTO app.notes VALUES (4, 'never');\n",
    )
    .unwrap();
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.arg("-f").arg(&file);
    let (code, out, err) = run(cmd);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("Inserted 1 row(s)") && out.contains("│ app ") && out.contains("│ 3 "), "{out}");
    assert!(err.contains("ERROR TABLE_NOT_FOUND"), "{err}");
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--csv", "-c", "SELECT count(*) AS n FROM app.notes WHERE id = 4"]);
    assert_eq!(run(cmd).1, "n\n0\n", "nothing after the failure ran");

    // Standard input, with a transaction kept in one request.
    let (code, out, err) = run_stdin(
        kalam(&cluster, home.path(), "alice"),
        "BEGIN;\nINSERT INTO app.notes VALUES (5, 'txn');\nCOMMIT;\nSELECT body FROM app.notes WHERE id = 5;\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("txn"), "{out}");

    // `exec` and `user create` subcommands.
    let mut cmd = kalam(&cluster, home.path(), "system");
    cmd.args(["exec", "SELECT 1 AS one"]);
    assert!(run(cmd).1.contains("(1 row)"));
    let mut cmd = kalam(&cluster, home.path(), "system");
    cmd.args(["user", "create", "--name", "dave", "--role", "service"]);
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("apikey"), "{out}");

    // Exit codes: a bad statement 1, an unreachable server 1, usage errors and bad configuration 2.
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["-c", "SELEC 1"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 1);
    assert!(err.starts_with("ERROR "), "{err}");
    let mut cmd = Command::new(bin_dir().join("kalam"));
    cmd.env("HOME", home.path()).args([
        "--host",
        &format!("http://127.0.0.1:{}", kalam_e2e::free_port()),
        "-c",
        "SELECT 1",
    ]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 1);
    assert!(err.contains("Cannot connect to KalamDB server at http://127.0.0.1:"), "{err}");
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["-c", "SELECT 1", "-f", "x.sql"]);
    assert_eq!(run(cmd).0, 2);
    let bad = home.path().join("bad.toml");
    std::fs::write(&bad, "[output]\nformat = \"xml\"\n").unwrap();
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.arg("--config").arg(&bad).args(["-c", "SELECT 1"]);
    let (code, _, err) = run(cmd);
    assert_eq!(code, 2);
    assert!(err.contains("output.format"), "{err}");
    // The default configuration file was created, private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.path().join(".kalam/config.toml")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

type PtySession = expectrl::Session<
    expectrl::session::OsProcess,
    expectrl::stream::log::LogStream<expectrl::session::OsStream, std::fs::File>,
>;

/// The CLI in a pseudo-terminal; everything read and written is logged to a file whose tail
/// a failed expectation prints.
struct Shell {
    p: PtySession,
    log: PathBuf,
}

impl Shell {
    fn spawn(cmd: Command, log: PathBuf) -> Shell {
        let p = expectrl::Session::spawn(cmd).expect("spawn kalam in a pty");
        let file = std::fs::File::create(&log).expect("pty log");
        let mut p = expectrl::session::log(p, file).expect("log the pty");
        p.set_expect_timeout(Some(Duration::from_secs(30)));
        Shell { p, log }
    }

    fn fail(&self, what: &str, e: expectrl::Error) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = log.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("expected {what}: {e}\n--- pty log (tail) ---\n{tail}");
    }

    fn expect(&mut self, what: &str) -> String {
        match self.p.expect(what) {
            Ok(c) => String::from_utf8_lossy(c.before()).into_owned(),
            Err(e) => self.fail(&format!("{what:?}"), e),
        }
    }

    fn expect_re(&mut self, re: &str) {
        if let Err(e) = self.p.expect(Regex(re)) {
            self.fail(&format!("/{re}/"), e);
        }
    }

    fn line(&mut self, line: &str) {
        self.p.send(format!("{line}\r")).expect("send line");
    }

    fn send(&mut self, text: &str) {
        self.p.send(text).expect("send");
    }

    fn ctrl_c(&mut self) {
        self.p.send(ControlCode::EndOfText).expect("send Ctrl+C");
    }

    fn prompt(&mut self) {
        self.expect("kalam> ");
    }
}

#[test]
fn the_interactive_shell_through_a_pty() {
    let rt = runtime();
    let cluster = start(&rt, "[limits]\nstatement_timeout_seconds = 5\n");
    let home = tempfile::tempdir().unwrap();
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (1, 'hello'), (2, '数据库 Unicode ✓')");
    let values: Vec<String> = (0..2000).map(|i| format!("({i})")).collect();
    sql(&rt, &cluster, "system", &format!("INSERT INTO app.big VALUES {}", values.join(",")));

    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.arg("--no-color");
    let mut sh = Shell::spawn(cmd, home.path().join(format!("pty-{}.log", line!())));
    sh.expect("Acting user: alice");
    sh.expect("Type \\help for help, \\quit to exit");
    sh.prompt();

    // Meta-commands.
    sh.line("\\dn");
    sh.expect("app");
    sh.expect("(1 row)");
    sh.prompt();
    sh.line("\\d app.notes");
    sh.expect("body");
    sh.prompt();
    sh.line("\\nope");
    sh.expect("Unknown command: \\nope. Type \\help for help.");
    sh.prompt();

    // A statement over several lines, then keyword, table and column completion: each TAB
    // must have completed, or the statement would fail.
    sh.line("SELECT id,");
    sh.expect("    -> ");
    sh.line("  body FROM app.notes ORDER BY id;");
    sh.expect("数据库 Unicode ✓");
    sh.expect("(2 rows)");
    sh.prompt();
    sh.send("sel\t");
    sh.send(" * FROM app.no\t");
    sh.send(" WHERE bod\t");
    sh.line(" = 'hello';");
    sh.expect("(1 row)");
    sh.prompt();

    // Output formats and timing.
    sh.line("\\format json");
    sh.expect("Output format is json");
    sh.line("SELECT body FROM app.notes WHERE id = 1;");
    sh.expect("\"body\": \"hello\"");
    sh.line("\\format csv");
    sh.line("SELECT id, body FROM app.notes WHERE id = 1;");
    sh.expect("1,hello");
    sh.line("\\format table");
    sh.line("\\timing off");
    sh.expect("Timing is off");
    sh.prompt();

    // Ctrl+C clears pending input, and abandons a running statement without ending the shell.
    sh.send("SELECT 1");
    sh.ctrl_c();
    sh.expect("Command cancelled");
    sh.prompt();
    sh.line("SELECT count(*) FROM app.big a, app.big b, app.big c WHERE a.id + b.id + c.id >= 0;");
    sh.expect_re(r"[0-9]\.[0-9]s");
    sh.ctrl_c();
    sh.expect("Query cancelled");
    sh.prompt();
    sh.line("SELECT 41 + 1 AS answer;");
    sh.expect("42");
    sh.prompt();

    // A subscription prints above the prompt; \pause holds its events until \continue, and
    // Ctrl+C at the prompt ends it.
    sh.line("\\subscribe SELECT * FROM app.notes");
    sh.expect("Subscribed to app.notes");
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (10, 'live one')");
    sh.expect("INSERT {\"id\":10,\"body\":\"live one\"");
    sh.line("\\pause");
    sh.expect("Paused: 0 event(s) held");
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (11, 'quiet-row')");
    // The CLI says how many events it holds; once it holds the new one, nothing was printed.
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        sh.line("\\pause");
        printed.push_str(&sh.expect("Paused: "));
        if sh.expect(" event(s) held") == "1" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the CLI never held the event: {printed}");
    }
    assert!(!printed.contains("quiet-row"), "a paused subscription printed: {printed}");
    sh.line("\\continue");
    sh.expect("INSERT {\"id\":11,\"body\":\"quiet-row\"");
    sh.expect("Printed 1 held event(s); printing resumed");
    // Ctrl+C reaches the line editor only at the prompt (between prompts it is the signal).
    sh.prompt();
    sh.ctrl_c();
    sh.expect("✓ Unsubscribed");
    sh.prompt();

    sh.line("\\q");
    sh.p.get_process_mut().wait().expect("kalam exits");

    // History kept the multi-line statement as one entry.
    let history = std::fs::read_to_string(home.path().join(".kalam/history")).unwrap();
    assert!(history.contains("SELECT id,"), "{history}");
    assert!(history.contains("\\format json"), "{history}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.path().join(".kalam/history")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second shell: Ctrl+D says goodbye.
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.arg("--no-color");
    let mut sh = Shell::spawn(cmd, home.path().join(format!("pty-{}.log", line!())));
    sh.prompt();
    sh.send("\x04");
    sh.expect("Goodbye!");
}

#[test]
fn kalam_subscribe_prints_changes_until_ctrl_c() {
    let rt = runtime();
    let cluster = start(&rt, "");
    let home = tempfile::tempdir().unwrap();
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (1, 'before')");
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--no-color", "subscribe", "SELECT * FROM app.notes", "--last-rows", "5"]);
    let mut sh = Shell::spawn(cmd, home.path().join(format!("pty-{}.log", line!())));
    sh.expect("Subscribed to app.notes");
    sh.expect("Initial data: 1 row");
    sh.expect("{\"id\":1,\"body\":\"before\"");
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (2, 'after')");
    sh.expect("INSERT {\"id\":2,\"body\":\"after\"");
    sql(&rt, &cluster, "alice", "UPDATE app.notes SET body = 'changed' WHERE id = 2");
    sh.expect_re(r#"UPDATE \{"id":2,"body":"after".*\} => \{"id":2,"body":"changed""#);
    sql(&rt, &cluster, "alice", "DELETE FROM app.notes WHERE id = 1");
    sh.expect("DELETE {\"id\":1");
    // A kalam-lived restart drops the socket: the CLI reconnects and resumes after the last
    // change it printed, so the next change is printed once and nothing is repeated.
    // The change is committed while kalam-lived is down, so it can only arrive through the
    // resume.
    let lived = rt.block_on(cluster.running_pid("kalam-lived"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(lived as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (3, 'while away')");
    sh.expect("Connection lost");
    rt.block_on(cluster.running_pid_other_than("kalam-lived", Some(lived)));
    sh.expect("Reconnected; resumed after commit_seq");
    let between = sh.expect("INSERT {\"id\":3,\"body\":\"while away\"");
    assert!(!between.contains("INSERT") && !between.contains("DELETE"), "a change was printed again: {between}");
    sh.ctrl_c();
    sh.expect("Unsubscribing...");
    sh.expect("✓ Unsubscribed");
    let status = sh.p.get_process_mut().wait().expect("kalam exits");
    let status = format!("{status:?}");
    assert!(status.starts_with("Exited(") && status.ends_with(", 0)"), "{status}");

    // SUBSCRIBE TO in one-shot mode follows the same path.
    let mut cmd = kalam(&cluster, home.path(), "alice");
    cmd.args(["--no-color", "-c", "SUBSCRIBE TO app.notes WHERE id = 2 OPTIONS (last_rows = 1)"]);
    let mut sh = Shell::spawn(cmd, home.path().join(format!("pty-{}.log", line!())));
    sh.expect("Initial data: 1 row");
    sh.expect("\"body\":\"changed\"");
    sh.ctrl_c();
    sh.expect("✓ Unsubscribed");
}

#[test]
fn kalam_admin_talks_to_the_daemons_sockets() {
    let rt = runtime();
    let cluster = start(&rt, "");
    let home = tempfile::tempdir().unwrap();
    let admin = |args: &[&str]| {
        let mut cmd = Command::new(bin_dir().join("kalam"));
        cmd.env("HOME", home.path()).arg("admin").arg("--data-dir").arg(cluster.data_dir()).args(args);
        run(cmd)
    };
    let (code, out, err) = admin(&["processes"]);
    assert_eq!(code, 0, "{out}{err}");
    for daemon in ["kalamd", "kalam-flushd", "kalam-lived"] {
        assert!(out.lines().any(|l| l.contains(daemon) && l.contains("running")), "{daemon}: {out}");
    }

    sql(&rt, &cluster, "alice", "INSERT INTO app.notes VALUES (1, 'x')");
    let job = rt.block_on(kalam_e2e::flush(&cluster.client("system"), "app.notes"));
    rt.block_on(kalam_e2e::wait_status(&cluster.client("system"), &job, "completed"));
    let (code, out, _) = admin(&["jobs", "--limit", "5"]);
    assert_eq!(code, 0);
    assert!(out.contains(&job), "{out}");
    let (code, out, _) = admin(&["flush-status"]);
    assert_eq!(code, 0);
    assert!(out.contains("notes"), "{out}");
    let (code, _, err) = admin(&["retry", "no-such-job"]);
    assert_eq!(code, 1);
    assert!(err.contains("ERROR "), "{err}");

    let mut ws = rt.block_on(cluster.client("alice").connect_live()).expect("ws");
    rt.block_on(ws.subscribe("s1", "SELECT * FROM app.notes")).unwrap();
    let live_id = rt.block_on(async {
        let ack = ws.next_message().await.unwrap().unwrap();
        ack["live_id"].as_str().unwrap().to_owned()
    });
    let (code, out, err) = admin(&["kill-live", &live_id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&live_id), "{out}");
    let gone = rt.block_on(ws.next_message()).unwrap().unwrap();
    assert_eq!(gone["type"], "unsubscribed", "{gone}");
    assert_eq!(gone["reason"], "killed");

    // Without a server's sockets the error says where it looked and why.
    let mut cmd = Command::new(bin_dir().join("kalam"));
    cmd.env("HOME", home.path()).args(["admin", "--data-dir"]).arg(PathBuf::from(home.path())).arg("processes");
    let (code, _, err) = run(cmd);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach kalam-supervisor's admin socket"), "{err}");
}
