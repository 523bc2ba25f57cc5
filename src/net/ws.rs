//! The blocking WebSocket client for platforms that push over a socket (Discord's gateway,
//! DingTalk Stream): connect with bounded phases over rustls (`wss://`) or plain `ws://`,
//! read with a deadline so a caller's loop can heartbeat between reads, bounded frames and
//! messages, close with a code. Built on tungstenite; no async runtime.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::backoff::Backoff;

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// TCP connect, per resolved address.
    pub connect_timeout: Duration,
    /// Each read of the TLS and WebSocket handshakes (a silent server cannot hold us longer).
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

/// One open WebSocket connection.
pub struct WsClient {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    /// A handle on the same socket, to change its read timeout whatever wraps it.
    socket: TcpStream,
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
    let request = url.into_client_request().map_err(|e| WsError::BadUrl(format!("{e}")))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(WsError::BadUrl(format!("scheme {:?} is not ws or wss", other.unwrap_or("")))),
    };
    let Some(host) = uri.host() else { return Err(WsError::BadUrl("no host".to_string())) };
    // An IPv6 literal comes bracketed from the URI; the resolver wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let peer = format!("{}://{host}:{port}", if tls { "wss" } else { "ws" });

    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| WsError::Connect(format!("cannot resolve {host}: {e}")))?
        .collect();
    let mut last = WsError::Connect(format!("{host} resolved to no address"));
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, config.connect_timeout) {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) if is_timeout(e.kind()) => {
                last =
                    WsError::Timeout(format!("TCP connect to {peer} ({addr}) took over {:?}", config.connect_timeout))
            }
            Err(e) => last = WsError::Connect(format!("{peer} ({addr}): {e}")),
        }
    }
    let Some(tcp) = tcp else { return Err(last) };
    let io = |e: std::io::Error| WsError::Connect(format!("{peer}: {e}"));
    tcp.set_nodelay(true).map_err(io)?;
    tcp.set_read_timeout(Some(config.handshake_timeout)).map_err(io)?;
    tcp.set_write_timeout(Some(config.write_timeout)).map_err(io)?;
    let socket = tcp.try_clone().map_err(io)?;

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_message_bytes.max(64 * 1024))
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_frame_bytes.min(config.max_message_bytes)));
    let ws = match tungstenite::client_tls_with_config(request, tcp, Some(ws_config), None) {
        Ok((ws, _response)) => ws,
        Err(HandshakeError::Interrupted(_)) => {
            return Err(WsError::Timeout(format!(
                "{peer} did not complete the handshake (no answer within {:?})",
                config.handshake_timeout
            )));
        }
        Err(HandshakeError::Failure(e)) => return Err(classify(e, &peer)),
    };
    Ok(WsClient { ws, socket, peer })
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
        // A zero timeout means "block forever" to the OS; the shortest real wait stands in.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        if let Err(e) = self.socket.set_read_timeout(Some(left)) {
            return WsEvent::Error(WsError::Protocol(format!("{}: {e}", self.peer)));
        }
        match self.ws.read() {
            Ok(Message::Text(text)) => WsEvent::Text(text.as_str().to_string()),
            Ok(Message::Binary(bytes)) => WsEvent::Binary(bytes.to_vec()),
            Ok(Message::Ping(_)) => {
                // tungstenite queued the pong; push it out now rather than at the next read.
                match self.ws.flush() {
                    Ok(()) => WsEvent::Ping,
                    Err(e) => WsEvent::Error(classify(e, &self.peer)),
                }
            }
            Ok(Message::Pong(_)) => WsEvent::Pong,
            Ok(Message::Close(frame)) => {
                // Sends our close reply; the peer then ends the TCP connection.
                let _ = self.ws.flush();
                match frame {
                    Some(f) => WsEvent::Close { code: Some(u16::from(f.code)), reason: f.reason.as_str().to_string() },
                    None => WsEvent::Close { code: None, reason: String::new() },
                }
            }
            // Raw frames are never returned by `read`.
            Ok(Message::Frame(_)) => WsEvent::Timeout,
            Err(tungstenite::Error::Io(e)) if is_timeout(e.kind()) => WsEvent::Timeout,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                WsEvent::Close { code: None, reason: String::new() }
            }
            Err(e) => {
                let error = classify(e, &self.peer);
                if matches!(error, WsError::TooLarge(_)) {
                    // Tell the peer why, best effort; the connection is finished either way.
                    let _ = self.close_frame(1009, "message too big");
                }
                WsEvent::Error(error)
            }
        }
    }

    /// Send one text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(Message::text(text))
    }

    /// Send a ping (its pong comes back as [`WsEvent::Pong`]); payload ≤ 125 bytes.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(Message::Ping(payload.to_vec().into()))
    }

    fn send(&mut self, message: Message) -> Result<(), WsError> {
        self.ws.send(message).map_err(|e| match e {
            tungstenite::Error::Io(io) if is_timeout(io.kind()) => {
                WsError::Timeout(format!("{} did not take our message in time", self.peer))
            }
            other => classify(other, &self.peer),
        })
    }

    /// Close with `code` (Discord: 4000-range keeps the session resumable, 1000 ends it), wait
    /// up to `linger` for the peer's close reply, then drop the socket.
    pub fn close(mut self, code: u16, reason: &str, linger: Duration) {
        if self.close_frame(code, reason).is_err() {
            return;
        }
        let deadline = Instant::now() + linger;
        while Instant::now() < deadline {
            match self.read(deadline) {
                WsEvent::Close { .. } | WsEvent::Error(_) | WsEvent::Timeout => break,
                _ => {}
            }
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    fn close_frame(&mut self, code: u16, reason: &str) -> Result<(), tungstenite::Error> {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        self.ws.close(Some(frame))?;
        self.ws.flush()
    }
}

fn is_timeout(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A tungstenite error as one of ours, naming the peer but never the full URL.
fn classify(e: tungstenite::Error, peer: &str) -> WsError {
    use tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => WsError::Closed,
        E::Io(io) if is_timeout(io.kind()) => WsError::Timeout(format!("{peer}: {io}")),
        E::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::BrokenPipe
            ) =>
        {
            WsError::Dropped(format!("{peer}: {io}"))
        }
        E::Io(io) => WsError::Protocol(format!("{peer}: {io}")),
        E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            WsError::Dropped(format!("{peer} closed the socket without a close frame"))
        }
        E::Protocol(p) => WsError::Protocol(format!("{peer}: {p}")),
        E::Capacity(c) => WsError::TooLarge(format!("{peer}: {c}")),
        E::WriteBufferFull(_) => WsError::TooLarge(format!("{peer}: write buffer full")),
        E::Tls(t) => WsError::Tls(format!("{peer}: {t}")),
        E::Http(response) => WsError::Rejected { status: response.status().as_u16() },
        E::Url(u) => WsError::BadUrl(format!("{u}")),
        other => WsError::Protocol(format!("{peer}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

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
