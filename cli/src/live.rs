//! Printing a live subscription (cli.md §1.8), in the foreground (`kalam subscribe`, one-shot
//! modes) or behind the interactive prompt (`\subscribe`, with `\pause` / `\continue`); both
//! run the same task.

use std::collections::VecDeque;
use std::sync::Arc;

use kalam_link::{ChangeEvent, Row, SubscriptionManager};
use tokio::sync::{Mutex, Notify, oneshot};

/// Events kept while printing is paused (cli.md §1.5).
pub const MAX_PAUSED_EVENTS: usize = 10_000;

fn now() -> String {
    chrono::Local::now().format("%H:%M:%S%.3f").to_string()
}

fn rows_text(rows: &[Row]) -> String {
    rows.iter().map(Row::to_string).collect::<Vec<_>>().join(", ")
}

/// The table a subscription's SQL reads (`FROM <name>`), for the banner.
pub fn table_of(sql: &str) -> Option<String> {
    let mut words = sql.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("FROM") {
            return words.next().map(|t| t.trim_end_matches(';').to_owned());
        }
    }
    None
}

/// The lines an event prints as; `None` for events that print nothing.
pub fn event_lines(event: &ChangeEvent, table: &str) -> Option<String> {
    Some(match event {
        ChangeEvent::Ack { live_id, .. } => {
            format!("Subscribed to {table} (live_id {live_id}). Press Ctrl+C to stop.")
        }
        ChangeEvent::InitialData { rows, has_more, .. } => {
            let n = rows.len();
            let mut s = format!("Initial data: {n} row{}", if n == 1 { "" } else { "s" });
            if *has_more {
                s.push_str(" (more rows exist than the snapshot limit)");
            }
            for r in rows {
                s.push_str(&format!("\n  {r}"));
            }
            s
        }
        ChangeEvent::Insert { rows, .. } => format!("[{}] INSERT {}", now(), rows_text(rows)),
        ChangeEvent::Update { rows, old_rows, .. } => {
            format!("[{}] UPDATE {} => {}", now(), rows_text(old_rows), rows_text(rows))
        }
        ChangeEvent::Delete { old_rows, .. } => format!("[{}] DELETE {}", now(), rows_text(old_rows)),
        ChangeEvent::Error { code, message, .. } => format!("[{}] ERROR {code}: {message}", now()),
        ChangeEvent::Reconnecting { attempt, retry_in, reason, .. } => format!(
            "[{}] Connection lost ({reason}); reconnecting in {:.1}s (attempt {attempt})",
            now(),
            retry_in.as_secs_f64()
        ),
        ChangeEvent::Resumed { from_seq, .. } => {
            format!("[{}] Reconnected; resumed after commit_seq {from_seq}", now())
        }
        ChangeEvent::ResumeExpired { message, .. } => {
            format!("[{}] RESUME_EXPIRED: {message} (changes were missed; subscribing again)", now())
        }
        ChangeEvent::Unsubscribed { reason, .. } if reason == "client_request" => "✓ Unsubscribed".to_owned(),
        ChangeEvent::Unsubscribed { reason, .. } => format!("Subscription ended by server ({reason})"),
        ChangeEvent::Unknown { raw } => format!("[{}] {raw}", now()),
    })
}

/// Where a subscription's lines go: stdout, or rustyline's external printer in the shell.
pub type Printer = Box<dyn FnMut(String) + Send>;

/// Lines held while printing is paused.
#[derive(Default)]
struct Held {
    paused: bool,
    lines: VecDeque<String>,
}

/// A subscription being printed by its own task.
pub struct Live {
    held: Arc<Mutex<Held>>,
    resumed: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    /// True when the subscription failed (refused, or the reconnects ran out).
    task: tokio::task::JoinHandle<bool>,
}

