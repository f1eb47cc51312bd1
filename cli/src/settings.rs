//! The effective settings: command-line flags over the configuration file over defaults.

use std::path::PathBuf;
use std::time::Duration;

use kalam_link::{Credentials, KalamLinkClient, KalamLinkError};

use crate::config::FileValues;
use crate::format::Format;

#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub user: Option<String>,
    pub credentials: Credentials,
    pub timeout: Duration,
    pub max_retries: u32,
    pub format: Format,
    pub color: bool,
    pub page_size: usize,
    pub history_size: usize,
    pub last_rows: u64,
    pub config_path: PathBuf,
}

/// What the command line says about the connection and output (each `None` when not given).
/// No `Debug`: it holds credentials.
#[derive(Default, Clone)]
pub struct Flags {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub token: Option<String>,
    pub apikey: Option<String>,
    pub format: Option<Format>,
    pub color: Option<bool>,
}

/// The server URL from `--host` (URL or bare name) and `--port`: a bare name gets `http://`
/// and the port (8080 by default); a URL without a port gets `--port` when one is given.
pub fn server_url(host: &str, port: Option<u16>) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") {
        match port {
            Some(p) if !has_port(host) => with_port(host, p),
            _ => host.to_owned(),
        }
    } else if has_port(host) {
        format!("http://{host}")
    } else {
        format!("http://{host}:{}", port.unwrap_or(8080))
    }
}

/// The `host[:port]` part of a URL or bare address.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn has_port(url: &str) -> bool {
    let a = authority(url);
    // A bracketed IPv6 address keeps its colons.
    a.rfind(':').is_some_and(|i| !a[i..].contains(']'))
}

/// `url` with its port replaced by `port`.
fn with_port(url: &str, port: u16) -> String {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // A bracketed IPv6 address keeps its colons.
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    format!("{scheme}://{host}:{port}{path}")
}

impl Settings {
    pub fn resolve(flags: &Flags, file: &FileValues, config_path: PathBuf, stdout_is_terminal: bool) -> Settings {
        let url = match (&flags.host, flags.port) {
            (Some(h), port) => server_url(h, port),
            // `--port` alone changes the port of the configured host.
            (None, Some(port)) => with_port(&server_url(file.host.as_deref().unwrap_or("localhost"), None), port),
            (None, None) => server_url(file.host.as_deref().unwrap_or("localhost"), None),
        };
        let credentials = match (&flags.token, &flags.apikey) {
            (Some(t), _) => Credentials::Jwt(t.clone()),
            (None, Some(k)) => Credentials::ApiKey(k.clone()),
            (None, None) => match (&file.token, &file.apikey) {
                (Some(t), _) => Credentials::Jwt(t.clone()),
                (None, Some(k)) => Credentials::ApiKey(k.clone()),
                (None, None) => Credentials::None,
            },
        };
        // Color only on a terminal unless asked for explicitly.
        let color = flags.color.unwrap_or(stdout_is_terminal && file.color.unwrap_or(true));
        Settings {
            url,
            user: flags.user.clone().or_else(|| file.user.clone()).filter(|u| !u.is_empty()),
            credentials,
            timeout: Duration::from_secs(file.timeout_seconds),
            max_retries: file.max_retries,
            format: flags.format.unwrap_or(file.format),
            color,
            page_size: file.page_size,
            history_size: file.history_size,
            last_rows: file.last_rows,
            config_path,
        }
    }

    /// A client for `url` acting as `user` with these credentials.
    pub fn client_for(&self, url: &str, user: Option<&str>) -> Result<KalamLinkClient, KalamLinkError> {
        let mut b = KalamLinkClient::builder()
            .base_url(url)
            .credentials(self.credentials.clone())
            .timeout(self.timeout)
            .max_retries(self.max_retries);
        if let Some(u) = user {
            b = b.user_id(u);
        }
        b.build()
    }

    /// The settings as `\config` shows them, secrets masked.
    pub fn describe(&self) -> String {
        let credential = match &self.credentials {
            Credentials::None => "none (loopback bypass)".to_owned(),
            Credentials::ApiKey(_) => "API key ***".to_owned(),
            Credentials::Jwt(_) => "JWT ***".to_owned(),
        };
        [
            format!("config file     {}", self.config_path.display()),
            format!("host            {}", self.url),
            format!("user            {}", self.user.as_deref().unwrap_or("(none)")),
            format!("credential      {credential}"),
            format!("timeout         {}s", self.timeout.as_secs()),
            format!("max_retries     {}", self.max_retries),
            format!("format          {}", self.format.as_str()),
            format!("color           {}", self.color),
            format!("page_size       {}", self.page_size),
            format!("history_size    {}", self.history_size),
            format!("last_rows       {}", self.last_rows),
        ]
        .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_FILE, FileConfig};

    fn file(text: &str) -> FileValues {
        FileConfig::parse(text, std::path::Path::new("c.toml")).unwrap()
    }

    #[test]
    fn host_accepts_urls_and_bare_names() {
        assert_eq!(server_url("http://db:9000/", Some(8080)), "http://db:9000");
        assert_eq!(server_url("http://db", Some(9000)), "http://db:9000");
        assert_eq!(server_url("https://db.example", None), "https://db.example");
        assert_eq!(server_url("db", Some(9000)), "http://db:9000");
        assert_eq!(server_url("db", None), "http://db:8080");
        assert_eq!(server_url("db:7000", Some(9000)), "http://db:7000");
    }

    #[test]
    fn a_port_alone_changes_the_configured_hosts_port() {
        assert_eq!(with_port("http://localhost:8080", 9000), "http://localhost:9000");
        assert_eq!(with_port("https://db.example/", 443), "https://db.example:443");
        assert_eq!(with_port("http://[::1]:8080", 1), "http://[::1]:1");
        let f = file("[connection]\nhost = \"http://db:8080\"\n");
        let s = Settings::resolve(&Flags { port: Some(18080), ..Default::default() }, &f, "c".into(), false);
        assert_eq!(s.url, "http://db:18080");
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = file(
            "[connection]\nhost = \"http://file:1\"\nuser = \"fu\"\napikey = \"filekey1\"\n[output]\nformat = \"csv\"\n",
        );
        let s = Settings::resolve(&Flags::default(), &f, "c".into(), false);
        assert_eq!((s.url.as_str(), s.user.as_deref(), s.format), ("http://file:1", Some("fu"), Format::Csv));
        assert_eq!(s.credentials, Credentials::ApiKey("filekey1".into()));
        assert!(!s.color, "no color off a terminal");
        let flags = Flags {
            host: Some("flag".into()),
            port: Some(9),
            user: Some("alice".into()),
            token: Some("a.b.c".into()),
            format: Some(Format::Json),
            color: Some(true),
            ..Default::default()
        };
        let s = Settings::resolve(&flags, &f, "c".into(), false);
        assert_eq!(
            (s.url.as_str(), s.user.as_deref(), s.format, s.color),
            ("http://flag:9", Some("alice"), Format::Json, true)
        );
        assert_eq!(s.credentials, Credentials::Jwt("a.b.c".into()));
        assert!(!s.describe().contains("a.b.c"));
        let s = Settings::resolve(&Flags::default(), &file(DEFAULT_FILE), "c".into(), true);
        assert_eq!(
            (s.url.as_str(), s.credentials.clone(), s.color),
            ("http://localhost:8080", Credentials::None, true)
        );
    }
}
