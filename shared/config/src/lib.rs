//! kalam-config: the one typed configuration shared by the four processes.
//!
//! In: built-in defaults, then `kalam.toml`, then `KALAMDB_*` environment variables, then
//! command-line flags (each layer wins over the previous one). Out: [`KalamConfig`], with every
//! path made absolute by [`KalamConfig::resolve_paths`] (kalam-supervisor does it once and hands
//! absolute paths to the daemons through the environment), and [`logging::init`], which sets up
//! the per-process rotating log file and stderr output.

pub mod logging;
#[cfg(test)]
mod reference;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("invalid configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("cannot resolve working directory: {0}")]
    WorkingDir(#[source] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub node_id: String,
    /// Origins browsers may call the API from: `*` for any, or exact origins such as
    /// `https://app.example.com`; an empty list turns CORS off.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { host: "127.0.0.1".into(), port: 8080, node_id: "node-1".into(), cors_allowed_origins: vec!["*".into()] }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Loopback requests without credentials act as `localhost_default_user`.
    pub localhost_bypass: bool,
    pub localhost_default_user: String,
    /// HS256 secret of accepted JWTs (empty = JWT authentication off). At least 32 bytes.
    pub jwt_secret: String,
    /// A valid JWT naming a user that does not exist creates it (role `user`).
    pub jwt_auto_create_users: bool,
    /// Days a soft-deleted user can be restored before its data is removed.
    pub user_deletion_grace_period_days: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            localhost_bypass: true,
            localhost_default_user: "system".into(),
            jwt_secret: String::new(),
            jwt_auto_create_users: false,
            user_deletion_grace_period_days: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// Holds `rocksdb/`, `storage/`, `logs/`, `run/` and `checkpoints/`.
    pub data_dir: PathBuf,
    /// Empty = `<data_dir>/rocksdb`.
    pub rocksdb_path: PathBuf,
    /// Base directory of storage `local`; empty = `<data_dir>/storage`.
    pub default_storage_path: PathBuf,
    /// Change-log records older than this are trimmed.
    pub change_log_retention_seconds: u64,
    /// Parquet compression of flushed files: `none`, `snappy` or `zstd`.
    pub compression: String,
    pub rocksdb: RocksDbConfig,
}

/// RocksDB options kalamd opens its database with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RocksDbConfig {
    /// RocksDB's own info `LOG` files kept (the current one plus rotated `LOG.old.*`).
    pub keep_log_file_num: usize,
    /// Size at which RocksDB starts a new info `LOG` file, in bytes.
    pub max_log_file_size: usize,
}