impl Live {
    /// Starts printing `sub`'s events (must run inside the runtime).
    pub fn start(sub: SubscriptionManager, table: String, print: Printer) -> Live {
        let held = Arc::new(Mutex::new(Held::default()));
        let resumed = Arc::new(Notify::new());
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(print_events(sub, table, print, held.clone(), resumed.clone(), stop_rx));
        Live { held, resumed, stop: Some(stop), task }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Holds further lines; returns how many are held already.
    pub async fn pause(&self) -> usize {
        let mut held = self.held.lock().await;
        held.paused = true;
        held.lines.len()
    }

    /// Prints what was held (with `print`, under the lock, so no newer line comes first) and
    /// resumes printing; returns how many lines were held.
    pub async fn resume(&self, mut print: impl FnMut(&str)) -> usize {
        let mut held = self.held.lock().await;
        let n = held.lines.len();
        for line in held.lines.drain(..) {
            print(&line);
        }
        held.paused = false;
        drop(held);
        self.resumed.notify_one();
        n
    }

    /// Unsubscribes and waits for the task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits for Ctrl+C on `sigint` (then unsubscribes) or the end of the subscription; true
    /// when it failed. The caller registers `sigint` before the subscription starts printing,
    /// so a Ctrl+C after the first line is never the default "terminate".
    pub async fn run_until_interrupted(mut self, mut sigint: Option<tokio::signal::unix::Signal>) -> bool {
        let interrupted = async {
            match &mut sigint {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            failed = &mut self.task => return failed.unwrap_or(true),
            _ = interrupted => {}
        }
        self.stop().await;
        false
    }
}

/// The task behind [`Live`]: prints each event, holds lines while paused, and when the held
/// lines reach [`MAX_PAUSED_EVENTS`] stops taking events (the subscription's own buffer and the
/// server's back-pressure then apply; nothing is dropped here).
async fn print_events(
    mut sub: SubscriptionManager,
    table: String,
    mut print: Printer,
    held: Arc<Mutex<Held>>,
    resumed: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) -> bool {
    let mut failed = false;
    let mut ended_by_server = false;
    loop {
        let event = tokio::select! {
            e = sub.next() => e,
            _ = &mut stop => break,
        };
        let line = match event {
            Some(Ok(e)) => {
                match &e {
                    ChangeEvent::Error { code, .. } => failed |= code != "SLOW_CONSUMER",
                    ChangeEvent::Unsubscribed { reason, .. } => ended_by_server = reason != "client_request",
                    _ => {}
                }
                event_lines(&e, &table)
            }
            Some(Err(e)) => {
                failed = true;
                Some(format!("ERROR: {e}"))
            }
            None => {
                if !ended_by_server {
                    print("Subscription ended by server".into());
                }
                return failed;
            }
        };
        let Some(line) = line else { continue };
        loop {
            let mut h = held.lock().await;
            if !h.paused {
                print(line);
                break;
            }
            if h.lines.len() < MAX_PAUSED_EVENTS {
                h.lines.push_back(line);
                break;
            }
            drop(h);
            tokio::select! {
                _ = resumed.notified() => {}
                _ = &mut stop => {
                    print("Unsubscribing...".into());
                    let _ = sub.close().await;
                    print("✓ Unsubscribed".into());
                    return failed;
                }
            }
        }
    }
    print("Unsubscribing...".into());
    let _ = sub.close().await;
    print("✓ Unsubscribed".into());
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_the_spec_shows() {
        let row: Row = serde_json::from_str(r#"{"id":3,"content":"New message"}"#).unwrap();
        let old: Row = serde_json::from_str(r#"{"id":3,"content":"Old"}"#).unwrap();
        let s = "s".to_owned();
        let e =
            ChangeEvent::Insert { subscription_id: s.clone(), rows: vec![row.clone()], commit_seq: 1, timestamp: None };
        let line = event_lines(&e, "app.m").unwrap();
        assert!(line.starts_with('[') && line.ends_with(r#"] INSERT {"id":3,"content":"New message"}"#), "{line}");
        let e = ChangeEvent::Update {
            subscription_id: s.clone(),
            rows: vec![row],
            old_rows: vec![old],
            commit_seq: 2,
            timestamp: None,
        };
        assert!(
            event_lines(&e, "app.m")
                .unwrap()
                .ends_with(r#"UPDATE {"id":3,"content":"Old"} => {"id":3,"content":"New message"}"#)
        );
        let e =
            ChangeEvent::InitialData { subscription_id: s.clone(), rows: vec![], has_more: false, commit_seq: Some(1) };
        assert_eq!(event_lines(&e, "app.m").unwrap(), "Initial data: 0 rows");
        let e = ChangeEvent::Ack { subscription_id: s, live_id: "c/s".into() };
        assert_eq!(event_lines(&e, "app.m").unwrap(), "Subscribed to app.m (live_id c/s). Press Ctrl+C to stop.");
        assert_eq!(table_of("SELECT * FROM app.m WHERE x = 1").as_deref(), Some("app.m"));
    }
}
