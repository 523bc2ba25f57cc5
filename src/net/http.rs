//! The HTTP/1.1 client every adapter uses, on std sockets and rustls: one per channel (its
//! clones share a keep-alive pool and a name cache), a deadline over each whole exchange, HTTP
//! error statuses returned as data (platforms put the reason in the body), bodies capped. The
//! wire format is [`super::http_wire`] (pure); this module does sockets, the pool and retries.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::conn::{self, Stream, is_timeout};
pub use super::http_wire::Headers;
use super::http_wire::{self as wire, BodyDecoder, BodyInfo, Target};

/// TCP connect, per resolved address (and never past the call's deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The body limit of the JSON calls.
const TEXT_LIMIT: u64 = 16 * 1024 * 1024;
const USER_AGENT: &str = concat!("tether/", env!("CARGO_PKG_VERSION"));
/// How long a host name's addresses are used before they are looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// Host names remembered at once (a channel talks to one or two).
const RESOLVE_CACHE: usize = 16;
/// Idle connections kept per origin: a channel's poller and the outbox's three workers may
/// each hold one at once; keeping fewer made a busy channel open (and, with TLS, handshake)
/// a new connection every few messages.
const IDLE_PER_ORIGIN: usize = 4;
/// Idle connections kept in all.
const IDLE_TOTAL: usize = 8;
/// An idle connection older than this is closed rather than reused (servers drop theirs).
const IDLE_MAX_AGE: Duration = Duration::from_secs(15);
/// Redirects followed by a GET (a CDN moving a file); other methods return the 3xx.
const MAX_REDIRECTS: usize = 5;
/// A body up to this size goes out in the same write as the head (one TLS record, one syscall).
const INLINE_BODY: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// A blocking HTTP/1.1 client (`http://` and `https://`).
#[derive(Debug, Clone, Default)]
pub struct HttpClient {
    shared: Arc<Shared>,
}

/// What the clones of one client share.
#[derive(Default)]
struct Shared {
    idle: Mutex<Vec<Idle>>,
    names: Mutex<HashMap<(String, u16), Resolved>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// A host's addresses and when they were looked up.
type Resolved = (Instant, Vec<SocketAddr>);

/// A kept-alive connection waiting for the next request to its origin.
struct Idle {
    origin: Target,
    conn: Conn,
    since: Instant,
}

/// A connection and its read buffer, zeroed once when the connection opens rather than for
/// every exchange on it.
struct Conn {
    stream: Stream,
    scratch: Vec<u8>,
}

/// Why no HTTP reply came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP method [`HttpClient::request`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn has_body(self) -> bool {
        matches!(self, Method::Post | Method::Patch)
    }
}

/// A whole HTTP reply: status, headers and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Headers,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(str::to_string)
    }
}

/// A whole HTTP reply with a binary body: status, headers and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl RawReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A body as text; invalid UTF-8 is replaced rather than refused (the reason in an error
/// page is worth more than its exact bytes).
fn into_text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

const JSON: Option<&str> = Some("application/json; charset=utf-8");

impl HttpClient {
    /// POST a JSON body; wait at most `timeout` for the whole exchange. Returns the status
    /// and the body text (capped at 16 MiB).
    pub fn post_json(&self, url: &str, body: &Value, timeout: Duration) -> Result<(u16, String), TransportError> {
        self.post_json_with(url, &[], body, timeout)
    }