impl Default for RocksDbConfig {
    fn default() -> Self {
        Self { keep_log_file_num: 10, max_log_file_size: 16 * 1024 * 1024 }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            rocksdb_path: PathBuf::new(),
            default_storage_path: PathBuf::new(),
            change_log_retention_seconds: 3600,
            compression: "snappy".into(),
            rocksdb: RocksDbConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlushConfig {
    /// Node bits of `SNOWFLAKE_ID()`, 0–1023.
    pub node_id: u16,
    pub default_row_limit: u64,
    pub default_time_interval: u64,
    /// How often kalam-flushd evaluates time triggers.
    pub check_interval_seconds: u64,
    pub max_concurrent_jobs: usize,
    /// Attempts of a job beyond the first (a job resumed after a crash starts a new attempt);
    /// after `max_retries + 1` attempts it fails as a dead letter.
    pub max_retries: u32,
    /// Delay before the first retry of a failed attempt; doubles with each attempt.
    pub retry_base_delay_ms: u64,
    /// Longest delay between attempts.
    pub retry_max_delay_ms: u64,
    /// Rows per Parquet file: a larger group (one user, or a SHARED table) gets several files.
    pub max_rows_per_file: u64,
    /// Users per USER-table flush job (0 = all): a larger flush continues in follow-up jobs.
    pub max_users_per_job: u64,
    /// After a table's flush is dead-lettered, automatic triggers wait this long before they
    /// create a new job for it (manual FLUSH TABLE and RETRY JOB do not wait).
    pub dead_letter_cooldown_seconds: u64,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            default_row_limit: 10_000,
            default_time_interval: 300,
            check_interval_seconds: 1,
            max_concurrent_jobs: 4,
            max_retries: 5,
            retry_base_delay_ms: 1000,
            retry_max_delay_ms: 60_000,
            max_rows_per_file: 1_000_000,
            max_users_per_job: 0,
            dead_letter_cooldown_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSocketConfig {
    pub heartbeat_interval_seconds: u64,
    pub client_timeout_seconds: u64,
    pub max_subscriptions_per_connection: usize,
    /// Messages queued for one client before it is closed as a slow consumer.
    pub max_pending_messages: usize,
    /// Most rows one `initial_data` snapshot carries (`has_more` says it was cut).
    pub max_initial_rows: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_seconds: 5,
            client_timeout_seconds: 10,
            max_subscriptions_per_connection: 50,
            max_pending_messages: 10_000,
            max_initial_rows: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// SQL requests per second per principal of role `user` (other roles are not limited).
    pub max_queries_per_sec: u32,
    /// Client messages per second per WebSocket connection of a `user`-role principal.
    pub max_messages_per_sec: u32,
    /// Active live subscriptions per acting user, over all connections.
    pub max_subscriptions_per_user: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { max_queries_per_sec: 100, max_messages_per_sec: 50, max_subscriptions_per_user: 100 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryConfig {
    /// Entries of the global plan cache (0 turns it off).
    pub plan_cache_size: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { plan_cache_size: 1000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest HTTP body and WebSocket message, in bytes.
    pub max_message_size: usize,
    /// Most statements in one request.
    pub max_statements_per_request: usize,
    /// Longest a query (a SELECT, or the SELECT of an INSERT … SELECT) may run before it is
    /// cancelled, in seconds (0 = no limit).
    pub statement_timeout_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_message_size: 64 * 1024 * 1024, max_statements_per_request: 1000, statement_timeout_seconds: 30 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// DELETED_RETENTION of tables created without one.
    pub default_deleted_retention_hours: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { default_deleted_retention_hours: 168 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    /// TTL of STREAM tables created without one.
    pub default_ttl_seconds: u64,
    /// MAX_BUFFER of STREAM tables created without one.
    pub default_max_buffer: u64,
    /// How often expired STREAM rows are evicted.
    pub eviction_interval_seconds: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { default_ttl_seconds: 10, default_max_buffer: 10_000, eviction_interval_seconds: 1 }
    }
}

/// How kalam-supervisor restarts a daemon that exits (ARCHITECTURE.md: 100 ms doubling to 30 s,
/// reset after 60 s healthy; more than 5 restarts in 60 s and it gives up on the daemon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupervisorConfig {
    /// First restart delay; doubles per restart.
    pub restart_backoff_min_ms: u64,
    /// Longest restart delay.
    pub restart_backoff_max_ms: u64,
    /// More restarts than this within `restart_window_seconds` and the daemon is given up.
    pub max_restarts: usize,
    pub restart_window_seconds: u64,
    /// How often a running daemon's `health` is asked.
    pub health_interval_ms: u64,
    /// Consecutive unanswered health checks after which a daemon counts as hung and is killed
    /// and restarted.
    pub health_misses: u32,
    /// Resident memory above which a daemon is restarted (MiB, 0 = no limit), per daemon.
    pub kalamd_memory_limit_mb: u64,
    pub flushd_memory_limit_mb: u64,
    pub lived_memory_limit_mb: u64,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            restart_backoff_min_ms: 100,
            restart_backoff_max_ms: 30_000,
            max_restarts: 5,
            restart_window_seconds: 60,
            health_interval_ms: 2_000,
            health_misses: 3,
            kalamd_memory_limit_mb: 0,
            flushd_memory_limit_mb: 0,
            lived_memory_limit_mb: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    pub level: String,
    /// Empty = `<data_dir>/logs`.
    pub dir: PathBuf,
    pub log_to_console: bool,
    /// Line format of the log file and of stderr.
    pub format: LogFormat,
    /// Size in bytes at which a process's log file is rotated.
    pub max_file_size: u64,
    /// Rotated files kept per process.
    pub max_files: usize,
    /// Rotated files older than this are removed (0 = kept until `max_files` pushes them out).
    pub max_age_days: u64,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            dir: PathBuf::new(),
            log_to_console: true,
            format: LogFormat::Compact,
            max_file_size: 100 * 1024 * 1024,
            max_files: 10,
            max_age_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, fields inline.
    Compact,
    /// Multi-line, for reading by eye.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KalamConfig {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub flush: FlushConfig,
    pub websocket: WebSocketConfig,
    pub rate_limit: RateLimitConfig,
    pub limits: LimitsConfig,
    pub query: QueryConfig,
    pub logging: LoggingConfig,
    pub retention: RetentionConfig,
    pub stream: StreamConfig,
    pub supervisor: SupervisorConfig,
}

/// Environment variables with their own spelling; everything else is `KALAMDB_<SECTION>_<KEY>`.
const ENV_ALIASES: [(&str, &str); 10] = [
    ("host", "server.host"),
    ("port", "server.port"),
    ("data_dir", "storage.data_dir"),
    ("log_level", "logging.level"),
    ("log_dir", "logging.dir"),
    ("log_to_console", "logging.log_to_console"),
    ("max_connections", "performance.max_connections"),
    ("jwt_secret", "auth.jwt_secret"),
    ("localhost_bypass", "auth.localhost_bypass"),
    ("server_host", "server.host"),
];

/// `*`, or `<scheme>://<host>[:<port>]` without a path (what browsers send in `Origin`).
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

/// The dotted key that `KALAMDB_<lower>` sets. Section names may contain `_` (`rate_limit`) and
/// sections nest (`storage.rocksdb`), so the split follows the sections the typed config has.
fn env_key(lower: &str) -> String {
    if let Some((_, key)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == lower) {
        return (*key).to_owned();
    }
    let defaults = serde_json::to_value(KalamConfig::default()).unwrap_or_default();
    let mut node = &defaults;
    let (mut path, mut rest) = (String::new(), lower);
    'descend: loop {
        if let Some(map) = node.as_object() {
            // A key of this section wins over a nested section sharing its prefix
            // (`storage.rocksdb_path`, not `storage.rocksdb.path`).
            if map.get(rest).is_some_and(|v| !v.is_object()) {
                break;
            }
            // Longest section name first, so `storage_rocksdb_x` is not read as `storage.rocksdb_x`.
            let mut sections: Vec<&String> = map.iter().filter(|(_, v)| v.is_object()).map(|(k, _)| k).collect();
            sections.sort_by_key(|k| std::cmp::Reverse(k.len()));
            for section in sections {
                if let Some(tail) = rest.strip_prefix(section.as_str()).and_then(|t| t.strip_prefix('_')) {
                    path.push_str(section);
                    path.push('.');
                    node = &map[section];
                    rest = tail;
                    continue 'descend;
                }
            }
        }
        break;
    }
    if path.is_empty() {
        // Not a known section: keep the generic `<section>_<key>` reading, so that figment
        // reports or ignores it like any other unknown key.
        return match lower.split_once('_') {
            Some((section, key)) => format!("{section}.{key}"),
            None => lower.to_owned(),
        };
    }
    path + rest
}

/// Every leaf key of the typed configuration, dotted (`storage.rocksdb.keep_log_file_num`),
/// with its default value.
pub fn default_keys() -> Vec<(String, serde_json::Value)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v.as_object() {
            Some(map) => {
                for (k, child) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, child, out);
                }
            }
            None => out.push((prefix.to_owned(), v.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", &serde_json::to_value(KalamConfig::default()).unwrap_or_default(), &mut out);
    out
}

impl KalamConfig {
    /// Loads defaults → `file` (if it exists) → `KALAMDB_*` environment. Flags are merged by the
    /// caller with [`KalamConfig::merge_flags`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(KalamConfig::default()));
        let file = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("kalam.toml"));
        fig = fig.merge(Toml::file(file));
        let env = Env::prefixed("KALAMDB_").map(|k| env_key(&k.as_str().to_ascii_lowercase()).into());
        let cfg: KalamConfig = fig.merge(env).extract().map_err(|e| ConfigError::Figment(Box::new(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Keys in `file` that the configuration does not have: they are ignored, and the caller
    /// warns about each (a typo must not pass silently).
    pub fn unknown_keys(file: Option<&Path>) -> Vec<String> {
        let file = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("kalam.toml"));
        let Ok(data) = Figment::from(Toml::file(file)).extract::<serde_json::Value>() else { return Vec::new() };
        let known: std::collections::HashSet<String> = default_keys().into_iter().map(|(k, _)| k).collect();
        let mut unknown = Vec::new();
        let mut stack = vec![(String::new(), &data)];
        while let Some((prefix, v)) = stack.pop() {
            match v.as_object() {
                Some(map) => stack
                    .extend(map.iter().map(|(k, child)| {
                        (if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, child)
                    })),
                None if !known.contains(&prefix) => unknown.push(prefix),
                None => {}
            }
        }
        unknown.sort();
        unknown
    }

    /// Applies command-line flags, which win over everything else.
    pub fn merge_flags(&mut self, host: Option<String>, port: Option<u16>, data_dir: Option<PathBuf>) {
        if let Some(h) = host {
            self.server.host = h;
        }
        if let Some(p) = port {
            self.server.port = p;
        }
        if let Some(d) = data_dir {
            self.storage.data_dir = d;
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.port == 0 {
            return Err(ConfigError::Invalid { key: "server.port", reason: "must not be 0".into() });
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.logging.level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "logging.level",
                reason: format!("'{}' is not one of error, warn, info, debug, trace", self.logging.level),
            });
        }
        if let Some(bad) = self.server.cors_allowed_origins.iter().find(|o| !valid_origin(o)) {
            return Err(ConfigError::Invalid {
                key: "server.cors_allowed_origins",
                reason: format!("'{bad}' is not `*` or an origin such as https://app.example.com"),
            });
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return Err(ConfigError::Invalid { key: "auth.jwt_secret", reason: "must be at least 32 bytes".into() });
        }
        if self.flush.node_id > 1023 {
            return Err(ConfigError::Invalid { key: "flush.node_id", reason: "must be between 0 and 1023".into() });
        }
        if self.stream.default_ttl_seconds == 0
            || self.stream.default_max_buffer == 0
            || self.stream.eviction_interval_seconds == 0
        {
            return Err(ConfigError::Invalid { key: "stream", reason: "values must be > 0".into() });
        }
        if !["none", "snappy", "zstd"].contains(&self.storage.compression.as_str()) {
            return Err(ConfigError::Invalid {
                key: "storage.compression",
                reason: format!("'{}' is not one of none, snappy, zstd", self.storage.compression),
            });
        }
        if self.flush.max_rows_per_file == 0 {
            return Err(ConfigError::Invalid { key: "flush.max_rows_per_file", reason: "must be > 0".into() });
        }
        let sup = &self.supervisor;
        if sup.restart_backoff_min_ms == 0
            || sup.restart_backoff_max_ms < sup.restart_backoff_min_ms
            || sup.restart_window_seconds == 0
        {
            return Err(ConfigError::Invalid {
                key: "supervisor",
                reason: "restart_backoff_min_ms and restart_window_seconds must be > 0, and restart_backoff_max_ms \
                         at least restart_backoff_min_ms"
                    .into(),
            });
        }
        if sup.health_interval_ms < 50 || sup.health_misses == 0 {
            return Err(ConfigError::Invalid {
                key: "supervisor.health_interval_ms",
                reason: "health_interval_ms must be at least 50 and health_misses at least 1".into(),
            });
        }
        let log = &self.logging;
        if log.max_file_size == 0 || log.max_files == 0 {
            return Err(ConfigError::Invalid {
                key: "logging.max_file_size",
                reason: "max_file_size and max_files must be > 0".into(),
            });
        }
        if self.storage.rocksdb.keep_log_file_num == 0 || self.storage.rocksdb.max_log_file_size == 0 {
            return Err(ConfigError::Invalid { key: "storage.rocksdb", reason: "values must be > 0".into() });
        }
        if self.websocket.max_pending_messages == 0
            || self.limits.max_message_size == 0
            || self.limits.max_statements_per_request == 0
        {
            return Err(ConfigError::Invalid { key: "limits", reason: "sizes must be > 0".into() });
        }
        Ok(())
    }

    /// Makes every path absolute (against the working directory) and fills the derived ones.
    pub fn resolve_paths(&mut self) -> Result<(), ConfigError> {
        let cwd = std::env::current_dir().map_err(ConfigError::WorkingDir)?;
        let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
        self.storage.data_dir = normalize(&abs(&self.storage.data_dir));
        let data = self.storage.data_dir.clone();
        let or_default = |p: &Path, sub: &str| {
            if p.as_os_str().is_empty() { data.join(sub) } else { normalize(&abs(p)) }
        };
        self.storage.rocksdb_path = or_default(&self.storage.rocksdb_path, "rocksdb");
        self.storage.default_storage_path = or_default(&self.storage.default_storage_path, "storage");
        self.logging.dir = or_default(&self.logging.dir, "logs");
        Ok(())
    }

    /// Directory of the internal Unix sockets.
    pub fn run_dir(&self) -> PathBuf {
        self.storage.data_dir.join("run")
    }

    /// Directory of per-job RocksDB checkpoints (same filesystem as RocksDB for hard links).
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.storage.data_dir.join("checkpoints")
    }

    /// Environment that hands the resolved configuration to a child process.
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("KALAMDB_SERVER_HOST".into(), self.server.host.clone()),
            ("KALAMDB_SERVER_PORT".into(), self.server.port.to_string()),
            ("KALAMDB_DATA_DIR".into(), self.storage.data_dir.display().to_string()),
            ("KALAMDB_STORAGE_ROCKSDB_PATH".into(), self.storage.rocksdb_path.display().to_string()),
            ("KALAMDB_STORAGE_DEFAULT_STORAGE_PATH".into(), self.storage.default_storage_path.display().to_string()),
            ("KALAMDB_LOG_DIR".into(), self.logging.dir.display().to_string()),
            ("KALAMDB_LOG_LEVEL".into(), self.logging.level.clone()),
        ]
    }

    /// A configuration for tests: everything under `data_dir`, the given port.
    pub fn test_config(data_dir: &Path, port: u16) -> Self {
        let mut cfg = KalamConfig::default();
        cfg.server.port = port;
        cfg.storage.data_dir = data_dir.to_path_buf();
        cfg.logging.log_to_console = false;
        cfg
    }
}

/// Removes `.` components (`/x/./data` → `/x/data`) without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

#[cfg(test)]
// `figment::Jail` closures return `figment::Error`, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_apply_in_order_file_then_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "kalam.toml",
                "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[flush]\ndefault_row_limit = 5\n",
            )?;
            jail.set_env("KALAMDB_SERVER_PORT", "9100");
            jail.set_env("KALAMDB_DATA_DIR", "/tmp/kalam-x");
            jail.set_env("KALAMDB_FLUSH_MAX_CONCURRENT_JOBS", "2");
            let cfg = KalamConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.server.port, 9100);
            assert_eq!(cfg.server.host, "0.0.0.0");
            assert_eq!(cfg.storage.data_dir, PathBuf::from("/tmp/kalam-x"));
            assert_eq!(cfg.flush.default_row_limit, 5);
            assert_eq!(cfg.flush.max_concurrent_jobs, 2);
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("KALAMDB_LOG_LEVEL", "loud");
            let err = KalamConfig::load(None).unwrap_err().to_string();
            assert!(err.contains("logging.level"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn compression_and_restart_settings_are_checked() {
        Jail::expect_with(|jail| {
            jail.set_env("KALAMDB_STORAGE_COMPRESSION", "lz77");
            let err = KalamConfig::load(None).unwrap_err().to_string();
            assert!(err.contains("storage.compression") && err.contains("lz77"), "{err}");
            jail.set_env("KALAMDB_STORAGE_COMPRESSION", "zstd");
            jail.create_file(
                "kalam.toml",
                "[supervisor]\nrestart_backoff_min_ms = 500\nrestart_backoff_max_ms = 100\n",
            )?;
            let err = KalamConfig::load(None).unwrap_err().to_string();
            assert!(err.contains("supervisor"), "{err}");
            jail.create_file("kalam.toml", "[supervisor]\nhealth_misses = 0\n")?;
            let err = KalamConfig::load(None).unwrap_err().to_string();
            assert!(err.contains("supervisor.health_interval_ms"), "{err}");
            jail.create_file("kalam.toml", "[supervisor]\nmax_restarts = 50\nlived_memory_limit_mb = 512\n")?;
            jail.set_env("KALAMDB_SUPERVISOR_HEALTH_INTERVAL_MS", "250");
            let cfg = KalamConfig::load(None).unwrap();
            assert_eq!((cfg.storage.compression.as_str(), cfg.supervisor.max_restarts), ("zstd", 50));
            assert_eq!((cfg.supervisor.health_interval_ms, cfg.supervisor.lived_memory_limit_mb), (250, 512));
            Ok(())
        });
    }

    #[test]
    fn derived_paths_hang_off_the_data_dir() {
        let mut cfg = KalamConfig::test_config(Path::new("/srv/kalam"), 1);
        cfg.resolve_paths().unwrap();
        assert_eq!(cfg.storage.rocksdb_path, PathBuf::from("/srv/kalam/rocksdb"));
        assert_eq!(cfg.storage.default_storage_path, PathBuf::from("/srv/kalam/storage"));
        assert_eq!(cfg.logging.dir, PathBuf::from("/srv/kalam/logs"));
    }
}
