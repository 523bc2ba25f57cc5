//! A minimal HTTP/1.1 server on `std::net` for local pages and webhooks (no framework): one
//! thread per connection, one request per connection (`Connection: close`), a bounded head and
//! body read under one deadline, a cap on concurrent connections, and a hand-over of the socket
//! for WebSocket upgrades.
//!
//! Parsing and response formatting are pure functions ([`parse_head`], [`Response::to_bytes`],
//! [`websocket_upgrade`], ...) tested with tables; [`Server`] owns the sockets and threads.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Bounds that keep slow, half-open, huge and malformed clients from hurting others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes; more gets 431.
    pub max_head: usize,
    /// Request body, in bytes; more gets 413.
    pub max_body: usize,
    /// Time allowed to receive the head and the body, from accept; after it the client is
    /// dropped (408 when it had sent part of a request).
    pub head_timeout: Duration,
    /// Each write to a client may block this long.
    pub write_timeout: Duration,
    /// Connections served at once, upgraded WebSockets included; beyond it, 503 and close.
    pub max_connections: usize,
    /// Connections one client address may hold at once, so slow clients from one place
    /// cannot take every slot; beyond it, 503 and close.
    pub max_per_address: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 16 * 1024,
            max_body: 64 * 1024,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 128,
            max_per_address: 32,
        }
    }
}

/// Most headers one request may carry.
const MAX_HEADERS: usize = 100;
/// Stack of each connection thread: handlers parse small JSON and write small pages.
const CONNECTION_STACK: usize = 256 * 1024;

/// One parsed request. `path` and `query` are raw (not percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// The target up to `?`, e.g. `/ws`.
    pub path: String,
    /// The target after `?`, without it; empty when there is none.
    pub query: String,
    /// Names as sent; look them up with [`Request::header`] (case-insensitive).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's address (set by the server, `None` in pure tests).
    pub peer: Option<SocketAddr>,
}