    /// [`HttpClient::post_json`] with extra request headers (an API's token header, `Accept`).
    pub fn post_json_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, String), TransportError> {
        let bytes = encode(body)?;
        let reply = self.perform(Method::Post, url, headers, Some((&bytes, JSON)), timeout, TEXT_LIMIT)?;
        Ok((reply.status, into_text(reply.body)))
    }

    /// [`HttpClient::post_json`] with a body that is JSON text already.
    pub fn post_json_text(&self, url: &str, json: &[u8], timeout: Duration) -> Result<(u16, String), TransportError> {
        let reply = self.perform(Method::Post, url, &[], Some((json, JSON)), timeout, TEXT_LIMIT)?;
        Ok((reply.status, into_text(reply.body)))
    }

    /// Any method with extra headers and an optional JSON body (POST/PATCH without one send
    /// an empty body); waits at most `timeout` for the whole exchange. Body capped at 16 MiB.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<HttpReply, TransportError> {
        let bytes = match body {
            Some(json) if method.has_body() => Some(encode(json)?),
            _ => None,
        };
        let body = match &bytes {
            Some(bytes) => Some((bytes.as_slice(), JSON)),
            None if method.has_body() => Some((&[][..], None)),
            None => None,
        };
        let reply = self.perform(method, url, headers, body, timeout, TEXT_LIMIT)?;
        Ok(HttpReply { status: reply.status, headers: reply.headers, body: into_text(reply.body) })
    }

    /// One request with our own headers and a raw body (sent by POST and PATCH only); waits
    /// at most `timeout` for the whole exchange and reads at most `limit` bytes of the reply
    /// (more is an error: a download must not fill the memory or the disk). For binary uploads
    /// and downloads (CDNs, attachments).
    pub fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
        limit: u64,
    ) -> Result<RawReply, TransportError> {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let body = method.has_body().then_some((body, None));
        let reply = self.perform(method, url, &headers, body, timeout, limit)?;
        Ok(RawReply { status: reply.status, headers: reply.headers, body: reply.body })
    }

    /// Send one request (following a GET's redirects) and read its whole reply.
    fn perform(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&[u8], Option<&str>)>,
        timeout: Duration,
        limit: u64,
    ) -> Result<Reply, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut target = wire::parse_url(url).map_err(TransportError)?;
        let mut headers = headers;
        let mut hops = 0;
        loop {
            let info = body.map(|(bytes, content_type)| BodyInfo { len: bytes.len(), content_type });
            let head = wire::request_head(method.as_str(), &target, USER_AGENT, headers, info)
                .map_err(|e| TransportError(format!("cannot build the request: {e}")))?;
            let bytes = body.map_or(&[][..], |(bytes, _)| bytes);
            let reply = self.round_trip(&target, head, bytes, deadline, limit).map_err(|f| f.describe(timeout))?;
            if method == Method::Get && hops < MAX_REDIRECTS && matches!(reply.status, 301 | 302 | 303 | 307 | 308) {
                let next = reply.header("location").and_then(|l| wire::redirect_target(&target, l));
                // Never from https down to http; the caller's headers only go to the same origin.
                if let Some(next) = next.filter(|n| n.tls || !target.tls) {
                    if !next.same_origin(&target) {
                        headers = &[];
                    }
                    target = next;
                    hops += 1;
                    continue;
                }
            }
            return Ok(reply);
        }
    }

    /// One request and its reply on a kept-alive connection, or a new one. A kept-alive
    /// connection the server closed while it was idle fails before any reply byte: only then
    /// is the request sent again, once, on a new connection (never after part of a reply,
    /// never after a timeout, when the server may be working on it).
    fn round_trip(
        &self,
        target: &Target,
        head: Vec<u8>,
        body: &[u8],
        deadline: Instant,
        limit: u64,
    ) -> Result<Reply, Failure> {
        let mut request = head;
        let rest = if body.len() <= INLINE_BODY {
            request.extend_from_slice(body);
            &[][..]
        } else {
            body
        };
        if let Some(conn) = self.take_idle(target) {
            match self.exchange_on(conn, target, &request, rest, deadline, limit) {
                Err(Failure { kind: Kind::Stale, message }) => {
                    log::debug!(
                        "a kept-alive connection to {} was gone ({message}); using a new one",
                        target.authority()
                    )
                }
                done => return done,
            }
        }
        let conn = self.open(target, deadline)?;
        self.exchange_on(conn, target, &request, rest, deadline, limit)
    }

    fn exchange_on(
        &self,
        mut conn: Conn,
        target: &Target,
        request: &[u8],
        body: &[u8],
        deadline: Instant,
        limit: u64,
    ) -> Result<Reply, Failure> {
        conn.stream.set_deadline(deadline);
        send(&mut conn.stream, request, body)?;
        let reply = read_reply(&mut conn.stream, &mut conn.scratch, limit)?;
        if reply.reusable {
            self.keep_idle(target, conn);
        }
        Ok(reply)
    }

    /// A new connection: each resolved address in turn, then TLS for `https`.
    fn open(&self, target: &Target, deadline: Instant) -> Result<Conn, Failure> {
        let addrs = self.resolve(target)?;
        let stream = conn::open(&target.host, &target.authority(), target.tls, &addrs, CONNECT_TIMEOUT, deadline)
            .map_err(|e| Failure { kind: if e.timed_out { Kind::Timeout } else { Kind::Other }, message: e.message })?;
        Ok(Conn { stream, scratch: vec![0; READ_CHUNK] })
    }

    /// The addresses of the target's host, remembered for [`RESOLVE_TTL`]. The lookup
    /// (`getaddrinfo`) runs on the calling thread and is bounded by the system resolver's own
    /// timeouts (resolv.conf: 5 s a try, a few tries), not by the call's deadline. That is the
    /// cost of having no lookup thread: on a bad network a channel's thread may wait that long,
    /// once a minute at most, and only when it opens a connection. Each channel has its own
    /// threads, so no other channel waits.
    fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, Failure> {
        let key = (target.host.clone(), target.port);
        let now = Instant::now();
        if let Some((at, addrs)) = lock(&self.shared.names).get(&key)
            && now.saturating_duration_since(*at) < RESOLVE_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Failure::other(format!("cannot resolve {}: {e}", target.host)))?
            .collect();
        let mut names = lock(&self.shared.names);
        if names.len() >= RESOLVE_CACHE {
            names.clear();
        }
        names.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }

    /// The newest idle connection to the target's origin; old ones are closed on the way.
    fn take_idle(&self, target: &Target) -> Option<Conn> {
        let mut idle = lock(&self.shared.idle);
        let now = Instant::now();
        idle.retain(|i| now.saturating_duration_since(i.since) < IDLE_MAX_AGE);
        let newest = idle.iter().rposition(|i| i.origin.same_origin(target))?;
        Some(idle.remove(newest).conn)
    }

    fn keep_idle(&self, target: &Target, conn: Conn) {
        let mut idle = lock(&self.shared.idle);
        let same = idle.iter().filter(|i| i.origin.same_origin(target)).count();
        if same >= IDLE_PER_ORIGIN
            && let Some(oldest) = idle.iter().position(|i| i.origin.same_origin(target))
        {
            idle.remove(oldest);
        }
        if idle.len() >= IDLE_TOTAL {
            idle.remove(0);
        }
        let origin = Target { tls: target.tls, host: target.host.clone(), port: target.port, path: String::new() };
        idle.push(Idle { origin, conn, since: Instant::now() });
    }
}

