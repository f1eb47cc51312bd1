//! Printing a live subscription (cli.md §1.8), in the foreground (`kalam subscribe`, one-shot
//! modes) or behind the interactive prompt (`\subscribe`, with `\pause` / `\continue`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kalam_link::{ChangeEvent, Row, SubscriptionManager};
use tokio::sync::Mutex;

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

/// How a foreground subscription ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Ctrl+C: unsubscribed.
    Interrupted,
    /// The server ended it (or refused it).
    ByServer { failed: bool },
}

/// Prints `sub`'s events to stdout until Ctrl+C or the end of the subscription.
pub async fn run_foreground(mut sub: SubscriptionManager, table: &str) -> Ended {
    use std::io::Write;
    let mut stdout = std::io::stdout();
    let mut failed = false;
    loop {
        let event = tokio::select! {
            e = sub.next() => e,
            _ = tokio::signal::ctrl_c() => {
                println!("Unsubscribing...");
                let _ = sub.close().await;
                println!("✓ Unsubscribed");
                return Ended::Interrupted;
            }
        };
        match event {
            Some(Ok(e)) => {
                failed |= matches!(&e, ChangeEvent::Error { .. })
                    && !matches!(&e, ChangeEvent::Error { code, .. } if code == "SLOW_CONSUMER");
                if let Some(text) = event_lines(&e, table) {
                    let _ = writeln!(stdout, "{text}");
                    let _ = stdout.flush();
                }
            }
            Some(Err(e)) => {
                eprintln!("ERROR: {e}");
                failed = true;
            }
            None => {
                println!("Subscription ended by server");
                return Ended::ByServer { failed };
            }
        }
    }
}

/// Where background lines go (rustyline's external printer in the shell).
pub type Printer = Box<dyn FnMut(String) + Send>;

/// A subscription printing behind the prompt.
pub struct Background {
    paused: Arc<AtomicBool>,
    buffer: Arc<Mutex<Paused>>,
    finished: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Paused {
    lines: VecDeque<String>,
    dropped: u64,
}

impl Background {
    pub fn start(sub: SubscriptionManager, table: String, mut print: Printer) -> Background {
        let paused = Arc::new(AtomicBool::new(false));
        let buffer = Arc::new(Mutex::new(Paused::default()));
        let finished = Arc::new(AtomicBool::new(false));
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (p, b, f) = (paused.clone(), buffer.clone(), finished.clone());
        let task = tokio::spawn(async move {
            let mut sub = sub;
            loop {
                let event = tokio::select! {
                    e = sub.next() => e,
                    _ = &mut stop_rx => {
                        print("Unsubscribing...".into());
                        let _ = sub.close().await;
                        print("✓ Unsubscribed".into());
                        break;
                    }
                };
                let line = match event {
                    Some(Ok(e)) => event_lines(&e, &table),
                    Some(Err(e)) => Some(format!("ERROR: {e}")),
                    None => {
                        print("Subscription ended by server".into());
                        break;
                    }
                };
                let Some(line) = line else { continue };
                if p.load(Ordering::SeqCst) {
                    let mut held = b.lock().await;
                    if held.lines.len() < MAX_PAUSED_EVENTS {
                        held.lines.push_back(line);
                    } else {
                        held.dropped += 1;
                    }
                } else {
                    print(line);
                }
            }
            f.store(true, Ordering::SeqCst);
        });
        Background { paused, buffer, finished, stop: Some(stop), task }
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Resumes printing; returns what was held while paused.
    pub async fn resume(&self) -> (Vec<String>, u64) {
        let mut held = self.buffer.lock().await;
        self.paused.store(false, Ordering::SeqCst);
        let dropped = std::mem::take(&mut held.dropped);
        (held.lines.drain(..).collect(), dropped)
    }

    /// Unsubscribes and waits for the task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
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
