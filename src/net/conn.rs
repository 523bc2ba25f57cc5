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

/// Whether a timeout set earlier (`armed`) must be set again to `left` before a read or
/// write: only when it would overshoot the deadline by more than [`REARM_SLACK`]. One that
/// would end before the deadline is kept, and set again only if it fires first
/// ([`Socket::read`]): a kept-alive connection serves requests with other timeouts (Telegram's
/// 10 s chat action, 30 s message, 40 s long poll), and most reads and writes end long before
/// any of them, so this saves a `setsockopt` per request and direction.
fn must_rearm(armed: Option<Duration>, left: Duration) -> bool {
    armed.is_none_or(|armed| armed.saturating_sub(left) > REARM_SLACK)
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.left()?;
            if must_rearm(self.read_armed, left) {
                self.tcp.set_read_timeout(Some(left))?;
                self.read_armed = Some(left);
            }
            match self.tcp.read(buf) {
                // The timeout set for an earlier, shorter deadline fired before this one
                // (nothing was read): set it to what is left and wait on.
                Err(e) if is_timeout(&e) && self.left().is_ok() => self.read_armed = None,
                result => return result,
            }
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let left = self.left()?;
            if must_rearm(self.write_armed, left) {
                self.tcp.set_write_timeout(Some(left))?;
                self.write_armed = Some(left);
            }
            match self.tcp.write(buf) {
                // As for reads: nothing was written, the deadline has not passed.
                Err(e) if is_timeout(&e) && self.left().is_ok() => self.write_armed = None,
                result => return result,
            }
        }
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
        assert!(!must_rearm(Some(ms(29_999)), ms(30_000)), "the next request with the same timeout");
        assert!(!must_rearm(Some(ms(10_000)), ms(40_000)), "ends early: set again only if it fires");
        assert!(must_rearm(Some(ms(40_000)), ms(10_000)), "a shorter timeout");
    }

    #[test]
    fn a_socket_timeout_set_a_little_short_does_not_end_the_read_early() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut socket =
            Socket { tcp, deadline: start + Duration::from_millis(300), read_armed: None, write_armed: None };
        // Armed for a shorter timeout: kept until it fires.
        socket.tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        socket.read_armed = Some(Duration::from_millis(100));
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(280));
            server.write_all(b"x").unwrap();
            server
        });
        let mut buf = [0u8; 1];
        assert_eq!(socket.read(&mut buf).unwrap(), 1, "read after {:?}", start.elapsed());
        let _server = writer.join().unwrap();
        // With nothing to read, it fails once the deadline has passed, not before.
        let error = socket.read(&mut buf).unwrap_err();
        assert!(is_timeout(&error) && start.elapsed() >= Duration::from_millis(300), "{error} {:?}", start.elapsed());
    }
}