fn encode(body: &Value) -> Result<Vec<u8>, TransportError> {
    serde_json::to_vec(body).map_err(|e| TransportError(format!("cannot encode the request body: {e}")))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reply as read off the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
    /// The body was read whole and the connection may carry another request.
    reusable: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The call's deadline passed.
    Timeout,
    /// Nothing of a reply arrived and the connection failed: a kept-alive connection the
    /// server had closed. The request may be sent again on a new connection.
    Stale,
    Other,
}

/// Why one exchange failed; the message never holds the URL (it may carry a token).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    kind: Kind,
    message: String,
}

impl Failure {
    fn timeout(message: String) -> Failure {
        Failure { kind: Kind::Timeout, message }
    }

    fn other(message: String) -> Failure {
        Failure { kind: Kind::Other, message }
    }

    /// For the caller. A timeout's text starts with "timed out" (WeChat's poller tells its
    /// normal long-poll end by that).
    fn describe(self, timeout: Duration) -> TransportError {
        match self.kind {
            Kind::Timeout => TransportError(format!("{} (the call may take {timeout:?})", self.message)),
            Kind::Stale | Kind::Other => TransportError(self.message),
        }
    }
}

impl From<wire::WireError> for Failure {
    fn from(e: wire::WireError) -> Failure {
        Failure::other(e.to_string())
    }
}

