//! A client connection, plain TCP or rustls, whose every read and write ends by a deadline;
//! opened by trying each resolved address in turn. Shared by the HTTP and WebSocket clients.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::tls;

/// How far a socket timeout set earlier may overshoot the deadline before it is set again:
/// the timeout applies per read or write, so it is recalculated, but not on every call.
const REARM_SLACK: Duration = Duration::from_millis(50);

/// Whether an I/O error is a socket timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// The TLS failure inside an I/O error from a TLS stream (certificate, protocol), if it is one.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// A TCP socket whose reads and writes end at `deadline`: each sets the socket's timeout to
/// what is left (unless the one already set is close enough), and fails once it has passed.
pub struct Socket {
    tcp: TcpStream,
    deadline: Instant,
    /// The read and write timeouts last set on the socket.
    read_armed: Option<Duration>,
    write_armed: Option<Duration>,
}

impl Socket {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(io::Error::new(ErrorKind::TimedOut, "the deadline passed")) } else { Ok(left) }
    }
}

/// Whether a timeout set earlier (`armed`) must be set again to `left`: it would end before
/// the deadline, or overshoot it by more than [`REARM_SLACK`].
fn must_rearm(armed: Option<Duration>, left: Duration) -> bool {
    armed.is_none_or(|armed| armed < left || armed - left > REARM_SLACK)
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        if must_rearm(self.read_armed, left) {
            self.tcp.set_read_timeout(Some(left))?;
            self.read_armed = Some(left);
        }
        self.tcp.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        if must_rearm(self.write_armed, left) {
            self.tcp.set_write_timeout(Some(left))?;
            self.write_armed = Some(left);
        }
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(Socket),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Socket>>),
}

impl Stream {
    fn socket(&mut self) -> &mut Socket {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &mut tls.sock,
        }
    }

    /// When the next reads and writes must be done by.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.socket().deadline = deadline;
    }

    /// End the TCP connection both ways (a thread blocked on it returns).
    pub fn shutdown(&mut self) {
        let _ = self.socket().tcp.shutdown(std::net::Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// Why no connection could be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    /// The last failure was a timeout (the connect bound or the deadline).
    pub timed_out: bool,
    pub message: String,
}

/// Connect to the first of `addrs` that answers (each within `connect_timeout`, never past
/// `deadline`), then start TLS for `host` when `tls` (the handshake runs on the first read or
/// write, under the deadline). `peer` names the server in messages.
pub fn open(
    host: &str,
    peer: &str,
    tls: bool,
    addrs: &[SocketAddr],
    connect_timeout: Duration,
    deadline: Instant,
) -> Result<Stream, OpenError> {
    let mut last = OpenError { timed_out: false, message: format!("{peer} resolved to no address") };
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(OpenError { timed_out: true, message: format!("timed out connecting to {peer}") });
        }
        let bound = left.min(connect_timeout);
        match TcpStream::connect_timeout(addr, bound) {
            Ok(tcp) => {
                // Requests are written whole; waiting to fill a segment only adds latency.
                let _ = tcp.set_nodelay(true);
                let socket = Socket { tcp, deadline, read_armed: None, write_armed: None };
                if !tls {
                    return Ok(Stream::Plain(socket));
                }
                let session = tls::session(host).map_err(|message| OpenError { timed_out: false, message })?;
                return Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(session, socket))));
            }
            Err(e) if is_timeout(&e) => {
                last = OpenError {
                    timed_out: true,
                    message: format!("timed out connecting to {peer} ({addr}) within {bound:?}"),
                }
            }
            Err(e) => last = OpenError { timed_out: false, message: format!("cannot connect to {peer} ({addr}): {e}") },
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_timeouts_are_set_again_only_when_they_matter() {
        let ms = Duration::from_millis;
        assert!(must_rearm(None, ms(1000)));
        assert!(!must_rearm(Some(ms(1000)), ms(1000)));
        assert!(!must_rearm(Some(ms(1000)), ms(960)));
        assert!(must_rearm(Some(ms(1000)), ms(900)), "would overshoot the deadline by 100 ms");
        assert!(must_rearm(Some(ms(1000)), ms(1001)), "would end before the deadline");
    }
}
