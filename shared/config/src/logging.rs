//! Per-process logging: a daily-rotated file `<logging.dir>/<process>.<date>.log` (bounded by
//! `logging.max_files`) plus stderr when `log_to_console` is set.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LoggingConfig;

/// Installs the global subscriber for `process`. Keep the guard alive until exit, or buffered
/// log lines are lost.
pub fn init(cfg: &LoggingConfig, process: &str) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_env("KALAMDB_LOG_FILTER").unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let console = cfg.log_to_console.then(|| {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt::layer().compact().with_ansi(ansi).with_writer(std::io::stderr)
    });
    let appender = std::fs::create_dir_all(&cfg.dir).ok().and_then(|_| {
        RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(process)
            .filename_suffix("log")
            .max_log_files(cfg.max_files.max(1))
            .build(&cfg.dir)
            .ok()
    });
    let (file, guard) = match appender {
        Some(a) => {
            let (writer, guard) = tracing_appender::non_blocking(a);
            (Some(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer)), Some(guard))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry().with(filter).with(console).with(file).try_init();
    guard
}
