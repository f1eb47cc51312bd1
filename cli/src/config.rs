//! The CLI's configuration file (`~/.kalam/config.toml`, cli.md §1.2): read, created with
//! defaults when missing, and merged with flags (flag > file > built-in default).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::format::Format;

/// The file as written; every key optional so that absent keys fall back (and legacy sections
/// are read only when the new key is absent).
// No `Debug` on the types holding credentials, so none can reach a log line.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub connection: ConnectionSection,
    pub output: OutputSection,
    pub subscription: SubscriptionSection,
    server: LegacyServer,
    auth: LegacyAuth,
    ui: LegacyUi,
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ConnectionSection {
    pub host: Option<String>,
    pub user: Option<String>,
    pub token: Option<String>,
    pub apikey: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OutputSection {
    pub format: Option<String>,
    pub color: Option<bool>,
    pub page_size: Option<usize>,
    pub history_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SubscriptionSection {
    pub last_rows: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LegacyServer {
    url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct LegacyAuth {
    jwt_token: Option<String>,
    api_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LegacyUi {
    format: Option<String>,
    color: Option<bool>,
    history_size: Option<usize>,
}

/// What a new configuration file holds.
pub const DEFAULT_FILE: &str = r#"# KalamDB CLI configuration. Command-line flags override these values.
[connection]
host = "http://localhost:8080"
user = ""                  # acting user (X-USER-ID); empty = none, the server decides
token = ""                 # JWT; optional
apikey = ""                # API key; optional
timeout_seconds = 30
max_retries = 3

[output]
format = "table"           # table | json | csv
color = true
page_size = 1000           # rows per page in interactive table output
history_size = 1000

[subscription]
last_rows = 0              # default initial snapshot for \subscribe / SUBSCRIBE TO without options
"#;

/// A configuration problem: the message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// The values the file gives, after the legacy fallbacks and checks.
#[derive(Clone, PartialEq)]
pub struct FileValues {
    pub host: Option<String>,
    pub user: Option<String>,
    pub token: Option<String>,
    pub apikey: Option<String>,
    pub timeout_seconds: u64,
    pub max_retries: u32,
    pub format: Format,
    pub color: Option<bool>,
    pub page_size: usize,
    pub history_size: usize,
    pub last_rows: u64,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileValues, ConfigError> {
        let err = |message: String| ConfigError { path: path.display().to_string(), message };
        let file: FileConfig = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        let format_text = file.output.format.or(file.ui.format);
        let format = match format_text.as_deref() {
            None => Format::Table,
            Some(f) => {
                Format::parse(f).ok_or_else(|| err(format!("output.format: expected table, json or csv, got '{f}'")))?
            }
        };
        let timeout_seconds = file.connection.timeout_seconds.unwrap_or(30);
        if timeout_seconds == 0 {
            return Err(err("connection.timeout_seconds: must be at least 1".into()));
        }
        let page_size = file.output.page_size.unwrap_or(1000);
        if page_size == 0 {
            return Err(err("output.page_size: must be at least 1".into()));
        }
        Ok(FileValues {
            host: non_empty(file.connection.host).or(non_empty(file.server.url)),
            user: non_empty(file.connection.user),
            token: non_empty(file.connection.token).or(non_empty(file.auth.jwt_token)),
            apikey: non_empty(file.connection.apikey).or(non_empty(file.auth.api_key)),
            timeout_seconds,
            max_retries: file.connection.max_retries.unwrap_or(3),
            format,
            color: file.output.color.or(file.ui.color),
            page_size,
            history_size: file.output.history_size.or(file.ui.history_size).unwrap_or(1000),
            last_rows: file.subscription.last_rows.unwrap_or(0),
        })
    }
}

/// `~/.kalam` (or `./.kalam` without a home directory).
pub fn kalam_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".kalam")
}

/// Creates `dir` with mode 0700 when it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for appending, created with mode 0600 (its directory 0700) when missing.
pub fn open_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// Creates `path` with mode 0600 (its directory 0700 when it is ours to create).
pub fn create_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

/// Reads the configuration at `path`, creating it with defaults when missing. A file that
/// cannot be created is only warned about; one that cannot be parsed is an error.
pub fn load(path: &Path) -> Result<FileValues, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => FileConfig::parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Err(e) = create_private_file(path, DEFAULT_FILE) {
                eprintln!("Warning: cannot create {} ({e}); using defaults", path.display());
            }
            FileConfig::parse(DEFAULT_FILE, path)
        }
        Err(e) => Err(ConfigError { path: path.display().to_string(), message: format!("cannot read it: {e}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileValues, ConfigError> {
        FileConfig::parse(text, Path::new("c.toml"))
    }

    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_and_empty_strings_mean_unset() {
        let v = parse(DEFAULT_FILE).unwrap();
        assert_eq!(v.host.as_deref(), Some("http://localhost:8080"));
        assert_eq!((v.user, v.token, v.apikey), (None, None, None));
        assert_eq!((v.timeout_seconds, v.max_retries, v.page_size, v.history_size), (30, 3, 1000, 1000));
        assert_eq!(v.format, Format::Table);
    }

    #[test]
    fn legacy_sections_fill_in_absent_keys_only() {
        let v = parse("[server]\nurl = \"http://old:1\"\n[auth]\napi_key = \"k\"\n[ui]\nformat = \"csv\"\n").unwrap();
        assert_eq!(v.host.as_deref(), Some("http://old:1"));
        assert_eq!(v.apikey.as_deref(), Some("k"));
        assert_eq!(v.format, Format::Csv);
        let v = parse("[connection]\nhost = \"http://new:2\"\n[server]\nurl = \"http://old:1\"\n").unwrap();
        assert_eq!(v.host.as_deref(), Some("http://new:2"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse_err("[output]\nformat = \"xml\"\n");
        assert!(e.contains("output.format") && e.contains("xml"), "{e}");
        let e = parse_err("[connection]\ntimeout_seconds = \"soon\"\n");
        assert!(e.contains("timeout_seconds"), "{e}");
        let e = parse_err("[connection\n");
        assert!(e.starts_with("c.toml: "), "{e}");
    }

    #[test]
    fn a_missing_file_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let v = load(&path).unwrap();
        assert_eq!(v.format, Format::Table);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