/// Write the request (head, and the body if it was not in the same buffer).
fn send(io: &mut impl Write, request: &[u8], body: &[u8]) -> Result<(), Failure> {
    let result = io.write_all(request).and_then(|()| io.write_all(body)).and_then(|()| io.flush());
    result.map_err(|e| match e {
        e if is_timeout(&e) => Failure::timeout("timed out sending the request".to_string()),
        e if conn::tls_error(&e).is_some() => Failure::other(format!("TLS error: {e}")),
        // Nothing of a reply has come yet: on a kept-alive connection, the server closed it.
        e => Failure { kind: Kind::Stale, message: format!("network error sending the request: {e}") },
    })
}

/// Read one reply: skip 1xx heads, then the body by its framing, at most `limit` bytes.
fn read_reply(io: &mut impl Read, scratch: &mut [u8], limit: u64) -> Result<Reply, Failure> {
    let mut buf = Vec::new();
    let mut received = false;
    let head = loop {
        if let Some(head) = wire::parse_head(&buf)? {
            if (100..200).contains(&head.status) && head.status != 101 {
                buf.drain(..head.len);
                continue;
            }
            break head;
        }
        let n = read_some(io, scratch, received)?;
        if n == 0 {
            return Err(if received {
                Failure::other("the connection closed in the middle of the reply's head".to_string())
            } else {
                Failure { kind: Kind::Stale, message: "the server closed the connection without a reply".to_string() }
            });
        }
        received = true;
        buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
    };
    if head.status == 101 {
        return Err(Failure::other("the server switched protocols (HTTP 101)".to_string()));
    }
    let framing = wire::framing(&head)?;
    let mut decoder = BodyDecoder::new(framing, limit)?;
    // A declared length is allocated once (up to a MiB: the rest grows only as it arrives).
    let mut body = match framing {
        wire::Framing::Length(n) => Vec::with_capacity(usize::try_from(n.min(1 << 20)).unwrap_or(0)),
        _ => Vec::new(),
    };
    let early = buf.get(head.len..).unwrap_or_default();
    let mut leftover = decoder.feed(early, &mut body)? < early.len();
    while !decoder.done() {
        let n = read_some(io, scratch, true)?;
        if n == 0 {
            decoder.end_of_stream()?;
            break;
        }
        let piece = scratch.get(..n).unwrap_or_default();
        leftover |= decoder.feed(piece, &mut body)? < piece.len();
    }
    // Bytes past the reply were never asked for: the connection is not in a known state.
    let reusable = !leftover && wire::reusable(&head, framing);
    Ok(Reply { status: head.status, headers: head.headers, body, reusable })
}

