//! Per-process logging: `<logging.dir>/<process>.log`, rotated at `logging.max_file_size` into
//! `<process>.log.1` (newest) … `<process>.log.<max_files>` (oldest; older ones are deleted),
//! rotated files older than `max_age_days` removed, plus stderr when `log_to_console` is set.
//! Lines are written by a background thread (tracing-appender), so logging never blocks on disk.

use std::path::Path;
use std::time::{Duration, SystemTime};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{LogFormat, LoggingConfig};

/// How often rotated files are checked against `max_age_days`.
const AGE_SWEEP_PERIOD: Duration = Duration::from_secs(3600);

/// Installs the global subscriber for `process`. Keep the guard alive until exit, or buffered
/// log lines are lost.
pub fn init(cfg: &LoggingConfig, process: &str) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_env("KALAMDB_LOG_FILTER").unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let console = cfg.log_to_console.then(|| {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        format_layer(cfg.format, std::io::stderr, ansi)
    });
    let (file, guard) = match open_file(cfg, process) {
        Ok(writer) => {
            let (writer, guard) = tracing_appender::non_blocking(writer);
            (Some(format_layer(cfg.format, writer, false)), Some(guard))
        }
        Err(e) => {
            eprintln!("{process}: cannot open its log file in {}: {e}; logging to stderr only", cfg.dir.display());
            (None, None)
        }
    };
    let _ = tracing_subscriber::registry().with(filter).with(console).with(file).try_init();
    guard
}

fn format_layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Compact => layer.compact().boxed(),
        LogFormat::Pretty => layer.pretty().boxed(),
        LogFormat::Json => layer.json().boxed(),
    }
}

/// The size-rotated log file of `process`; starts the age sweep of its rotated files.
pub fn open_file(cfg: &LoggingConfig, process: &str) -> std::io::Result<FileRotate<AppendCount>> {
    std::fs::create_dir_all(&cfg.dir)?;
    let path = cfg.dir.join(format!("{process}.log"));
    // file-rotate panics on a zero limit; validation refuses one, this keeps it so.
    let writer = FileRotate::new(
        &path,
        AppendCount::new(cfg.max_files.max(1)),
        ContentLimit::BytesSurpassed(cfg.max_file_size.max(1) as usize),
        Compression::None,
        None,
    );
    if cfg.max_age_days > 0 {
        let (dir, process) = (cfg.dir.clone(), process.to_owned());
        let max_age = Duration::from_secs(cfg.max_age_days * 86_400);
        let _ = std::thread::Builder::new().name("log-retention".into()).spawn(move || {
            loop {
                remove_expired(&dir, &process, max_age);
                std::thread::sleep(AGE_SWEEP_PERIOD);
            }
        });
    }
    Ok(writer)
}

/// Deletes `<process>.log.<n>` files in `dir` last written more than `max_age` ago. The current
/// file is never touched.
pub fn remove_expired(dir: &Path, process: &str, max_age: Duration) -> usize {
    let prefix = format!("{process}.log.");
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok());
        if age.is_some_and(|a| a > max_age) && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn config(dir: &Path, max_file_size: u64, max_files: usize) -> LoggingConfig {
        LoggingConfig { dir: dir.to_path_buf(), max_file_size, max_files, max_age_days: 0, ..Default::default() }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = open_file(&config(dir.path(), 1000, 3), "kalamd").unwrap();
        for i in 0..100 {
            writeln!(w, "line {i:04} {}", "x".repeat(90)).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(names(dir.path()), ["kalamd.log", "kalamd.log.1", "kalamd.log.2", "kalamd.log.3"]);
        for name in names(dir.path()) {
            let len = std::fs::metadata(dir.path().join(&name)).unwrap().len();
            // BytesSurpassed: a file rotates after the write that crosses the limit.
            assert!(len <= 1000 + 100, "{name} is {len} bytes");
        }
        // The newest line is in the current file or the one just rotated; the oldest lines are gone.
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!((read("kalamd.log") + &read("kalamd.log.1")).contains("line 0099"));
        assert!(names(dir.path()).iter().all(|n| !read(n).contains("line 0000")));
    }

    #[test]
    fn expired_rotated_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kalamd.log", "kalamd.log.1", "kalamd.log.2", "kalamd.log.x", "kalam-lived.log.1"] {
            std::fs::write(dir.path().join(name), "old").unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        for name in ["kalamd.log", "kalamd.log.2", "kalamd.log.x", "kalam-lived.log.1"] {
            std::fs::File::options().write(true).open(dir.path().join(name)).unwrap().set_modified(old).unwrap();
        }
        assert_eq!(remove_expired(dir.path(), "kalamd", Duration::from_secs(30 * 86_400)), 1);
        assert_eq!(names(dir.path()), ["kalam-lived.log.1", "kalamd.log", "kalamd.log.1", "kalamd.log.x"]);
    }
}
