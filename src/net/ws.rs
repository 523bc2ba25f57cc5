//! The blocking WebSocket client for platforms that push over a socket (Discord's gateway,
//! DingTalk Stream): connect with bounded phases over rustls (`wss://`) or plain `ws://`,
//! read with a deadline so a caller's loop can heartbeat between reads, bounded frames and
//! messages, close with a code. Frames are [`super::ws_frame`] (pure), the connection is
//! [`super::conn`] (the HTTP client's); no async runtime.

use std::io::{self, ErrorKind, Read, Write};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::conn::{self, Stream, is_timeout};
use super::http_wire;
use super::ws_frame::{self, Assembler, FrameError, Incoming, Opcode};
use crate::backoff::Backoff;

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// TCP connect, per resolved address.
    pub connect_timeout: Duration,
    /// The TLS and WebSocket handshakes together (a silent server cannot hold us longer).
    pub handshake_timeout: Duration,
    /// Each socket write: a peer that stops reading cannot block a send forever.
    pub write_timeout: Duration,
    /// The largest message accepted (a bigger one ends the connection with close 1009).
    pub max_message_bytes: usize,
    /// The largest single frame accepted.
    pub max_frame_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            // Discord's READY and GUILD_CREATE of a large server are a few MiB at most.
            max_message_bytes: 8 * 1024 * 1024,
            max_frame_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why a connection could not be made or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// The URL is not a `ws://` or `wss://` URL with a host. Retrying will not help.
    BadUrl(String),
    /// Name resolution or TCP connect failed.
    Connect(String),
    /// A phase took longer than its bound (connect, handshake, send).
    Timeout(String),
    /// The TLS layer refused (certificate, protocol).
    Tls(String),
    /// The server answered the upgrade with an HTTP status instead of 101.
    Rejected { status: u16 },
    /// The peer vanished without a close frame (reset, EOF).
    Dropped(String),
    /// A message or frame over the configured limit arrived (or was about to be sent).
    TooLarge(String),
    /// The peer broke the WebSocket protocol, or another I/O failure.
    Protocol(String),
    /// The connection is already closed; make a new one.
    Closed,
}

impl WsError {
    /// Whether connecting again to the same URL may succeed: not for a malformed URL, nor for
    /// an upgrade refused with a 4xx other than 429 (DingTalk's expired ticket needs a new URL).
    pub fn is_retryable(&self) -> bool {
        match self {
            WsError::BadUrl(_) => false,
            WsError::Rejected { status } => *status == 429 || *status >= 500,
            _ => true,
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::BadUrl(m) => write!(f, "bad WebSocket URL: {m}"),
            WsError::Connect(m) => write!(f, "cannot connect: {m}"),
            WsError::Timeout(m) => write!(f, "timed out: {m}"),
            WsError::Tls(m) => write!(f, "TLS error: {m}"),
            WsError::Rejected { status } => write!(f, "WebSocket upgrade refused with HTTP {status}"),
            WsError::Dropped(m) => write!(f, "connection dropped: {m}"),
            WsError::TooLarge(m) => write!(f, "too large: {m}"),
            WsError::Protocol(m) => write!(f, "WebSocket error: {m}"),
            WsError::Closed => f.write_str("connection closed"),
        }
    }
}

/// What one [`WsClient::read`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// The peer pinged; the pong has already been sent.
    Ping,
    /// The answer to one of our pings (liveness for keepalive checks).
    Pong,
    /// The peer closed (our close reply is already sent); `code` is absent when the frame had
    /// none or the connection was already closed.
    Close {
        code: Option<u16>,
        reason: String,
    },
    /// Nothing arrived before the deadline; the connection is still usable.
    Timeout,
    /// The connection is unusable; drop it and connect again.
    Error(WsError),
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// The read buffer is given back down to this once a large message has passed.
const KEEP_BUFFER: usize = 64 * 1024;