/// One read; 0 at the end of the stream (a TLS peer that closed without close_notify too).
fn read_some(io: &mut impl Read, scratch: &mut [u8], received: bool) -> Result<usize, Failure> {
    loop {
        match io.read(scratch) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) if is_timeout(&e) => return Err(Failure::timeout("timed out waiting for the reply".to_string())),
            Err(e) if conn::tls_error(&e).is_some() => return Err(Failure::other(format!("TLS error: {e}"))),
            Err(e) => {
                let kind = if received { Kind::Other } else { Kind::Stale };
                return Err(Failure { kind, message: format!("network error reading the reply: {e}") });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// A reader that hands out `pieces` one per read, then `end` (None: end of stream).
    struct Pieces {
        pieces: std::collections::VecDeque<Vec<u8>>,
        /// How much of the front piece was handed out.
        taken: usize,
        end: Option<ErrorKind>,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(piece) = self.pieces.front() else {
                return match self.end {
                    None => Ok(0),
                    Some(kind) => Err(io::Error::new(kind, "scripted")),
                };
            };
            let rest = &piece[self.taken..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.taken += n;
            if self.taken == piece.len() {
                self.pieces.pop_front();
                self.taken = 0;
            }
            Ok(n)
        }
    }

    fn read_pieces(pieces: &[&str], end: Option<ErrorKind>, limit: u64) -> Result<Reply, Failure> {
        let pieces = pieces.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Reads of 7 bytes at most: heads and bodies arrive split everywhere.
        let scratch = if limit > 1024 { READ_CHUNK } else { 7 };
        read_reply(&mut Pieces { pieces, taken: 0, end }, &mut vec![0; scratch], limit)
    }

    /// A reply's status, body and reuse, or the failure's kind.
    type Outcome = Result<(u16, String, bool), Kind>;

    fn ok(status: u16, body: &str, reusable: bool) -> Outcome {
        Ok((status, body.to_string(), reusable))
    }

    #[test]
    fn replies_are_read_from_split_pieces() {
        let reset = Some(ErrorKind::ConnectionReset);
        let timeout = Some(ErrorKind::WouldBlock);
        // (pieces, end of the stream, expected status, body and reuse, or the failure's kind)
        let cases: &[(&[&str], Option<ErrorKind>, Outcome)] = &[
            (&["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], None, ok(200, "ok", true)),
            (&["HTTP/1.1 200 OK\r\nConte", "nt-Length: 2\r\n", "\r\no", "k"], reset, ok(200, "ok", true)),
            (
                &["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r", "\nok\r\n0\r\n\r\n"],
                None,
                ok(200, "ok", true),
            ),
            (
                &[
                    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
                    "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                ],
                None,
                ok(201, "", true),
            ),
            (
                &["HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"],
                None,
                ok(200, "x", true),
            ),
            (&["HTTP/1.0 200 OK\r\n\r\nto the", " end"], None, ok(200, "to the end", false)),
            (&["HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"], None, ok(200, "ok", false)),
            (&["HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"], None, ok(404, "nope", true)),
            (&["HTTP/1.1 204 No Content\r\n\r\n"], reset, ok(204, "", true)),
            // Bytes after the reply: answered, but the connection is not kept.
            (&["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1"], None, ok(200, "ok", false)),
            // Nothing at all: the idle connection was closed, the request may go again.
            (&[], None, Err(Kind::Stale)),
            (&[], reset, Err(Kind::Stale)),
            (&[], Some(ErrorKind::UnexpectedEof), Err(Kind::Stale)),
            (&[], timeout, Err(Kind::Timeout)),
            // Part of a reply: never again.
            (&["HTTP/1.1 200"], None, Err(Kind::Other)),
            (&["HTTP/1.1 200 OK\r\n"], reset, Err(Kind::Other)),
            (&["HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"], None, Err(Kind::Other)),
            (&["HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"], timeout, Err(Kind::Timeout)),
            (&["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"], None, Err(Kind::Other)),
            (&["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"], None, Err(Kind::Other)),
            (&["HTTP/1.1 101 Switching Protocols\r\n\r\n"], None, Err(Kind::Other)),
            (&["garbage\r\n\r\n"], None, Err(Kind::Other)),
            // Over the limit (64 bytes here), declared or streamed.
            (&["HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n"], None, Err(Kind::Other)),
            (&["HTTP/1.1 200 OK\r\n\r\n", &"x".repeat(40), &"x".repeat(40)], None, Err(Kind::Other)),
        ];
        for (pieces, end, want) in cases {
            let got = read_pieces(pieces, *end, 64).map(|r| (r.status, String::from_utf8(r.body).unwrap(), r.reusable));
            assert_eq!(got.map_err(|f| f.kind), *want, "{pieces:?} then {end:?}");
        }
    }

    #[test]
    fn the_limit_is_named_and_sixteen_mib_pass() {
        let failure = read_pieces(&["HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"], None, 64).unwrap_err();
        assert_eq!(failure.message, "the reply is larger than the 64-byte limit");
        let body = "y".repeat(TEXT_LIMIT as usize);
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        assert_eq!(read_pieces(&[&head, &body], None, TEXT_LIMIT).unwrap().body.len(), body.len());
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        assert!(read_pieces(&[head, &body, "z"], None, TEXT_LIMIT).is_err());
    }

    #[test]
    fn names_are_answered_from_memory_within_the_ttl() {
        let client = HttpClient::default();
        // A miss looks the name up (an IP literal: no DNS) and remembers it.
        let local = wire::parse_url("http://127.0.0.1:8081/bot/getMe").unwrap();
        assert_eq!(client.resolve(&local).unwrap(), vec!["127.0.0.1:8081".parse().unwrap()]);
        assert!(lock(&client.shared.names).contains_key(&("127.0.0.1".to_string(), 8081)));
        // A hit does not look up: a name that cannot resolve answers what was remembered.
        let seeded: SocketAddr = "10.1.2.3:443".parse().unwrap();
        lock(&client.shared.names).insert(("api.example.invalid".to_string(), 443), (Instant::now(), vec![seeded]));
        let target = wire::parse_url("https://api.example.invalid/bot123/getUpdates").unwrap();
        assert_eq!(client.resolve(&target).unwrap(), vec![seeded]);
        // Expired: looked up again (and this name does not resolve).
        let old = Instant::now().checked_sub(RESOLVE_TTL + Duration::from_secs(1)).unwrap();
        lock(&client.shared.names).insert(("api.example.invalid".to_string(), 443), (old, vec![seeded]));
        assert!(client.resolve(&target).is_err());
    }

    /// What a scripted server saw: connections accepted, request heads read.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<String>>,
    }

    /// A loopback server: for each connection, `script(n, stream, seen)` with the connection's
    /// number (from 0). Returns its base URL.
    fn serve(script: impl Fn(usize, TcpStream, &Seen) + Send + Sync + 'static) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let shared = Arc::clone(&seen);
        let script = Arc::new(script);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = shared.connections.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (Arc::clone(&script), Arc::clone(&shared));
                thread::spawn(move || script(n, stream, &seen));
            }
        });
        (url, seen)
    }

    /// Read one request (head and a Content-Length body); None when the client went away.
    fn next_request(stream: &mut TcpStream, seen: &Seen) -> Option<String> {
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            data.push(byte[0]);
        }
        let text = String::from_utf8(data).unwrap();
        let length = text
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.parse::<usize>().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).ok()?;
        let request = format!("{text}{}", String::from_utf8_lossy(&body));
        seen.requests.lock().unwrap().push(request.clone());
        Some(request)
    }

    const SHORT: Duration = Duration::from_secs(5);

    #[test]
    fn connections_are_kept_alive_and_reused() {
        let (url, seen) = serve(|_, mut stream, seen| {
            while next_request(&mut stream, seen).is_some() {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            }
        });
        let client = HttpClient::default();
        let clone = client.clone();
        for _ in 0..3 {
            assert_eq!(
                client.post_json(&format!("{url}/a"), &serde_json::json!({"n": 1}), SHORT).unwrap(),
                (200, "ok".into())
            );
            assert_eq!(clone.request(Method::Get, &format!("{url}/b"), &[], None, SHORT).unwrap().body, "ok");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        let requests = seen.requests.lock().unwrap();
        assert_eq!(requests.len(), 6);
        assert!(requests[0].starts_with("POST /a HTTP/1.1\r\nHost: 127.0.0.1:"), "{}", requests[0]);
        assert!(
            requests[0]
                .contains("\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 7\r\n\r\n{\"n\":1}")
        );
        assert!(requests[0].contains(&format!("\r\nUser-Agent: tether/{}\r\n", env!("CARGO_PKG_VERSION"))));
        assert!(requests[1].starts_with("GET /b HTTP/1.1\r\n") && !requests[1].contains("Content-Length"));
    }

    #[test]
    fn the_connections_of_a_poller_and_three_senders_are_all_kept() {
        let (url, seen) = serve(|_, mut stream, seen| {
            // Answer once all four are open, so that each request had its own connection.
            let started = Instant::now();
            while seen.connections.load(Ordering::SeqCst) < 4 && started.elapsed() < SHORT {
                thread::sleep(Duration::from_millis(5));
            }
            while next_request(&mut stream, seen).is_some() {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            }
        });
        let client = HttpClient::default();
        let at_once = |n: usize| {
            let calls: Vec<_> = (0..n)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    thread::spawn(move || client.request(Method::Get, &url, &[], None, SHORT).unwrap().body)
                })
                .collect();
            calls.into_iter().for_each(|c| assert_eq!(c.join().unwrap(), "ok"));
        };
        at_once(4);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
        assert_eq!(lock(&client.shared.idle).len(), 4, "all four are kept");
        for _ in 0..3 {
            at_once(2);
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 4, "no new connection");
    }

    #[test]
    fn connection_close_is_honoured() {
        let (url, seen) = serve(|_, mut stream, seen| {
            if next_request(&mut stream, seen).is_some() {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        let client = HttpClient::default();
        for _ in 0..2 {
            assert_eq!(client.exchange(Method::Get, &url, &[], &[], SHORT, 10).unwrap().body, b"ok");
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_kept_alive_connection_closed_by_the_server_is_retried_once() {
        // The first connection answers once and is then closed by the server; the request
        // that finds it closed goes again on a new connection.
        let (url, seen) = serve(|n, mut stream, seen| {
            if n == 0 {
                next_request(&mut stream, seen);
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").unwrap();
                // Read the next request, then close without answering.
                next_request(&mut stream, seen);
                return;
            }
            while next_request(&mut stream, seen).is_some() {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext").unwrap();
            }
        });
        let client = HttpClient::default();
        assert_eq!(client.post_json(&url, &Value::Null, SHORT).unwrap().1, "first");
        assert_eq!(client.post_json(&url, &Value::Null, SHORT).unwrap().1, "next");
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert_eq!(seen.requests.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_reply_cut_after_its_head_is_an_error_and_is_not_sent_again() {
        let (url, seen) = serve(|_, mut stream, seen| {
            next_request(&mut stream, seen);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        });
        let client = HttpClient::default();
        let error = client.post_json(&url, &Value::Null, SHORT).unwrap_err();
        assert!(error.0.contains("closed in the middle of the body"), "{error}");
        assert_eq!(seen.requests.lock().unwrap().len(), 1);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let (url, _) = serve(|_, mut stream, seen| {
            next_request(&mut stream, seen);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot-hex\r\n");
            thread::sleep(Duration::from_secs(2));
        });
        let started = Instant::now();
        let error = HttpClient::default().request(Method::Get, &url, &[], None, SHORT).unwrap_err();
        assert_eq!(error.0, "bad HTTP reply: bad chunk size");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_stalled_server_is_bounded_by_the_deadline() {
        for script in ["nothing", "half a head", "half a body"] {
            let (url, seen) = serve(move |_, mut stream, seen| {
                next_request(&mut stream, seen);
                match script {
                    "half a head" => stream.write_all(b"HTTP/1.1 200 OK\r\nContent-").unwrap(),
                    "half a body" => stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").unwrap(),
                    _ => {}
                }
                thread::sleep(Duration::from_secs(3));
            });
            let started = Instant::now();
            let error = HttpClient::default().post_json(&url, &Value::Null, Duration::from_millis(300)).unwrap_err();
            let waited = started.elapsed();
            assert!(error.0.starts_with("timed out"), "{script}: {error}");
            assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(2), "{script}: {waited:?}");
            assert_eq!(seen.requests.lock().unwrap().len(), 1, "{script}: a timed-out request is not sent again");
        }
    }

    #[test]
    fn a_silent_tls_server_and_a_refused_port_fail_in_bounded_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let error =
            HttpClient::default().post_json(&format!("https://{addr}/x"), &Value::Null, Duration::from_millis(300));
        assert!(error.unwrap_err().0.starts_with("timed out"));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
        let error = HttpClient::default().post_json(&format!("http://{addr}/x"), &Value::Null, SHORT).unwrap_err();
        assert!(error.0.starts_with("cannot connect to 127.0.0.1:"), "{error}");
        assert!(!error.0.contains("/x"), "the URL (it may hold a token) is not in errors: {error}");
    }

    /// A loopback HTTPS server (the unit tests' CA signed its certificate for `localhost` and
    /// 127.0.0.1): each connection answers its requests with `ok` until the client leaves.
    fn serve_tls(address: &str, seen: Arc<Seen>) -> u16 {
        let listener = TcpListener::bind((address, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = crate::net::tls::test_server_config();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let (config, seen) = (Arc::clone(&config), Arc::clone(&seen));
                thread::spawn(move || {
                    let session = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(session, stream);
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match tls.read(&mut byte) {
                                Ok(1) => head.push(byte[0]),
                                _ => return,
                            }
                        }
                        let head = String::from_utf8(head).unwrap();
                        let length = head
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ")?.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; length];
                        if tls.read_exact(&mut body).is_err() {
                            return;
                        }
                        seen.requests.lock().unwrap().push(head + &String::from_utf8_lossy(&body));
                        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
                        if tls.write_all(reply).and_then(|()| tls.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    #[test]
    fn https_does_a_real_handshake_checks_the_name_and_keeps_the_connection() {
        let seen = Arc::new(Seen::default());
        let port = serve_tls("127.0.0.1", Arc::clone(&seen));
        let client = HttpClient::default();
        for host in ["localhost", "127.0.0.1"] {
            for n in 0..3 {
                let url = format!("https://{host}:{port}/bot/x{n}");
                let reply = client.post_json(&url, &serde_json::json!({"n": n}), SHORT);
                assert_eq!(reply, Ok((200, "ok".into())), "{url}");
            }
        }
        // One handshake per host name (a pooled connection is reused), every request whole.
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        let requests = seen.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 6);
        assert!(requests[2].starts_with("POST /bot/x2 HTTP/1.1\r\nHost: localhost:"), "{}", requests[2]);
        assert!(requests[2].ends_with("\r\n\r\n{\"n\":2}"), "{}", requests[2]);
        // An address the certificate does not name (Linux answers all of 127/8 on loopback)
        // is refused before anything is sent.
        let port = serve_tls("127.0.0.2", Arc::clone(&seen));
        let other = HttpClient::default()
            .request(Method::Get, &format!("https://127.0.0.2:{port}/"), &[], None, SHORT)
            .unwrap_err();
        assert!(other.0.starts_with("TLS error: "), "{other}");
        assert_eq!(seen.requests.lock().unwrap().len(), 6);
    }

    #[test]
    fn a_plain_server_behind_https_is_a_tls_error() {
        let (url, _) = serve(|_, mut stream, _| {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            thread::sleep(Duration::from_millis(500));
        });
        let url = url.replace("http://", "https://");
        let error = HttpClient::default().request(Method::Get, &url, &[], None, SHORT).unwrap_err();
        assert!(error.0.starts_with("TLS error: "), "{error}");
    }

    #[test]
    fn gets_follow_redirects_and_keep_headers_on_the_same_origin_only() {
        let (other, other_seen) = serve(|_, mut stream, seen| {
            while next_request(&mut stream, seen).is_some() {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfile").unwrap();
            }
        });
        let to_other = format!("{other}/file");
        let (url, seen) = serve(move |_, mut stream, seen| {
            while let Some(request) = next_request(&mut stream, seen) {
                let reply = if request.starts_with("GET /start ") {
                    "HTTP/1.1 302 Found\r\nLocation: /moved\r\nContent-Length: 0\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to_other}\r\nContent-Length: 0\r\n\r\n")
                };
                stream.write_all(reply.as_bytes()).unwrap();
            }
        });
        let headers = [("X-Token", "secret".to_string())];
        let reply =
            HttpClient::default().exchange(Method::Get, &format!("{url}/start"), &headers, &[], SHORT, 100).unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"file"[..]));
        let requests = seen.requests.lock().unwrap();
        assert!(requests[1].starts_with("GET /moved ") && requests[1].contains("X-Token: secret"));
        let elsewhere = other_seen.requests.lock().unwrap();
        assert!(elsewhere[0].starts_with("GET /file ") && !elsewhere[0].contains("secret"), "{}", elsewhere[0]);
        drop((requests, elsewhere));
        // A POST gets the 3xx itself.
        let reply =
            HttpClient::default().exchange(Method::Post, &format!("{url}/start"), &[], b"x", SHORT, 100).unwrap();
        assert_eq!(reply.status, 307);
    }
}
