//! The WebSocket hand-off: kalamd passes an accepted client socket to kalam-lived over a plain
//! Unix socket with `SCM_RIGHTS`. The message body is the client's peer address (UTF-8), so
//! kalam-lived can apply the loopback rules itself. kalamd only peeked at the request, so the
//! socket arrives with the HTTP upgrade request unread.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Longest peer-address payload accepted.
const MAX_PAYLOAD: usize = 128;

/// Sends `fd` (a connected TCP socket) and its peer address over `channel`.
pub fn send_socket(channel: &UnixStream, fd: RawFd, peer: SocketAddr) -> io::Result<()> {
    let payload = peer.to_string();
    let iov = [IoSlice::new(payload.as_bytes())];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(channel.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)?;
    Ok(())
}

/// Receives one socket and its peer address. `Ok(None)` when the sender closed the channel.
pub fn recv_socket(channel: &UnixStream) -> io::Result<Option<(OwnedFd, SocketAddr)>> {
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(channel.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fd = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our table for us; we own it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    let len = msg.bytes;
    let Some(fd) = fd else {
        return if len == 0 { Ok(None) } else { Err(io::Error::other("hand-off message without a socket")) };
    };
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| io::Error::other("hand-off payload is not UTF-8"))?;
    let peer = text.parse().map_err(|_| io::Error::other("hand-off payload is not an address"))?;
    Ok(Some((fd, peer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_socket_crosses_the_channel_with_its_peer() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut client, server_side) = UnixStream::pair().unwrap();
        let peer: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        send_socket(&a, server_side.as_raw_fd(), peer).unwrap();
        drop(server_side);
        let (fd, got_peer) = recv_socket(&b).unwrap().unwrap();
        assert_eq!(got_peer, peer);
        let mut received = UnixStream::from(fd);
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        received.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
}