/// Compare secrets without an early exit (the length still shows, as it must).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Request {
    /// The first header with this name (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name` from every `Cookie` header, as sent (not decoded).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim_matches('"'))
    }

    /// The first query parameter `name`, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }

    /// Whether a browser sent this from a page of this very server: no `Origin` (not a
    /// cross-site browser request), or an `Origin` naming the `Host` it was sent to. Pages
    /// elsewhere cannot open our WebSocket or post admin actions.
    pub fn is_same_origin(&self) -> bool {
        let Some(origin) = self.header("origin") else {
            return true;
        };
        let Some(host) = self.header("host") else {
            return false;
        };
        let origin_host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        origin_host.is_some_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(host))
    }

    /// Whether the header's comma-separated value list contains `token` (case-insensitive),
    /// as for `Connection: keep-alive, Upgrade`.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A response; [`Response::to_bytes`] adds `Content-Length` and `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A plain-text response (a short message a person reads).
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Cache-Control", "no-store")
            .header("X-Content-Type-Options", "nosniff")
            .body(body.into().into_bytes())
    }

    /// An HTML response.
    pub fn html(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/html; charset=utf-8")
            .header("X-Content-Type-Options", "nosniff")
            .body(body.into().into_bytes())
    }

    /// `303 See Other` to `location`.
    pub fn redirect(location: &str) -> Response {
        Response::text(303, format!("see {location}\n")).header("Location", location)
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Response {
        self.body = body;
        self
    }

    /// The bytes on the wire. `include_body` is false for `HEAD`. A `101` gets no
    /// `Content-Length` or `Connection: close` (the connection lives on as a WebSocket).
    pub fn to_bytes(&self, include_body: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (name, value) in &self.headers {
            // Values come from our own code, but a stray CR/LF must never split a header.
            let clean: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            out.extend_from_slice(format!("{name}: {clean}\r\n").as_bytes());
        }
        if self.status != 101 {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if include_body && self.status != 101 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase for the statuses this server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The connection after a `101`: the handler owns the socket from here on.
pub type UpgradeFn = Box<dyn FnOnce(TcpStream, Vec<u8>) + Send>;

/// What a handler wants done with a request.
pub enum Reply {
    /// Write this response and close.
    Respond(Response),
    /// Write this response (a `101`), then give the socket and any bytes already read past
    /// the head to the closure, on the connection's thread.
    Upgrade(Response, UpgradeFn),
}

/// The request handler, called on the connection's thread.
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

/// Where the head ends: the index just past the first `\r\n\r\n`.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parse a request head (request line and headers, with or without the final blank line).
/// Errors are a status (400, 501, 505) and a short reason for the client.
pub fn parse_head(head: &[u8]) -> Result<Request, (u16, &'static str)> {
    let text = std::str::from_utf8(head).map_err(|_| (400, "request head is not UTF-8"))?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err((400, "malformed request line")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err((400, "malformed method"));
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((400, "malformed request target"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err((505, "only HTTP/1.1 is supported")),
        _ => return Err((400, "malformed HTTP version")),
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            // Only possible as the final blank line when the caller left it in.
            continue;
        }
        if line.starts_with([' ', '\t']) {
            return Err((400, "folded headers are not allowed"));
        }
        let (name, value) = line.split_once(':').ok_or((400, "malformed header"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err((400, "malformed header name"));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err((400, "control character in header"));
        }
        if headers.len() == MAX_HEADERS {
            return Err((431, "too many headers"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        peer: None,
    };
    if request.header("transfer-encoding").is_some() {
        return Err((501, "chunked request bodies are not supported; send Content-Length"));
    }
    // RFC 9112 §3.2: more than one Host is a 400; a check reading the first while something
    // else reads the second must not be possible.
    if request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("host")).count() > 1 {
        return Err((400, "more than one Host header"));
    }
    content_length(&request)?;
    Ok(request)
}

/// The declared body length (0 when absent); conflicting or non-numeric values are a 400.
pub fn content_length(request: &Request) -> Result<usize, (u16, &'static str)> {
    let mut found: Option<usize> = None;
    for (_, value) in request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err((400, "malformed Content-Length"));
        }
        let n = value.parse::<usize>().map_err(|_| (400, "malformed Content-Length"))?;
        if found.is_some_and(|f| f != n) {
            return Err((400, "conflicting Content-Length headers"));
        }
        found = Some(n);
    }
    Ok(found.unwrap_or(0))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Percent-decode a query component (`+` is a space). Bad escapes stay literal; `None` when
/// the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The first parameter `name` of a raw query string, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| percent_decode(k).as_deref() == Some(name))
        .and_then(|(_, v)| percent_decode(v))
}

/// Check a WebSocket handshake request (RFC 6455 §4.2.1) and build its `101` answer, or the
/// error response to send instead.
pub fn websocket_upgrade(request: &Request) -> Result<Response, Response> {
    if request.method != "GET" {
        return Err(Response::text(405, "WebSocket handshakes use GET\n").header("Allow", "GET"));
    }
    if !request.header_has_token("upgrade", "websocket") || !request.header_has_token("connection", "upgrade") {
        return Err(Response::text(426, "this endpoint speaks WebSocket only\n")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade"));
    }
    if request.header("sec-websocket-version") != Some("13") {
        return Err(Response::text(426, "unsupported WebSocket version\n").header("Sec-WebSocket-Version", "13"));
    }
    let key = match request.header("sec-websocket-key") {
        Some(k) if !k.is_empty() => k,
        _ => return Err(Response::text(400, "missing Sec-WebSocket-Key\n")),
    };
    let accept = super::ws_frame::accept_key(key.as_bytes());
    Ok(Response::new(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", &accept))
}

/// A running server: one accept thread, one thread per connection. Dropping it stops it too.
#[must_use = "dropping the server stops it"]
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `listener` (already bound, so the caller words bind errors for its config) with
    /// `handler`. `name` names the threads (`name` and `name-conn`).
    pub fn start(listener: TcpListener, name: &str, limits: Limits, handler: Handler) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let accept_thread = {
            let stop = stop.clone();
            let active = active.clone();
            let conn_name = format!("{name}-conn");
            thread::Builder::new()
                .name(name.to_string())
                .stack_size(CONNECTION_STACK)
                .spawn(move || accept_loop(listener, &conn_name, limits, handler, &stop, &active))?
        };
        Ok(Server { local_addr, stop, active, accept_thread: Some(accept_thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections being served now (upgraded sockets included).
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stop accepting and join the accept thread. Connections in flight end on their own
    /// deadlines; upgraded sockets watch their owner's own stop signal.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.accept_thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // `accept` has no timeout: wake it with a connection of our own. If that fails the
        // thread would block until the next client, so do not wait for it then.
        match TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_secs(1)) {
            Ok(_) => {
                let _ = thread.join();
            }
            Err(e) => log::warn!("http server {}: could not wake accept: {e}", self.local_addr),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address to connect to in order to reach a listener (unspecified → loopback).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Who holds how many connections: the total and per client address. Pure.
#[derive(Debug, Default)]
struct Admission {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerAddress,
}

impl Admission {
    fn admit(&mut self, ip: IpAddr, limits: &Limits) -> Result<(), Refusal> {
        let held = self.per_address.get(&ip).copied().unwrap_or(0);
        if held >= limits.max_per_address {
            return Err(Refusal::PerAddress);
        }
        if self.total >= limits.max_connections {
            return Err(Refusal::Total);
        }
        self.total += 1;
        *self.per_address.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(held) = self.per_address.get_mut(&ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

/// Refused connections are logged at most once per address per [`REFUSAL_LOG_EVERY`]: a
/// flood must not become a flood of log lines. Pure; bounded in addresses remembered.
#[derive(Debug, Default)]
struct RefusalLog {
    last: HashMap<IpAddr, Instant>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
const REFUSAL_LOG_ADDRESSES: usize = 4096;

impl RefusalLog {
    fn should_log(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.last.get(&ip).is_some_and(|at| now.saturating_duration_since(*at) < REFUSAL_LOG_EVERY) {
            return false;
        }
        if self.last.len() >= REFUSAL_LOG_ADDRESSES {
            self.last.retain(|_, at| now.saturating_duration_since(*at) < REFUSAL_LOG_EVERY);
            if self.last.len() >= REFUSAL_LOG_ADDRESSES {
                return false; // Too many distinct refused addresses this minute: stay quiet.
            }
        }
        self.last.insert(ip, now);
        true
    }
}

/// Frees a connection's place (the count and its address's) when its thread ends, however
/// it ends.
struct Slot {
    active: Arc<AtomicUsize>,
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.lock().unwrap_or_else(PoisonError::into_inner).release(self.ip);
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    conn_name: &str,
    limits: Limits,
    handler: Handler,
    stop: &AtomicBool,
    active: &Arc<AtomicUsize>,
) {
    let mut backoff = Duration::from_millis(10);
    let admission = Arc::new(Mutex::new(Admission::default()));
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                log::warn!("http accept failed: {e}; retrying in {backoff:?}");
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let admitted = admission.lock().unwrap_or_else(PoisonError::into_inner).admit(ip, &limits);
        if let Err(refusal) = admitted {
            if refusals.should_log(ip, Instant::now()) {
                match refusal {
                    Refusal::Total => log::warn!(
                        "http: {ip} refused: {} connections open (logged once a minute per address)",
                        limits.max_connections
                    ),
                    Refusal::PerAddress => log::warn!(
                        "http: {ip} refused: it holds {} connections already (logged once a minute per address)",
                        limits.max_per_address
                    ),
                }
            }
            reject_busy(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot { active: active.clone(), admission: admission.clone(), ip };
        let handler = handler.clone();
        let spawned =
            thread::Builder::new().name(conn_name.to_string()).stack_size(CONNECTION_STACK).spawn(move || {
                let _slot = slot;
                serve_connection(stream, peer, &limits, &handler);
            });
        if let Err(e) = spawned {
            // The closure (socket and slot) was dropped with the error: the client sees a close.
            log::warn!("http: cannot start a thread for {peer}: {e}");
        }
    }
}

/// Answer 503 without a thread and without blocking the accept loop.
fn reject_busy(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let response = Response::text(503, "too many connections, try again shortly\n");
    let _ = (&stream).write_all(&response.to_bytes(true));
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived, so that closing does not reset the connection and eat the 503.
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        match (&stream).read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// Why reading a request stopped early.
enum ReadFailure {
    /// Tell the client, then close.
    Respond(u16, &'static str),
    /// Close without a word (nothing was sent, or the socket failed).
    Close,
}

fn serve_connection(mut stream: TcpStream, peer: SocketAddr, limits: &Limits, handler: &Handler) {
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(limits.write_timeout)).is_err() {
        return;
    }
    let deadline = Instant::now() + limits.head_timeout;
    let request = read_request(&mut stream, limits, deadline).and_then(|(head, rest)| {
        let mut request = parse_head(&head).map_err(|(s, m)| ReadFailure::Respond(s, m))?;
        request.peer = Some(peer);
        let rest = read_body(&mut stream, &mut request, rest, limits, deadline)?;
        Ok((request, rest))
    });
    let (request, rest) = match request {
        Ok(pair) => pair,
        Err(ReadFailure::Close) => return,
        Err(ReadFailure::Respond(status, message)) => {
            log::debug!("http: {peer}: {status} {message}");
            let response = Response::text(status, format!("{message}\n"));
            let _ = stream.write_all(&response.to_bytes(true));
            close_gently(stream);
            return;
        }
    };
    let include_body = request.method != "HEAD";
    match handler(request) {
        Reply::Respond(response) => {
            let _ = stream.write_all(&response.to_bytes(include_body));
            close_gently(stream);
        }
        Reply::Upgrade(response, take_over) => {
            if stream.write_all(&response.to_bytes(false)).is_ok() {
                take_over(stream, rest);
            }
        }
    }
}

/// Read until the end of the head; returns the head and the bytes read past it.
fn read_request(stream: &mut TcpStream, limits: &Limits, deadline: Instant) -> Result<(Vec<u8>, Vec<u8>), ReadFailure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = read_before(stream, &mut chunk, deadline).map_err(|kind| match kind {
            ReadStop::TimedOut if !buf.is_empty() => ReadFailure::Respond(408, "request head took too long"),
            _ => ReadFailure::Close,
        })?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadFailure::Close
            } else {
                ReadFailure::Respond(400, "incomplete request head")
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        match find_head_end(&buf[searched_from..]) {
            Some(end) if searched_from + end <= limits.max_head => {
                let rest = buf.split_off(searched_from + end);
                return Ok((buf, rest));
            }
            Some(_) => return Err(ReadFailure::Respond(431, "request head too large")),
            None if buf.len() > limits.max_head => {
                return Err(ReadFailure::Respond(431, "request head too large"));
            }
            None => {}
        }
    }
}

/// Read the declared body into `request.body`; returns bytes read past it (pipelining, unused).
fn read_body(
    stream: &mut TcpStream,
    request: &mut Request,
    mut rest: Vec<u8>,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<u8>, ReadFailure> {
    let length = content_length(request).map_err(|(s, m)| ReadFailure::Respond(s, m))?;
    if length > limits.max_body {
        return Err(ReadFailure::Respond(413, "request body too large"));
    }
    if length == 0 {
        return Ok(rest);
    }
    let mut chunk = [0u8; 4096];
    while rest.len() < length {
        let n = read_before(stream, &mut chunk, deadline).map_err(|kind| match kind {
            ReadStop::TimedOut => ReadFailure::Respond(408, "request body took too long"),
            ReadStop::Failed => ReadFailure::Close,
        })?;
        if n == 0 {
            return Err(ReadFailure::Respond(400, "incomplete request body"));
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let after = rest.split_off(length);
    request.body = rest;
    Ok(after)
}

enum ReadStop {
    TimedOut,
    Failed,
}

/// One `read` that gives up at `deadline`.
fn read_before(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, ReadStop> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadStop::TimedOut);
        }
        // A zero timeout means "block forever" to std: keep it at least 1 ms.
        if stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).is_err() {
            return Err(ReadStop::Failed);
        }
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadStop::TimedOut);
            }
            Err(_) => return Err(ReadStop::Failed),
        }
    }
}

/// Close after a response: send FIN, then drain briefly so unread request bytes do not turn
/// the close into a reset that destroys the response before the client reads it.
fn close_gently(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1024 * 1024 {
        match read_before(&mut stream, &mut buf, deadline) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Send raw bytes to `addr` and read the whole answer (until close), bounded by 5 s.
    pub(crate) fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(bytes).unwrap();
        read_to_close(&mut stream)
    }

    /// Read until the server closes (or 5 s pass, which fails the caller's assertions).
    pub(crate) fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(crate) fn status_of(response: &str) -> u16 {
        response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn hello_server(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handler: Handler =
            Arc::new(|req: Request| Reply::Respond(Response::text(200, format!("hello {}\n", req.path))));
        Server::start(listener, "httpd-test", limits, handler).unwrap()
    }

    #[test]
    fn parse_head_table() {
        let ok = |head: &str| parse_head(head.as_bytes());
        /// Method, path and query, or the error status.
        type Expected = Result<(&'static str, &'static str, &'static str), u16>;
        let cases: &[(&str, Expected)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(("GET", "/", ""))),
            ("GET /ws?token=a%20b HTTP/1.1\r\n\r\n", Ok(("GET", "/ws", "token=a%20b"))),
            ("POST /hook HTTP/1.0\r\nContent-Length: 3\r\n\r\n", Ok(("POST", "/hook", ""))),
            ("GET /\r\n\r\n", Err(400)),
            ("GET  / HTTP/1.1\r\n\r\n", Err(400)),
            ("get / HTTP/1.1\r\n\r\n", Err(400)),
            ("GET http://x/ HTTP/1.1\r\n\r\n", Err(400)),
            ("GET / HTTP/2.0\r\n\r\n", Err(505)),
            ("GET / FTP/1.0\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nNo colon\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", Err(400)),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Err(501)),
            ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nhost: evil.example\r\n\r\n", Err(400)),
            ("\u{1}\u{2}garbage\r\n\r\n", Err(400)),
        ];
        for (head, expected) in cases {
            let got = ok(head);
            match (expected, &got) {
                (Ok((m, p, q)), Ok(r)) => {
                    assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_str()), (*m, *p, *q), "{head:?}")
                }
                (Err(status), Err((s, _))) => assert_eq!(s, status, "{head:?}"),
                _ => panic!("{head:?}: expected {expected:?}, got {got:?}"),
            }
        }
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\xff: x\r\n\r\n").unwrap_err().0, 400);
    }

    #[test]
    fn headers_cookies_and_query() {
        let req = parse_head(
            b"GET /?a=1&token=x%2By+z&&b HTTP/1.1\r\nHOST: h:1\r\nCookie: a=1; tether_sid=abc\r\ncookie: c=\"q\"\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.header("host"), Some("h:1"));
        assert_eq!(req.header("missing"), None);
        assert_eq!(req.cookie("tether_sid"), Some("abc"));
        assert_eq!(req.cookie("c"), Some("q"));
        assert_eq!(req.cookie("tether"), None);
        assert_eq!(req.query_param("token").as_deref(), Some("x+y z"));
        assert_eq!(req.query_param("b").as_deref(), Some(""));
        assert_eq!(req.query_param("c"), None);
        assert!(req.header_has_token("connection", "upgrade"));
        assert!(!req.header_has_token("connection", "close"));
    }

    #[test]
    fn percent_decode_table() {
        let cases = [
            ("abc", Some("abc")),
            ("a%20b", Some("a b")),
            ("a+b", Some("a b")),
            ("%e2%9c%93", Some("✓")),
            ("100%", Some("100%")),
            ("%zz", Some("%zz")),
            ("%4", Some("%4")),
            ("%41", Some("A")),
            ("%ff", None),
        ];
        for (input, expected) in cases {
            assert_eq!(percent_decode(input).as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn find_head_end_table() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    #[test]
    fn response_bytes() {
        let r = Response::text(200, "ok\n").header("X-A", "b\r\nInjected: 1");
        let text = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("X-A: bInjected: 1\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\nConnection: close\r\n\r\nok\n"), "{text}");
        let head_only = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        let switching = String::from_utf8(Response::new(101).to_bytes(true)).unwrap();
        assert_eq!(switching, "HTTP/1.1 101 Switching Protocols\r\n\r\n");
    }

    #[test]
    fn websocket_upgrade_table() {
        let base = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let ok = websocket_upgrade(&parse_head(base.as_bytes()).unwrap()).unwrap();
        assert_eq!(ok.status, 101);
        // RFC 6455 §1.3's example.
        assert!(ok.headers.contains(&("Sec-WebSocket-Accept".into(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())));
        let cases = [
            (base.replace("GET", "POST"), 405),
            (base.replace("Upgrade: websocket\r\n", ""), 426),
            (base.replace("Connection: Upgrade", "Connection: close"), 426),
            (base.replace("Version: 13", "Version: 8"), 426),
            (base.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400),
        ];
        for (head, status) in cases {
            let err = websocket_upgrade(&parse_head(head.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(err.status, status, "{head}");
        }
    }

    #[test]
    fn admission_caps_each_address_and_the_total() {
        let limits = Limits { max_connections: 64, max_per_address: 16, ..Limits::default() };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut admission = Admission::default();
        let from_a = (0..64).filter(|_| admission.admit(a, &limits).is_ok()).count();
        assert_eq!(from_a, 16, "one address holds at most 16");
        assert_eq!(admission.admit(a, &limits), Err(Refusal::PerAddress));
        assert_eq!(admission.admit(b, &limits), Ok(()), "another address still gets in");
        admission.release(a);
        assert_eq!(admission.admit(a, &limits), Ok(()), "a freed place is reused");
        let mut full = Admission::default();
        for n in 0..64u8 {
            full.admit(IpAddr::V4(Ipv4Addr::new(10, 1, 0, n)), &limits).unwrap();
        }
        assert_eq!(full.admit(b, &limits), Err(Refusal::Total));
        for n in 0..64u8 {
            full.release(IpAddr::V4(Ipv4Addr::new(10, 1, 0, n)));
        }
        assert!(full.per_address.is_empty() && full.total == 0, "{full:?}");
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_address() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut log = RefusalLog::default();
        let logged = (0..1000).filter(|_| log.should_log(a, t0)).count();
        assert_eq!(logged, 1);
        assert!(log.should_log(b, t0));
        assert!(!log.should_log(a, t0 + Duration::from_secs(59)));
        assert!(log.should_log(a, t0 + Duration::from_secs(60)));
        let mut many = RefusalLog::default();
        let distinct = (0..10_000u32).filter(|n| many.should_log(IpAddr::V4(Ipv4Addr::from(*n)), t0)).count();
        assert_eq!(distinct, REFUSAL_LOG_ADDRESSES, "bounded memory and lines");
    }

    /// 200 slow clients from one address (IPv4 loopback) take 32 places; a client from
    /// another address (IPv6 loopback, on a dual-stack listener) is still served.
    #[test]
    fn slow_clients_from_one_address_do_not_lock_out_another() {
        let Ok(listener) = TcpListener::bind("[::]:0") else { return }; // No IPv6 here.
        let handler: Handler = Arc::new(|_req: Request| Reply::Respond(Response::text(200, "hello\n")));
        let server = Server::start(listener, "httpd-test", Limits::default(), handler).unwrap();
        let port = server.local_addr().port();
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let mut slow = Vec::new();
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect_timeout(&v4, Duration::from_secs(2)) {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                slow.push(s);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while server.active_connections() < 32 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(100));
        assert_eq!(server.active_connections(), 32, "one address holds at most 32 places");
        let Ok(_) = TcpStream::connect_timeout(&v6, Duration::from_secs(2)) else { return }; // No ::1.
        let answer = raw_request(v6, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_of(&answer), 200, "{answer}");
        drop(slow);
    }

    #[test]
    fn serves_and_rejects_malformed_request_line() {
        let server = hello_server(Limits::default());
        let addr = server.local_addr();
        let ok = raw_request(addr, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(status_of(&ok), 200, "{ok}");
        assert!(ok.ends_with("hello /x\n"), "{ok}");
        let bad = raw_request(addr, b"HELLO\r\n\r\n");
        assert_eq!(status_of(&bad), 400, "{bad}");
        let head = raw_request(addr, b"HEAD /x HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(&head), 200, "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        server.stop();
    }

    #[test]
    fn oversized_head_gets_431_and_others_are_still_served() {
        let server = hello_server(Limits::default());
        let addr = server.local_addr();
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..400 {
            big.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        assert!(big.len() > 20 * 1024);
        let answer = raw_request(addr, &big);
        assert_eq!(status_of(&answer), 431, "{answer}");
        let ok = raw_request(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(&ok), 200, "{ok}");
    }

    #[test]
    fn endless_head_is_cut_off_at_the_limit() {
        let server = hello_server(Limits::default());
        let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
        endless.extend_from_slice(format!("X-Long: {}", "a".repeat(64 * 1024)).as_bytes());
        let started = Instant::now();
        let answer = raw_request(server.local_addr(), &endless);
        assert_eq!(status_of(&answer), 431, "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3), "not by the deadline");
    }

    #[test]
    fn body_limits() {
        let limits = Limits { max_body: 10, ..Limits::default() };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handler: Handler = Arc::new(|req: Request| {
            Reply::Respond(Response::text(200, String::from_utf8_lossy(&req.body).into_owned()))
        });
        let server = Server::start(listener, "httpd-test", limits, handler).unwrap();
        let addr = server.local_addr();
        let ok = raw_request(addr, b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert!(ok.ends_with("\r\n\r\nhello"), "{ok}");
        let big = raw_request(addr, b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!(status_of(&big), 413, "{big}");
    }

    #[test]
    fn half_open_client_does_not_block_others_and_times_out() {
        let limits = Limits { head_timeout: Duration::from_millis(300), ..Limits::default() };
        let server = hello_server(limits);
        let addr = server.local_addr();
        let mut silent = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut partial = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        partial.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHost:").unwrap();
        let started = Instant::now();
        let ok = raw_request(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(&ok), 200, "{ok}");
        assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
        // The silent one is closed without a word, the partial one gets 408, both by the deadline.
        assert_eq!(read_to_close(&mut silent), "");
        let partial_answer = read_to_close(&mut partial);
        assert_eq!(status_of(&partial_answer), 408, "{partial_answer}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn connection_cap_answers_503() {
        let limits = Limits { max_connections: 2, head_timeout: Duration::from_secs(3), ..Limits::default() };
        let server = hello_server(limits);
        let addr = server.local_addr();
        let _a = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let _b = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.active_connections() < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(server.active_connections(), 2);
        let mut third = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = read_to_close(&mut third);
        assert_eq!(status_of(&answer), 503, "{answer}");
        drop((_a, _b));
        // Slots come back once those connections end.
        while server.active_connections() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let ok = raw_request(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(status_of(&ok), 200, "{ok}");
    }

    #[test]
    fn stop_releases_the_port() {
        let server = hello_server(Limits::default());
        let addr = server.local_addr();
        server.stop();
        // The accept thread is gone: the listener is closed and connections are refused.
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    }
}
