//! Unix-socket transport for the services: bincode frames up to [`MAX_FRAME_BYTES`], sockets
//! in the run directory with mode 0600, peers checked by uid.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::net::{UnixListener, UnixStream};

use crate::{EngineClient, FlusherClient, LiveClient, SupervisorClient};

/// Largest RPC frame (requests and responses).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Socket file names inside the run directory.
pub mod sockets {
    pub const ENGINE: &str = "kalamd.sock";
    pub const FLUSHER: &str = "kalam-flushd.sock";
    pub const LIVE: &str = "kalam-lived.sock";
    pub const SUPERVISOR: &str = "kalam-supervisor.sock";
    /// Plain socket on which kalamd hands accepted WebSocket connections to kalam-lived.
    pub const WS_HANDOFF: &str = "kalam-lived-handoff.sock";
}

pub type RpcTransport<Item, SinkItem> = Transport<UnixStream, Item, SinkItem, Bincode<Item, SinkItem>>;

/// Wraps a connected stream into a framed bincode transport.
pub fn framed<Item, SinkItem>(stream: UnixStream) -> RpcTransport<Item, SinkItem>
where
    Item: for<'de> serde::Deserialize<'de>,
    SinkItem: serde::Serialize,
{
    let framed = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_framed(stream);
    tarpc::serde_transport::new(framed, Bincode::default())
}

/// Binds a service socket in a 0700 directory, restricted to the owner (0600). A socket file
/// left by a crashed process (nobody accepts on it) is replaced; one a live process still
/// serves means the service is already running, and binding fails with `AddrInUse`.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is served by a running process: KalamDB is already running on this data directory",
                    path.display()
                ),
            ));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts the next connection from a process running as our own uid; others are dropped.
pub async fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let (stream, _) = listener.accept().await?;
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me => return Ok(stream),
            Ok(cred) => tracing::warn!(peer_uid = cred.uid(), "refused RPC peer with another uid"),
            Err(e) => tracing::warn!(error = %e, "refused RPC peer without credentials"),
        }
    }
}

/// Serves one tarpc service on a listener for as long as the task runs. Each connection and each
/// request runs on its own task.
#[macro_export]
macro_rules! serve_on {
    ($listener:expr, $server:expr) => {{
        use ::futures::StreamExt as _;
        use ::tarpc::server::Channel as _;
        let listener = $listener;
        let server = $server;
        async move {
            loop {
                let stream = match $crate::transport::accept(&listener).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors and the like: transient, keep serving.
                        ::tracing::error!(error = %e, "RPC accept failed");
                        ::tokio::time::sleep(::std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let channel = ::tarpc::server::BaseChannel::with_defaults($crate::transport::framed(stream));
                let server = server.clone();
                ::tokio::spawn(
                    channel
                        .execute(server.serve())
                        .for_each(|request| async move {
                            ::tokio::spawn(request);
                        }),
                );
            }
        }
    }};
}

async fn connect_stream(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(path).await
}

pub fn socket_path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name)
}

pub async fn connect_engine(run_dir: &Path) -> io::Result<EngineClient> {
    let s = connect_stream(&socket_path(run_dir, sockets::ENGINE)).await?;
    Ok(EngineClient::new(tarpc::client::Config::default(), framed(s)).spawn())
}

pub async fn connect_flusher(run_dir: &Path) -> io::Result<FlusherClient> {
    let s = connect_stream(&socket_path(run_dir, sockets::FLUSHER)).await?;
    Ok(FlusherClient::new(tarpc::client::Config::default(), framed(s)).spawn())
}

pub async fn connect_live(run_dir: &Path) -> io::Result<LiveClient> {
    let s = connect_stream(&socket_path(run_dir, sockets::LIVE)).await?;
    Ok(LiveClient::new(tarpc::client::Config::default(), framed(s)).spawn())
}

pub async fn connect_supervisor(run_dir: &Path) -> io::Result<SupervisorClient> {
    let s = connect_stream(&socket_path(run_dir, sockets::SUPERVISOR)).await?;
    Ok(SupervisorClient::new(tarpc::client::Config::default(), framed(s)).spawn())
}

/// A deadline for a call that may legitimately wait (long polls).
pub fn context_with_timeout(timeout: std::time::Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Flusher, Health};

    /// A flusher that knows no job.
    #[derive(Clone)]
    struct FakeFlusher;

    impl Flusher for FakeFlusher {
        async fn health(self, _: tarpc::context::Context) -> Health {
            Health::of("fake")
        }
        async fn run_job(self, _: tarpc::context::Context, job: String) -> Result<(), crate::RpcError> {
            Err(crate::RpcError::new(kalam_types::ErrorCode::JobNotFound, format!("Job not found: {job}")))
        }
        async fn cancel_job(self, _: tarpc::context::Context, _: String) {}
        async fn dead_letters(self, _: tarpc::context::Context) -> Result<Vec<crate::DeadLetter>, crate::RpcError> {
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn a_service_answers_over_its_unix_socket_with_typed_errors() {
        let dir = std::env::temp_dir().join(format!("kalam-rpc-test-{}", std::process::id()));
        let listener = bind(&socket_path(&dir, sockets::FLUSHER)).unwrap();
        let mode = std::fs::metadata(socket_path(&dir, sockets::FLUSHER)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(crate::serve_on!(listener, FakeFlusher));
        let client = connect_flusher(&dir).await.unwrap();
        let health = client.health(tarpc::context::current()).await.unwrap();
        assert_eq!(health.process, "fake");
        let err = client.run_job(tarpc::context::current(), "j1".into()).await.unwrap().unwrap_err();
        assert_eq!(err.code, kalam_types::ErrorCode::JobNotFound);
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile_dir();
        let path = socket_path(&dir, sockets::LIVE);
        let first = bind(&path).unwrap();
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let err = bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already running"), "{err}");
        // The process is gone but its socket file stays: the next start replaces it.
        drop(first);
        assert!(path.exists());
        let _second = bind(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kalam-rpc-bind-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