/// One open WebSocket connection.
pub struct WsClient {
    stream: Stream,
    /// Bytes read and not yet taken as frames (at most one frame's header and payload more
    /// than a read: a frame over the limit is refused from its header).
    buf: Vec<u8>,
    /// What each socket read lands in first (zeroed once, at connect).
    scratch: Vec<u8>,
    assembler: Assembler,
    config: WsConfig,
    /// Our close frame went out: nothing more is sent.
    sent_close: bool,
    /// The connection is finished (closed by either side, dropped, or broken).
    finished: bool,
    /// `scheme://host:port`, for messages (the full URL may carry a ticket).
    peer: String,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WsClient({})", self.peer)
    }
}

/// Connect to a `ws://` or `wss://` URL with every phase bounded by `config`.
pub fn connect(url: &str, config: &WsConfig) -> Result<WsClient, WsError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| WsError::BadUrl("not an absolute URL".to_string()))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "wss" => true,
        "ws" => false,
        other => return Err(WsError::BadUrl(format!("scheme {other:?} is not ws or wss"))),
    };
    let target =
        http_wire::parse_url(&format!("{}://{rest}", if tls { "https" } else { "http" })).map_err(WsError::BadUrl)?;
    let peer = format!("{scheme}://{}", target.authority());

    let addrs: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| WsError::Connect(format!("cannot resolve {}: {e}", target.host)))?
        .collect();
    let connect_deadline = Instant::now() + config.connect_timeout.saturating_mul(addrs.len().max(1) as u32);
    let mut stream = conn::open(&target.host, &peer, tls, &addrs, config.connect_timeout, connect_deadline)
        .map_err(|e| if e.timed_out { WsError::Timeout(e.message) } else { WsError::Connect(e.message) })?;

    // The TLS handshake (on the first write) and the upgrade share one bound.
    stream.set_deadline(Instant::now() + config.handshake_timeout);
    let mut key = [0u8; 16];
    getrandom::fill(&mut key).map_err(|e| WsError::Protocol(format!("no random key: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether/{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path,
        target.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    let handshake_failed = |e: io::Error| {
        if is_timeout(&e) {
            WsError::Timeout(format!(
                "{peer} did not complete the handshake (no answer within {:?})",
                config.handshake_timeout
            ))
        } else {
            classify(e, &peer)
        }
    };
    stream.write_all(request.as_bytes()).and_then(|()| stream.flush()).map_err(handshake_failed)?;
    let mut buf = Vec::new();
    let mut scratch = vec![0; READ_CHUNK];
    let head = loop {
        match http_wire::parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(WsError::Protocol(format!("{peer}: {e}"))),
        }
        match stream.read(&mut scratch) {
            Ok(0) => return Err(WsError::Dropped(format!("{peer} closed the connection during the handshake"))),
            Ok(n) => buf.extend_from_slice(scratch.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(handshake_failed(e)),
        }
    };
    if head.status != 101 {
        return Err(WsError::Rejected { status: head.status });
    }
    let header = |name: &str| head.headers.get(name);
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::Protocol(format!("{peer} answered 101 without Upgrade: websocket")));
    }
    if header("sec-websocket-accept") != Some(ws_frame::accept_key(key.as_bytes()).as_str()) {
        return Err(WsError::Protocol(format!("{peer} answered with a wrong Sec-WebSocket-Accept")));
    }
    // Frames the server sent right behind its answer.
    buf.drain(..head.len);
    Ok(WsClient {
        stream,
        buf,
        scratch,
        assembler: Assembler::new(config.max_message_bytes),
        config: config.clone(),
        sent_close: false,
        finished: false,
        peer,
    })
}

/// Connect, retrying with `backoff` while the failure is retryable. `wait(delay)` sleeps (or
/// waits on a stop signal) and returns false to give up; the last error is then returned.
pub fn connect_with_backoff(
    url: &str,
    config: &WsConfig,
    backoff: &mut Backoff,
    mut wait: impl FnMut(Duration) -> bool,
) -> Result<WsClient, WsError> {
    loop {
        match connect(url, config) {
            Ok(client) => {
                backoff.reset();
                return Ok(client);
            }
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("WebSocket: {e}; retrying in {} ms", delay.as_millis());
                if !wait(delay) {
                    return Err(e);
                }
            }
        }
    }
}

