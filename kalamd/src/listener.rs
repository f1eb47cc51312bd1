//! The public socket: accept, peek at the request line, and either hand a `GET /v1/ws`
//! connection to kalam-lived or serve HTTP here. The listening socket normally comes from the
//! supervisor (LISTEN_FDS convention, fd 3) so that the port is held across restarts.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::http::Peer;

/// Longest time a client may take to send its request line.
const REQUEST_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a WebSocket hand-off to kalam-lived may take.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes peeked to classify a connection.
const PEEK_BYTES: usize = 512;

/// The listener passed by the supervisor or systemd (fd 3), if any.
pub fn inherited_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    let fds: usize = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if fds == 0 {
        return Ok(None);
    }
    if let Some(pid) = std::env::var("LISTEN_PID").ok().and_then(|v| v.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return Ok(None);
    }
    // SAFETY: by the LISTEN_FDS convention fd 3 is a listening socket handed to this process.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    listener.set_nonblocking(true)?;
    // SAFETY: these variables are read once at startup before other threads use the env.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
    }
    Ok(Some(listener))
}

enum Route {
    WebSocket,
    Http,
    Closed,
}

async fn classify(stream: &TcpStream) -> Route {
    let mut buf = [0u8; PEEK_BYTES];
    let deadline = tokio::time::Instant::now() + REQUEST_LINE_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Route::Closed,
            Ok(Ok(n)) => n,
        };
        let seen = &buf[..n];
        if seen.contains(&b'\n') || n == buf.len() {
            let ws = seen.starts_with(b"GET /v1/ws ") || seen.starts_with(b"GET /v1/ws?");
            return if ws { Route::WebSocket } else { Route::Http };
        }
        // Part of the request line is here; give the rest a moment instead of spinning.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if tokio::time::Instant::now() >= deadline {
            return Route::Closed;
        }
    }
}

/// Accepts connections until `shutdown` fires.
pub async fn serve(listener: TcpListener, app: Router, handoff_path: PathBuf, shutdown: CancellationToken) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let builder = builder.clone();
        let handoff_path = handoff_path.clone();
        tokio::spawn(async move {
            match classify(&stream).await {
                Route::Closed => {}
                Route::WebSocket => hand_off(stream, peer, handoff_path).await,
                Route::Http => {
                    let svc = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(Peer(peer));
                        req
                    });
                    let svc = TowerToHyperService::new(svc);
                    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
}

async fn hand_off(stream: TcpStream, peer: SocketAddr, handoff_path: PathBuf) {
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot detach WebSocket connection");
            return;
        }
    };
    // A stuck kalam-lived must not pin blocking threads: bounded connect and send.
    let channel = match tokio::time::timeout(HANDOFF_TIMEOUT, tokio::net::UnixStream::connect(&handoff_path)).await {
        Ok(Ok(ch)) => ch.into_std().and_then(|ch| {
            ch.set_nonblocking(false)?;
            ch.set_write_timeout(Some(HANDOFF_TIMEOUT))?;
            Ok(ch)
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "hand-off connect timed out")),
    };
    let sent = tokio::task::spawn_blocking(move || {
        let result = channel.and_then(|ch| kalam_rpc::handoff::send_socket(&ch, std_stream.as_raw_fd(), peer));
        (result, std_stream)
    })
    .await;
    let (result, std_stream) = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "hand-off task failed");
            return;
        }
    };
    if let Err(e) = result {
        tracing::warn!(%peer, error = %e, "kalam-lived unavailable; answering 503");
        if std_stream.set_nonblocking(true).is_ok()
            && let Ok(mut s) = TcpStream::from_std(std_stream)
        {
            let body = r#"{"status":"error","results":[],"took_ms":0,"error":{"code":"SERVICE_UNAVAILABLE","message":"Live queries are temporarily unavailable"}}"#;
            let resp = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn roundtrip(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn websocket_requests_get_503_when_lived_is_down_and_http_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kalam_config::KalamConfig::test_config(dir.path(), 1);
        cfg.resolve_paths().unwrap();
        let engine = crate::engine::Engine::open(cfg).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let missing = dir.path().join("no-lived.sock");
        let task = tokio::spawn(serve(listener, crate::http::router(engine), missing, shutdown.clone()));

        let ws = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let resp = roundtrip(addr, ws).await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(resp.contains("SERVICE_UNAVAILABLE"));

        let health = "GET /v1/api/healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let resp = roundtrip(addr, health).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.contains("\"status\":\"healthy\""));

        // An upgrade as the second request of a kept-alive connection cannot be handed off: it
        // is refused and the connection closed, so the client retries on a fresh one.
        let kept = "GET /v1/api/healthcheck HTTP/1.1\r\nHost: x\r\n\r\n".to_owned() + ws;
        let resp = roundtrip(addr, &kept).await;
        let second = resp.rfind("HTTP/1.1 ").map(|i| &resp[i..]).unwrap_or_default();
        assert!(resp.starts_with("HTTP/1.1 200") && second.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(second.contains("connection: close") && second.contains("SERVICE_UNAVAILABLE"), "{second}");

        shutdown.cancel();
        task.await.unwrap();
    }
}
