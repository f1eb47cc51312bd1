//! The one error type of kalam-link (cli.md §2.3). Every variant's `Display` is a sentence the
//! CLI prints unchanged.

/// What went wrong talking to a KalamDB server.
#[derive(Debug, thiserror::Error)]
pub enum KalamLinkError {
    /// The server could not be reached or the connection broke (after the configured retries).
    #[error("network error: {0}")]
    NetworkError(String),
    /// No answer within the configured timeout (after the configured retries).
    #[error("timed out: {0}")]
    TimeoutError(String),
    /// The server refused the credentials or the acting user (HTTP 401/403 before any statement ran).
    #[error("{code}: {message}")]
    AuthenticationError { status_code: u16, code: String, message: String },
    /// The server answered with an error envelope (a statement failed).
    #[error("{code}: {message}")]
    ServerError { status_code: u16, code: String, message: String },
    /// The WebSocket could not be opened or broke in a way that cannot be retried.
    #[error("WebSocket error: {0}")]
    WebSocketError(String),
    /// The server sent something that is not the protocol (or a value could not be encoded).
    #[error("unexpected data from the server: {0}")]
    SerializationError(String),
    /// The client was configured with something unusable (no base URL, a header value that is
    /// not text, …).
    #[error("configuration error: {0}")]
    ConfigurationError(String),
}

impl KalamLinkError {
    /// The server's error code (`TABLE_NOT_FOUND`, `UNAUTHORIZED`, …) for errors the server
    /// reported; `None` for transport and client-side errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::AuthenticationError { code, .. } | Self::ServerError { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for failures a retry may cure: the server was unreachable or did not answer in time.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::NetworkError(_) | Self::TimeoutError(_))
    }
}

impl From<reqwest::Error> for KalamLinkError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's Display omits the cause ("error sending request"); keep the chain.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            Self::TimeoutError(text)
        } else if e.is_builder() {
            Self::ConfigurationError(text)
        } else if e.is_decode() {
            Self::SerializationError(text)
        } else {
            Self::NetworkError(text)
        }
    }
}