impl WsClient {
    /// `scheme://host:port` of the peer.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Wait for the next message until `deadline`. Pings are answered before returning.
    pub fn read(&mut self, deadline: Instant) -> WsEvent {
        if self.finished {
            return WsEvent::Close { code: None, reason: String::new() };
        }
        loop {
            match ws_frame::decode(&self.buf, self.config.max_frame_bytes.min(self.config.max_message_bytes)) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    if self.buf.capacity() > KEEP_BUFFER && self.buf.len() <= READ_CHUNK {
                        self.buf.shrink_to(READ_CHUNK);
                    }
                    match self.assembler.push(frame) {
                        Ok(None) => continue,
                        Ok(Some(incoming)) => return self.deliver(incoming),
                        Err(e) => return self.refuse(e),
                    }
                }
                Ok(None) => {}
                Err(e) => return self.refuse(e),
            }
            // A passed deadline is a quick poll, not an endless block or no look at all.
            self.stream.set_deadline(deadline.max(Instant::now() + Duration::from_millis(1)));
            match self.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.finished = true;
                    return WsEvent::Error(WsError::Dropped(format!(
                        "{} closed the socket without a close frame",
                        self.peer
                    )));
                }
                Ok(n) => self.buf.extend_from_slice(self.scratch.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return WsEvent::Timeout,
                Err(e) => {
                    self.finished = true;
                    return WsEvent::Error(classify(e, &self.peer));
                }
            }
        }
    }

    fn deliver(&mut self, incoming: Incoming) -> WsEvent {
        match incoming {
            Incoming::Text(text) => WsEvent::Text(text),
            Incoming::Binary(bytes) => WsEvent::Binary(bytes),
            Incoming::Ping(payload) => match self.send_frame(Opcode::Pong, &payload) {
                Ok(()) => WsEvent::Ping,
                Err(e) => WsEvent::Error(e),
            },
            Incoming::Pong => WsEvent::Pong,
            Incoming::Close { code, reason } => {
                // Answer with the same code; the peer then ends the TCP connection.
                if !self.sent_close {
                    let _ = self.close_frame(code.unwrap_or(1000), "");
                }
                self.finished = true;
                WsEvent::Close { code, reason }
            }
        }
    }

    /// A frame or message we do not take: tell the peer why (best effort), and finish.
    fn refuse(&mut self, e: FrameError) -> WsEvent {
        let error = match e {
            FrameError::TooLarge(what) => {
                let _ = self.close_frame(1009, "message too big");
                WsError::TooLarge(format!("{}: {what}", self.peer))
            }
            FrameError::Protocol(what) => {
                let _ = self.close_frame(1002, "protocol error");
                WsError::Protocol(format!("{}: {what}", self.peer))
            }
        };
        self.finished = true;
        WsEvent::Error(error)
    }

    /// Send one text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        if text.len() > self.config.max_message_bytes {
            return Err(WsError::TooLarge(format!("{}: a {}-byte message to send", self.peer, text.len())));
        }
        self.send_frame(Opcode::Text, text.as_bytes())
    }

    /// Send a ping (its pong comes back as [`WsEvent::Pong`]); payload ≤ 125 bytes.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), WsError> {
        let payload = payload.get(..ws_frame::MAX_CONTROL_PAYLOAD).unwrap_or(payload);
        self.send_frame(Opcode::Ping, payload)
    }

    /// One frame, masked, written within the write timeout.
    fn send_frame(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), WsError> {
        if self.sent_close || self.finished {
            return Err(WsError::Closed);
        }
        let mask = getrandom::u32().map_err(|e| WsError::Protocol(format!("no random mask: {e}")))?;
        let frame = ws_frame::encode(opcode, payload, mask.to_ne_bytes());
        self.stream.set_deadline(Instant::now() + self.config.write_timeout);
        let written = self.stream.write_all(&frame).and_then(|()| self.stream.flush());
        written.map_err(|e| {
            self.finished = true;
            if is_timeout(&e) {
                WsError::Timeout(format!("{} did not take our message in time", self.peer))
            } else {
                classify(e, &self.peer)
            }
        })
    }

    /// Close with `code` (Discord: 4000-range keeps the session resumable, 1000 ends it), wait
    /// up to `linger` for the peer's close reply, then drop the socket.
    pub fn close(mut self, code: u16, reason: &str, linger: Duration) {
        if self.close_frame(code, reason).is_ok() {
            let deadline = Instant::now() + linger;
            while Instant::now() < deadline {
                match self.read(deadline) {
                    WsEvent::Close { .. } | WsEvent::Error(_) | WsEvent::Timeout => break,
                    _ => {}
                }
            }
        }
        self.stream.shutdown();
    }

    fn close_frame(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        self.send_frame(Opcode::Close, &ws_frame::close_payload(code, reason))?;
        self.sent_close = true;
        Ok(())
    }
}

/// An I/O error as one of ours, naming the peer but never the full URL.
fn classify(e: io::Error, peer: &str) -> WsError {
    if let Some(tls) = conn::tls_error(&e) {
        return WsError::Tls(format!("{peer}: {tls}"));
    }
    match e.kind() {
        _ if is_timeout(&e) => WsError::Timeout(format!("{peer}: {e}")),
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::UnexpectedEof
        | ErrorKind::BrokenPipe => WsError::Dropped(format!("{peer}: {e}")),
        _ => WsError::Protocol(format!("{peer}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::net::TcpStream;
    use std::sync::mpsc;
    use std::thread;
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::{Message, WebSocket};

    fn quick() -> WsConfig {
        WsConfig {
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(2),
            ..WsConfig::default()
        }
    }

    /// A one-connection loopback server running `script` on the accepted WebSocket.
    fn serve(script: impl FnOnce(WebSocket<TcpStream>) + Send + 'static) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/gateway?v=10", listener.local_addr().unwrap());
        thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            script(tungstenite::accept(tcp).unwrap());
        });
        url
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn echo_round_trip() {
        let url = serve(|mut ws| {
            while let Ok(m) = ws.read() {
                if m.is_text() {
                    ws.send(m).unwrap();
                }
            }
        });
        let mut client = connect(&url, &quick()).unwrap();
        client.send_text("héllo ⚡").unwrap();
        assert_eq!(client.read(soon()), WsEvent::Text("héllo ⚡".to_string()));
        client.send_text("again").unwrap();
        assert_eq!(client.read(soon()), WsEvent::Text("again".to_string()));
    }

    #[test]
    fn pings_are_answered_and_our_pings_come_back_as_pongs() {
        let (tx, rx) = mpsc::channel();
        let url = serve(move |mut ws| {
            ws.send(Message::Ping(b"are you there".to_vec().into())).unwrap();
            loop {
                match ws.read() {
                    Ok(Message::Pong(p)) => tx.send(p.to_vec()).unwrap(),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let mut client = connect(&url, &quick()).unwrap();
        assert_eq!(client.read(soon()), WsEvent::Ping);
        // The pong left at once, not at our next read.
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"are you there");
        client.send_ping(b"1").unwrap();
        assert_eq!(client.read(soon()), WsEvent::Pong);
    }

    #[test]
    fn server_close_code_and_reason_are_reported() {
        let url = serve(|mut ws| {
            let frame = CloseFrame { code: CloseCode::from(4014), reason: "Disallowed intent(s).".into() };
            ws.close(Some(frame)).unwrap();
            while ws.read().is_ok() {}
        });
        let mut client = connect(&url, &quick()).unwrap();
        assert_eq!(
            client.read(soon()),
            WsEvent::Close { code: Some(4014), reason: "Disallowed intent(s).".to_string() }
        );
        // Reading on after the close says closed again, never blocks or panics.
        assert!(matches!(client.read(soon()), WsEvent::Close { code: None, .. } | WsEvent::Error(_)));
    }

    #[test]
    fn our_close_code_reaches_the_server() {
        let (tx, rx) = mpsc::channel();
        let url = serve(move |mut ws| {
            loop {
                match ws.read() {
                    Ok(Message::Close(Some(f))) => tx.send((u16::from(f.code), f.reason.to_string())).unwrap(),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let client = connect(&url, &quick()).unwrap();
        let started = Instant::now();
        client.close(4000, "zombie", Duration::from_secs(2));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (4000, "zombie".to_string()));
        assert!(started.elapsed() < Duration::from_secs(2), "close waited {:?}", started.elapsed());
    }

    #[test]
    fn read_deadline_times_out_and_the_connection_stays_usable() {
        let url = serve(|mut ws| {
            thread::sleep(Duration::from_millis(600));
            ws.send(Message::text("late")).unwrap();
            while ws.read().is_ok() {}
        });
        let mut client = connect(&url, &quick()).unwrap();
        let started = Instant::now();
        assert_eq!(client.read(Instant::now() + Duration::from_millis(150)), WsEvent::Timeout);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(140) && waited < Duration::from_millis(500), "{waited:?}");
        // An already-passed deadline is a quick poll, not an endless block.
        assert_eq!(client.read(Instant::now()), WsEvent::Timeout);
        assert_eq!(client.read(soon()), WsEvent::Text("late".to_string()));
    }

    #[test]
    fn a_dropped_socket_is_an_error_not_a_hang() {
        let url = serve(|ws| {
            let tcp = ws.into_inner();
            tcp.shutdown(std::net::Shutdown::Both).unwrap();
        });
        let mut client = connect(&url, &quick()).unwrap();
        let started = Instant::now();
        let event = client.read(soon());
        assert!(matches!(event, WsEvent::Error(WsError::Dropped(_)) | WsEvent::Close { code: None, .. }), "{event:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn an_oversize_message_is_refused_with_1009() {
        let (tx, rx) = mpsc::channel();
        let url = serve(move |mut ws| {
            ws.send(Message::text("x".repeat(5000))).unwrap();
            loop {
                match ws.read() {
                    Ok(Message::Close(Some(f))) => tx.send(u16::from(f.code)).unwrap(),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let config = WsConfig { max_message_bytes: 1024, max_frame_bytes: 1024, ..quick() };
        let mut client = connect(&url, &config).unwrap();
        let event = client.read(soon());
        assert!(matches!(event, WsEvent::Error(WsError::TooLarge(_))), "{event:?}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1009);
    }

    #[test]
    fn a_silent_server_cannot_hold_the_handshake() {
        // Accepts TCP (the backlog does) but never speaks: both TLS and plain upgrades time out.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for url in [format!("wss://{addr}/"), format!("ws://{addr}/")] {
            let started = Instant::now();
            let error = connect(&url, &quick()).unwrap_err();
            assert!(matches!(error, WsError::Timeout(_)), "{url}: {error:?}");
            assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        }
        drop(listener);
    }

    #[test]
    fn upgrade_refused_and_bad_urls_are_not_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            use std::io::{Read, Write};
            while let Ok((mut tcp, _)) = listener.accept() {
                let mut buf = [0u8; 2048];
                let _ = tcp.read(&mut buf);
                let _ = tcp.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let mut waits = 0;
        let error = connect_with_backoff(&format!("ws://{addr}/"), &quick(), &mut backoff, |_| {
            waits += 1;
            true
        })
        .unwrap_err();
        assert_eq!(error, WsError::Rejected { status: 401 });
        assert_eq!(waits, 0);
        assert!(matches!(connect("https://example.com/", &quick()), Err(WsError::BadUrl(_))));
        assert!(matches!(connect("not a url", &quick()), Err(WsError::BadUrl(_))));
    }

    #[test]
    fn refused_connections_back_off_until_told_to_stop() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let mut delays = Vec::new();
        let error = connect_with_backoff(&format!("ws://{addr}/"), &quick(), &mut backoff, |d| {
            delays.push(d);
            delays.len() < 4
        })
        .unwrap_err();
        assert!(matches!(error, WsError::Connect(_)), "{error:?}");
        assert_eq!(delays.len(), 4);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(40)), "{delays:?}");
        assert!(delays[3] > delays[0], "{delays:?}");
    }
}
