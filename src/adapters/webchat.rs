//! The local web chat channel (`type: "webchat"`): one self-contained page and a WebSocket per
//! browser tab on [`crate::net::httpd`]; what browsers send becomes [`Inbound`], and
//! [`Outbound`] goes to every open tab of the browser it is addressed to.
//!
//! Identity: each browser gets a random secret in the `tether_sid` cookie (HttpOnly,
//! SameSite=Strict), set with the page. Its public id, the sender id and the chat id, is
//! derived from that secret ([`browser_id`]), so the ids that show up in pairing lists, logs
//! and the admin page cannot be turned back into a cookie: naming an id gets a browser
//! neither that id's history nor its identity.
//!
//! Access: on a loopback `listen` without `token`, only requests whose `Host` is a loopback
//! name are served (a web page elsewhere cannot reach the agent through DNS rebinding). With a
//! `token`, every request needs it — the page, `/ws` and `/healthz` alike: `?token=` sets the
//! `tether_token` cookie and redirects to `/`; the cookie or `Authorization: Bearer` works
//! after that. A non-loopback `listen` without `token` is refused at start. `/admin` has its
//! own credential (the admin token, [`admin`]); the chat's token neither grants nor is needed
//! for it.
//!
//! Storage: what a sender the channel's policy does not pass sends is never stored (no
//! history, no upload); history is bounded per browser and in total, in bytes; uploads live
//! under TETHER_HOME ([`uploads`]).
//!
//! Wire protocol: JSON text frames on `/ws`.
//!
//! ```text
//! client → server
//!   {"type":"message","text":"…","file"?:{"name":"…","mime":"…","data":"<base64>"}}
//!   {"type":"button","data":"…"}    a choice under a question was pressed
//! server → client
//!   {"type":"history","messages":[Entry…],"draft":"…"|null}  first frame on every connect
//!   {"type":"message", …Entry}   a finished message: the person's own (echoed to all their
//!                                 tabs) or the agent's answer
//!   {"type":"draft","text":"…"}  the answer so far; replaces the previous draft
//!   {"type":"edit","id":"…","text":"…"}  a message's new text; its buttons are gone
//!   {"type":"typing"}            the agent is working; the page hides it after ~5 s
//!   {"type":"error","text":"…"}  this server could not take a message (file too big, …)
//! Entry = {"id":"<boot>-<n>","from":"you"|"agent","text":"…","file"?:"name","ts":<unix ms>,
//!          "buttons"?:[{"label":"…","data":"…"}]}
//! ```
//!
//! Threads: the HTTP server's accept thread, one thread per connection (a WebSocket keeps its
//! connection thread, which waits on its own queue and on the bytes its reader thread takes
//! from the socket, whichever comes first: no polling), and one dispatcher that moves
//! [`Outbound`] from the outbox into those queues.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::Serialize;
use serde_json::Value;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::adapters::admin::{self, AdminSource};
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel, Supervisor, uploads};
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings, SenderPolicy};
use crate::error::Error;
use crate::event::{Attachment, AttachmentKind, ButtonPress, Inbound, InboundMessage, Outbound};
use crate::health::wall_ms;
use crate::net::httpd::{self, Handler, Limits, Reply, Request, Response, Server, constant_time_eq};

/// The page: HTML, CSS and JS in one file, no build step, nothing fetched from elsewhere.
const PAGE: &str = include_str!("webchat.html");

const SID_COOKIE: &str = "tether_sid";
const TOKEN_COOKIE: &str = "tether_token";
/// Messages kept per browser for replay on reconnect.
const HISTORY_LIMIT: usize = 100;
/// Bytes of history kept per browser: the oldest messages go first. Without it a few long
/// answers would stay in memory for as long as the browser is remembered.
const HISTORY_BYTES: usize = 128 * 1024;
/// A longer message is kept cut to this many bytes in the history (it was shown whole).
const HISTORY_ENTRY_BYTES: usize = 32 * 1024;
/// Bytes of history kept across all browsers; beyond it the least recently active browsers
/// are forgotten (those without an open tab first).
const TOTAL_HISTORY_BYTES: usize = 32 * 1024 * 1024;
/// What of a stranger's message goes to the core: enough for the gates, which never pass it
/// to the agent, and not the megabytes a stranger may send.
const STRANGER_TEXT_LIMIT: usize = 4096;
/// Frames at least this long are written straight to the socket rather than through
/// tungstenite's write buffer, which would keep their size allocated while the socket lives
/// (so a tab keeps at most about its 16 KiB flush size plus this).
const DIRECT_FRAME: usize = 8 * 1024;
/// Browsers remembered at once; the least recently active one without an open tab goes first.
const MAX_BROWSERS: usize = 256;
/// Largest attachment, decoded.
const MAX_UPLOAD: usize = 5 * 1024 * 1024;
/// Largest WebSocket message: a base64 attachment plus its JSON.
pub(crate) const MAX_WS_MESSAGE: usize = 8 * 1024 * 1024;
/// Frames waiting for one socket; a socket that falls this far behind is dropped (the page
/// reconnects and gets the history). Counted on an unbounded channel ([`queue_admits`]): a
/// `bounded` one allocates every slot when the socket opens (4 KiB per tab, for a queue that
/// is almost always empty).
const SOCKET_QUEUE: usize = 256;
/// Bytes of frames waiting for one socket, the same way: one browser that stops reading while
/// long answers stream would otherwise hold up to [`SOCKET_QUEUE`] of them. A frame always
/// fits an empty queue, however long. The frames are shared by every tab ([`Arc<String>`]), so
/// this bounds what a slow tab keeps alive, not a copy per tab.
const SOCKET_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes a socket's reader thread takes from the connection at a time.
/// Small: every open tab has one, and chat frames are short (an upload takes more reads).
const READ_CHUNK: usize = 4 * 1024;
/// tungstenite's read buffer per tab: it holds the frame being parsed, and grows to a longer
/// frame's length by itself.
const WS_READ_BUFFER: usize = 1024;
/// Chunks a reader forwards ahead of its socket thread (back-pressure beyond that).
const READ_AHEAD_CHUNKS: usize = 4;
const PING_EVERY: Duration = Duration::from_secs(25);
/// A socket that has completed no frame (not even a pong) this long is gone. Generous, as a
/// 5 MB upload on a slow phone link is one long frame.
const SOCKET_IDLE_LIMIT: Duration = Duration::from_secs(90);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a message waits for room in the inbound channel before the browser is told.
const INBOUND_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Files the agent sent that stay reachable at `/media/<id>`.
const SERVED_FILES: usize = 256;
/// Largest file the agent may show in the page.
const MAX_SENT_FILE: u64 = 20 * 1024 * 1024;

/// Content-Security-Policy of the page: inline script and style only, sockets to ourselves.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data: 'self'; connect-src 'self' ws: wss:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// A running web chat. Stop it with [`WebchatHandle::stop`]; dropping it stops it too.
#[must_use = "dropping the handle stops the web chat"]
pub struct WebchatHandle {
    /// The address really bound (port 0 in `listen` becomes a real port here).
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<Server>,
    /// Dropped at stop: [`Shared::stopped`] disconnects and wakes every waiting thread, so
    /// none of them polls a flag on a timer (an idle chat sleeps until its next ping).
    stop_signal: Option<Sender<()>>,
}

impl WebchatHandle {
    /// Where a person opens the chat (`0.0.0.0` shown as `127.0.0.1`), without the token.
    pub fn url(&self) -> String {
        let ip = if self.local_addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            match self.local_addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        format!("http://{ip}:{}/", self.local_addr.port())
    }

    /// Stop serving: no new connections, open WebSockets close and the dispatcher ends at
    /// once. Returns once the accept thread is gone.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop_signal = None;
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for WebchatHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address the web chat listens on when `listen` is not set.
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// The web chat, as the seam sees it.
pub const PLATFORM: Platform = Platform {
    name: "webchat",
    keys: &["listen", "token"],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: true,
        edits: true,
        buttons: true,
        max_message_len: MAX_WS_MESSAGE,
        markup: Markup::Markdown,
        typing_refresh: Some(Duration::from_secs(4)),
        // A browser's message is in the page's history, and the page says when tether did
        // not take it.
        journaled: false,
        addressed_commands: false,
    },
    heartbeats: false,
    spawn: spawn_channel,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let (listen, address) = keys.socket_address("listen", DEFAULT_LISTEN)?;
    let token = keys.secret("token")?;
    if !address.ip().is_loopback() && token.is_none() {
        return Err(keys.error(
            "token",
            format!(
                "required because \"listen\" ({listen}) is not a loopback address: anyone who \
                 can reach it could drive the agent. Set a token (or \"$VAR\"), or listen on {DEFAULT_LISTEN}"
            ),
        ));
    }
    Ok(PlatformSettings {
        secrets: token.into_iter().map(|t| ("token", t)).collect(),
        values: [("listen", serde_json::Value::String(listen))].into_iter().collect(),
    })
}

/// Start the web chat of `channel` (serving the admin page too) through the seam.
/// Attachments go under `home/uploads/<channel>/` (0700, files 0600, removed after
/// [`crate::adapters::uploads::RETENTION`]), and the channel's pairing files are read to know
/// who is approved before anything is stored.
fn spawn_channel(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let uploads = io.home.join("uploads").join(&channel.name);
    let admin = io.admin.clone();
    let server =
        spawn_with_uploads(channel, io.inbound, io.outbox, uploads, Some(io.admin), Some(&io.home), &io.supervisor)?;
    // Listening is this channel's "connected".
    io.probe.ok();
    let reached_at = Some(format!("web chat on {}", server.url()));
    // On the terminal only: the log would redact the token, and the operator needs it once.
    let private_note = admin.admin_token().map(|token| {
        let url = crate::admin_token::admin_url(&server.url(), &token);
        format!("admin page (keep this address private) on {url}")
    });
    Ok(RunningChannel { reached_at, private_note, drained: None, intake: None, guard: Some(Box::new(server)) })
}

/// Start the server with the directory attachments are saved under (tests use their own).
fn spawn_with_uploads(
    channel: &ChannelConfig,
    inbound: Sender<Inbound>,
    outbox: Receiver<Outbound>,
    upload_root: PathBuf,
    admin: Option<Arc<dyn AdminSource>>,
    home: Option<&Path>,
    supervisor: &Supervisor,
) -> Result<WebchatHandle, Error> {
    let name = &channel.name;
    let listen = channel.setting("listen").unwrap_or(DEFAULT_LISTEN);
    let token = channel.secret("token").map(|t| t.expose().to_string()).filter(|t| !t.is_empty());
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            Error::Other(format!(
                "channel \"{name}\": `listen` is \"{listen}\", which is not an address \
                 ({e}); write it as host:port, e.g. \"127.0.0.1:8787\""
            ))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Other(format!(
            "channel \"{name}\": `listen` \"{listen}\" resolves to no address; \
             write it as host:port, e.g. \"127.0.0.1:8787\""
        )));
    }
    if token.is_none() && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(Error::Other(format!(
            "channel \"{name}\": `listen` is \"{listen}\", which other machines can reach, \
             and no `token` is set; set `token` (anyone with it can drive your agent) or \
             listen on 127.0.0.1"
        )));
    }
    let listener = TcpListener::bind(&addrs[..]).map_err(|e| bind_error(name, listen, &e))?;
    let local_addr = listener.local_addr().map_err(|e| bind_error(name, listen, &e))?;

    let boot = random_hex(4).map_err(|e| Error::Other(format!("channel \"{name}\": cannot get random bytes: {e}")))?;
    let (stop_signal, stopped) = crossbeam_channel::bounded(0);
    let shared = Arc::new(Shared {
        channel: name.clone(),
        token,
        hub: Mutex::new(Hub::new(boot)),
        inbound,
        stop: AtomicBool::new(false),
        stopped,
        upload_root: upload_root.clone(),
        admin,
        keeper: uploads::Keeper::new(channel, home),
        out_files: uploads::OutboundFiles {
            roots: vec![channel.cwd.clone(), upload_root.clone()],
            max_bytes: MAX_SENT_FILE,
        },
        served: Mutex::new(VecDeque::new()),
        new_browsers: Mutex::new(NewBrowsers::default()),
    });
    let handler: Handler = {
        let shared = shared.clone();
        Arc::new(move |request| handle_request(&shared, request))
    };
    let server = Server::start(listener, &format!("webchat-{name}"), Limits::default(), handler)
        .map_err(|e| Error::Other(format!("channel \"{name}\": cannot start the web server: {e}")))?;
    {
        let shared = shared.clone();
        supervisor.spawn(format!("webchat-{name}-out"), move || dispatch_loop(&shared, &outbox))?;
    }
    log::info!("web chat \"{name}\" listening on http://{local_addr}/");
    Ok(WebchatHandle { local_addr, shared, server: Some(server), stop_signal: Some(stop_signal) })
}

fn bind_error(name: &str, listen: &str, e: &io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "the address is already in use (is another tether running?); stop the other \
             program or choose another address with `listen`"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges); choose another port with `listen`"
        }
        io::ErrorKind::AddrNotAvailable => "this machine has no such address; choose another with `listen`",
        _ => "choose another address with `listen`",
    };
    Error::Other(format!("channel \"{name}\": cannot listen on {listen}: {e}; {hint}"))
}

/// State shared by the HTTP handler, the socket threads and the dispatcher.
struct Shared {
    channel: String,
    token: Option<String>,
    hub: Mutex<Hub>,
    inbound: Sender<Inbound>,
    stop: AtomicBool,
    /// Never sent on: disconnects when the chat stops (see `WebchatHandle::stop_signal`).
    stopped: Receiver<()>,
    upload_root: PathBuf,
    /// Serves `/admin` when the daemon gave one.
    admin: Option<Arc<dyn AdminSource>>,
    /// The channel's sender policy, applied here too before anything is stored.
    keeper: uploads::Keeper,
    /// What `[IMAGE: …]` / `[FILE: …]` may show: files under the channel's cwd or its uploads.
    out_files: uploads::OutboundFiles,
    /// Files the agent sent, served at `/media/<id>` to the browser they were sent to:
    /// (id, browser id, real path), the oldest forgotten past [`SERVED_FILES`].
    served: Mutex<VecDeque<(String, String, PathBuf)>>,
    /// New browser ids per client address (under `pairing`).
    new_browsers: Mutex<NewBrowsers>,
}

impl Shared {
    /// Whether what `sid` sends may be stored (history, uploads): it passes the sender
    /// policy. A stranger's message still goes to the core (which may answer with a pairing
    /// code), but nothing of it is kept here.
    fn may_store(&self, sid: &str) -> bool {
        self.keeper.may_store(sid)
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A thread that panicked while holding the lock left consistent-enough data: the
        // worst case is one message missing from a history.
        self.hub.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (this module only)

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Speaker {
    You,
    Agent,
}

/// One finished message, as the page shows it and the history keeps it. Small: a full
/// history holds 100 of these per browser (56 bytes each, 104 when every field was inline).
/// Boxed strings, not `String`s (8 bytes smaller, and no spare capacity kept), and what
/// few messages have in one optional box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Entry {
    id: Box<str>,
    from: Speaker,
    text: Box<str>,
    ts: u64,
    #[serde(flatten)]
    extra: Option<Box<EntryExtra>>,
}

/// The rarer parts of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct EntryExtra {
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<Box<str>>,
    /// Choices under a question (a permission request); gone once it is answered.
    #[serde(skip_serializing_if = "<[Button]>::is_empty")]
    buttons: Box<[Button]>,
    /// The core's name for this message, for a later edit.
    #[serde(skip)]
    key: Option<Box<str>>,
}

impl Entry {
    fn key(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|extra| extra.key.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Button {
    label: String,
    data: String,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerFrame<'a> {
    History {
        messages: Vec<&'a Entry>,
        draft: Option<&'a str>,
    },
    Message(&'a Entry),
    Draft {
        text: &'a str,
    },
    /// A message's new text (its buttons removed).
    Edit {
        id: &'a str,
        text: &'a str,
    },
    Typing,
    Error {
        text: &'a str,
    },
}

impl ServerFrame<'_> {
    fn to_json(&self) -> String {
        // Plain structs of strings and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The frame as queued for sockets: one copy shared by every tab (an `Arc<String>`, not
    /// an `Arc<str>`, which would copy a long answer once more).
    fn to_frame(&self) -> Arc<String> {
        Arc::new(self.to_json())
    }
}

/// What a browser sends: `{"type": "message", "text": …, "file": {"name", "mime", "data"}}`
/// (text, file, name and mime optional) or `{"type": "button", "data": …}`.
#[derive(Debug)]
pub(crate) enum ClientFrame {
    Message {
        text: String,
        file: Option<ClientFile>,
    },
    /// A button of a question was pressed.
    Button {
        data: String,
    },
}

#[derive(Debug)]
pub(crate) struct ClientFile {
    pub name: String,
    pub mime: String,
    pub data: String,
}

impl ClientFrame {
    /// Read a frame (other keys are ignored), with serde's wording for what is wrong. By hand
    /// from a JSON value: serde's derive for a tagged enum costs kilobytes of code. The strings
    /// are moved out of the value, not copied (a file's data can be megabytes).
    pub(crate) fn from_json(json: &str) -> Result<ClientFrame, String> {
        let mut frame: Value = serde_json::from_slice(json.as_bytes()).map_err(|e| e.to_string())?;
        match take_string(&mut frame, "type")?.as_deref() {
            Some("message") => {
                let text = take_string(&mut frame, "text")?.unwrap_or_default();
                let file = match frame.get_mut("file").map(Value::take) {
                    None | Some(Value::Null) => None,
                    Some(mut file @ Value::Object(_)) => Some(ClientFile {
                        name: take_string(&mut file, "name")?.unwrap_or_default(),
                        mime: take_string(&mut file, "mime")?.unwrap_or_default(),
                        data: take_string(&mut file, "data")?.ok_or("missing field `data`")?,
                    }),
                    Some(other) => return Err(format!("invalid type: {other}, expected a file object")),
                };
                Ok(ClientFrame::Message { text, file })
            }
            Some("button") => {
                Ok(ClientFrame::Button { data: take_string(&mut frame, "data")?.ok_or("missing field `data`")? })
            }
            Some(other) => Err(format!("unknown variant `{other}`, expected `message` or `button`")),
            None => Err("missing field `type`".into()),
        }
    }
}

/// The string at `key` of an object, moved out; `None` when the key is absent.
fn take_string(object: &mut Value, key: &str) -> Result<Option<String>, String> {
    match object.get_mut(key).map(Value::take) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("invalid type: {other}, expected a string for `{key}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// The hub: which browser has which sockets, and what each browser has seen. No I/O.

struct Browser {
    sockets: Vec<SocketSender>,
    history: VecDeque<Entry>,
    /// [`entry_bytes`] of `history`.
    history_bytes: usize,
    /// The answer being written, replayed to a tab that connects mid-turn; kept cut like a
    /// history entry (the tab gets the whole of the next draft), and gone with the answer.
    draft: Option<String>,
    last_active: u64,
}

/// The hub's end of one socket's queue: the frames, and their bytes not yet taken by the
/// socket's thread.
struct SocketSender {
    id: u64,
    frames: Sender<Arc<String>>,
    queued: Arc<AtomicUsize>,
}

impl SocketSender {
    /// Queue `frame`; false when the socket has fallen behind (by frames or bytes) or is gone.
    fn offer(&self, frame: &Arc<String>) -> bool {
        if !queue_admits(self.frames.len(), self.queued.load(Ordering::SeqCst), frame.len()) {
            return false;
        }
        // Counted before it is sent, so the socket never takes more than was counted.
        self.queued.fetch_add(frame.len(), Ordering::SeqCst);
        self.frames.send(frame.clone()).is_ok()
    }
}

/// Whether a frame of `len` bytes may join a socket queue holding `frames` frames of
/// `queued` bytes in all.
fn queue_admits(frames: usize, queued: usize, len: usize) -> bool {
    frames < SOCKET_QUEUE && (queued == 0 || queued.saturating_add(len) <= SOCKET_QUEUE_BYTES)
}

/// The socket thread's end of its queue.
struct SocketQueue {
    frames: Receiver<Arc<String>>,
    queued: Arc<AtomicUsize>,
}

impl SocketQueue {
    /// Mark a received frame as taken (its bytes no longer count against the queue).
    fn taken(&self, frame: &str) {
        self.queued.fetch_sub(frame.len(), Ordering::SeqCst);
    }
}

struct Hub {
    /// Random per start, so message ids never repeat across restarts.
    boot: String,
    next_id: u64,
    next_socket: u64,
    tick: u64,
    browsers: HashMap<String, Browser>,
}

impl Hub {
    fn new(boot: String) -> Hub {
        Hub { boot, next_id: 0, next_socket: 0, tick: 0, browsers: HashMap::new() }
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.boot, self.next_id)
    }

    /// Bytes of history kept across browsers.
    fn total_history_bytes(&self) -> usize {
        self.browsers.values().map(|b| b.history_bytes).sum()
    }

    /// Forget the least recently active browsers (those without an open tab first), never
    /// `keep`, until the history of all fits in [`TOTAL_HISTORY_BYTES`].
    fn enforce_total_bytes(&mut self, keep: &str) {
        let mut total = self.total_history_bytes();
        while total > TOTAL_HISTORY_BYTES {
            let stalest = self
                .browsers
                .iter()
                .filter(|(sid, _)| sid.as_str() != keep)
                .min_by_key(|(_, b)| (!b.sockets.is_empty(), b.last_active))
                .map(|(sid, _)| sid.clone());
            let Some(stalest) = stalest else { return };
            if let Some(gone) = self.browsers.remove(&stalest) {
                total = total.saturating_sub(gone.history_bytes);
            }
        }
    }

    /// The browser's state, created (evicting the stalest idle one if full) when new.
    fn browser(&mut self, sid: &str) -> &mut Browser {
        self.tick += 1;
        self.enforce_total_bytes(sid);
        if !self.browsers.contains_key(sid) && self.browsers.len() >= MAX_BROWSERS {
            let stalest = self
                .browsers
                .iter()
                .min_by_key(|(_, b)| (!b.sockets.is_empty(), b.last_active))
                .map(|(sid, _)| sid.clone());
            if let Some(stalest) = stalest {
                self.browsers.remove(&stalest);
            }
        }
        let tick = self.tick;
        let browser = self.browsers.entry(sid.to_string()).or_insert_with(|| Browser {
            sockets: Vec::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            draft: None,
            last_active: tick,
        });
        browser.last_active = tick;
        browser
    }

    /// A new socket for `sid`: its queue already holds the history frame, so nothing
    /// delivered afterwards can overtake it.
    fn connect(&mut self, sid: &str) -> (u64, SocketQueue) {
        self.next_socket += 1;
        let id = self.next_socket;
        let (tx, rx) = crossbeam_channel::unbounded();
        let queued = Arc::new(AtomicUsize::new(0));
        let sender = SocketSender { id, frames: tx, queued: queued.clone() };
        let browser = self.browser(sid);
        let history =
            ServerFrame::History { messages: browser.history.iter().collect(), draft: browser.draft.as_deref() }
                .to_frame();
        sender.offer(&history);
        browser.sockets.push(sender);
        (id, SocketQueue { frames: rx, queued })
    }

    fn disconnect(&mut self, sid: &str, socket: u64) {
        if let Some(browser) = self.browsers.get_mut(sid) {
            browser.sockets.retain(|sender| sender.id != socket);
        }
    }

    /// Record what the person wrote and show it in all their tabs; returns its id.
    fn record_from_person(&mut self, sid: &str, text: &str, file: Option<String>, ts: u64) -> String {
        let id = self.new_id();
        let entry = Entry {
            id: id.clone().into(),
            from: Speaker::You,
            text: text.into(),
            ts,
            extra: file.map(|file| {
                Box::new(EntryExtra { file: Some(file.into_boxed_str()), buttons: Box::default(), key: None })
            }),
        };
        let browser = self.browser(sid);
        broadcast(browser, ServerFrame::Message(&entry).to_frame());
        push_history(browser, entry);
        id
    }

    /// Route one action (already known to be for this channel) to its browser. Takes it by
    /// value: a long answer's text moves into the history entry instead of being copied.
    fn deliver(&mut self, action: Outbound, ts: u64) {
        let chat = match &action {
            Outbound::Text { chat, .. }
            | Outbound::Draft { chat, .. }
            | Outbound::Typing { chat }
            | Outbound::Ask { chat, .. }
            | Outbound::Edit { chat, .. } => chat,
            Outbound::ButtonAck { .. } => return,
        };
        if !is_valid_sid(&chat.chat_id) {
            log::warn!("web chat \"{}\": no browser can have chat id {:?}; dropped", chat.channel, chat.chat_id);
            return;
        }
        let is_answer = matches!(action, Outbound::Text { .. });
        match action {
            Outbound::Ask { chat, text, key, buttons } => {
                let buttons = buttons.into_iter().map(|(label, data)| Button { label, data });
                let entry = Entry {
                    id: self.new_id().into(),
                    from: Speaker::Agent,
                    text: text.into_boxed_str(),
                    ts,
                    extra: Some(Box::new(EntryExtra { file: None, buttons: buttons.collect(), key: Some(key.into()) })),
                };
                let browser = self.browser(&chat.chat_id);
                broadcast(browser, ServerFrame::Message(&entry).to_frame());
                push_history(browser, entry);
            }
            Outbound::Edit { chat, text, key }
                if self
                    .browsers
                    .get(&chat.chat_id)
                    .is_some_and(|b| b.history.iter().any(|e| e.key() == Some(key.as_str()))) =>
            {
                let browser = self.browser(&chat.chat_id);
                let Some(entry) = browser.history.iter_mut().find(|e| e.key() == Some(key.as_str())) else {
                    return;
                };
                let frame = ServerFrame::Edit { id: &entry.id, text: &text }.to_frame();
                entry.text = cut_for_history(text).into_boxed_str();
                if let Some(extra) = &mut entry.extra {
                    extra.buttons = Box::default();
                }
                broadcast(browser, frame);
                browser.history_bytes = browser.history.iter().map(entry_bytes).sum();
            }
            // An edit of a message this browser no longer has shows as a new message.
            Outbound::Text { chat, text, .. } | Outbound::Edit { chat, text, .. } => {
                let bytes = text.len();
                let entry = Entry {
                    id: self.new_id().into(),
                    from: Speaker::Agent,
                    text: text.into_boxed_str(),
                    ts,
                    extra: None,
                };
                let browser = self.browser(&chat.chat_id);
                browser.draft = None;
                broadcast(browser, ServerFrame::Message(&entry).to_frame());
                push_history(browser, entry);
                if is_answer {
                    // Handed to the browsers (and their history) at once: one part, no wait.
                    crate::audit_writer::record(crate::audit::AuditEvent::AnswerDelivered {
                        channel: chat.channel,
                        chat: chat.chat_id,
                        bytes,
                        parts: 1,
                        duration_ms: 0,
                    });
                }
            }
            Outbound::Draft { chat, text } => {
                let browser = self.browser(&chat.chat_id);
                broadcast(browser, ServerFrame::Draft { text: &text }.to_frame());
                browser.draft = Some(cut_for_history(text));
            }
            Outbound::Typing { chat } => {
                // Not worth creating state for a browser we have never seen.
                if let Some(browser) = self.browsers.get_mut(&chat.chat_id) {
                    broadcast(browser, ServerFrame::Typing.to_frame());
                }
            }
            Outbound::ButtonAck { .. } => {}
        }
    }
}

/// Keep `entry` in the browser's history, within [`HISTORY_LIMIT`] messages and
/// [`HISTORY_BYTES`] bytes (a message longer than [`HISTORY_ENTRY_BYTES`] is kept cut).
fn push_history(browser: &mut Browser, mut entry: Entry) {
    entry.text = cut_for_history(std::mem::take(&mut entry.text).into_string()).into_boxed_str();
    if browser.history.len() >= HISTORY_LIMIT
        && let Some(old) = browser.history.pop_front()
    {
        browser.history_bytes = browser.history_bytes.saturating_sub(entry_bytes(&old));
    }
    // Past half the limit, grow to the limit exactly: doubling would make room for 128.
    let history = &mut browser.history;
    if history.len() == history.capacity() && history.len() >= HISTORY_LIMIT / 2 {
        history.reserve_exact(HISTORY_LIMIT - history.len());
    }
    browser.history_bytes += entry_bytes(&entry);
    browser.history.push_back(entry);
    while browser.history.len() > HISTORY_LIMIT || (browser.history_bytes > HISTORY_BYTES && browser.history.len() > 1)
    {
        let Some(old) = browser.history.pop_front() else { break };
        browser.history_bytes = browser.history_bytes.saturating_sub(entry_bytes(&old));
    }
}

/// `text` as the history keeps it: whole up to [`HISTORY_ENTRY_BYTES`], else cut there with
/// a note, in a buffer of its new size (a 2 MB answer must not keep 2 MB allocated).
fn cut_for_history(mut text: String) -> String {
    if text.len() <= HISTORY_ENTRY_BYTES {
        return text;
    }
    let whole = text.chars().count();
    truncate_at_char(&mut text, HISTORY_ENTRY_BYTES);
    text.push_str(&format!("\n\n… (cut here in the replayed history: the whole message had {whole} characters)"));
    text.shrink_to_fit();
    text
}

/// What an entry costs to keep, roughly: its texts.
fn entry_bytes(entry: &Entry) -> usize {
    entry.text.len()
        + entry.id.len()
        + entry.extra.as_deref().map_or(0, |extra| {
            extra.file.as_deref().map_or(0, str::len)
                + extra.buttons.iter().map(|b| b.label.len() + b.data.len()).sum::<usize>()
                + extra.key.as_deref().map_or(0, str::len)
        })
}

/// Cut `text` to at most `max` bytes, on a character boundary.
fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// Queue a frame for every socket of the browser; a socket whose queue is full or gone is
/// dropped from the list (its thread then closes it).
fn broadcast(browser: &mut Browser, frame: Arc<String>) {
    browser.sockets.retain(|sender| sender.offer(&frame));
}

// ---------------------------------------------------------------------------------------------
// HTTP: access rules and routes

/// What the access rules decided about one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Access {
    Allowed,
    /// Answer with this instead (a 303 that stores the token, a 401 or a 403).
    Answer(Response),
}

/// Token and `Host` rules (see the module docs). `token` is the configured one.
pub(crate) fn check_access(request: &Request, token: Option<&str>) -> Access {
    let Some(token) = token else {
        return match request.header("host") {
            Some(host) if !is_loopback_host(host) => Access::Answer(Response::text(
                403,
                "This web chat only answers to localhost. Open it as http://127.0.0.1:<port>/, \
                 or set `token` in its channel config to reach it by another name.\n",
            )),
            _ => Access::Allowed,
        };
    };
    let cookie_value = hex(token.as_bytes());
    if let Some(offered) = request.query_param("token") {
        if !constant_time_eq(offered.as_bytes(), token.as_bytes()) {
            return Access::Answer(unauthorized());
        }
        // A fixed path, never one taken from the request: `//host` or `/\host` would leave
        // this server (browsers read a backslash as a slash).
        return Access::Answer(Response::redirect("/").header(
            "Set-Cookie",
            &format!("{TOKEN_COOKIE}={cookie_value}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Strict"),
        ));
    }
    let by_cookie =
        request.cookie(TOKEN_COOKIE).is_some_and(|c| constant_time_eq(c.as_bytes(), cookie_value.as_bytes()));
    let by_header = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if by_cookie || by_header { Access::Allowed } else { Access::Answer(unauthorized()) }
}

fn unauthorized() -> Response {
    Response::text(
        401,
        "This web chat needs its token. Open the address tether printed, which ends in \
         ?token=…, or add ?token=<the channel's `token`> to this address.\n",
    )
}

fn handle_request(shared: &Arc<Shared>, request: Request) -> Reply {
    if admin::is_admin_path(&request.path) {
        return Reply::Respond(admin_request(shared, &request));
    }
    if let Access::Answer(response) = check_access(&request, shared.token.as_deref()) {
        return Reply::Respond(response);
    }
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    let response = match request.path.as_str() {
        "/ws" => return open_socket(shared, &request),
        "/" | "/index.html" if readable => page(shared, &request),
        // Health needs the token like everything else: simplest, and nothing here is public.
        "/healthz" if readable => Response::text(200, "ok\n"),
        path if readable && path.starts_with("/media/") => sent_file(shared, &request),
        "/" | "/index.html" | "/healthz" => Response::text(405, "use GET\n").header("Allow", "GET, HEAD"),
        _ => Response::text(404, "not found\n"),
    };
    Reply::Respond(response)
}

/// `/admin…`: its own credential (the admin token, checked by [`admin::handle`]); the chat's
/// token neither grants nor is needed for it. Without a chat token, the `Host` rule still
/// applies, so a rebinding page cannot even ask.
fn admin_request(shared: &Shared, request: &Request) -> Response {
    if shared.token.is_none()
        && let Access::Answer(response) = check_access(request, None)
    {
        return response;
    }
    match shared.admin.as_deref().and_then(|admin| admin::handle(admin, request)) {
        Some(response) => response,
        None => Response::text(404, "not found\n"),
    }
}

/// Under `senderPolicy: "pairing"`, one client address gets one new browser id per this
/// long: a pairing request lives an hour, so one address holds at most one of the channel's
/// pending slots, and one client cannot fill them all by minting ids.
const NEW_BROWSER_EVERY: Duration = Duration::from_secs(60 * 60);
/// Addresses remembered for that; beyond it the oldest are forgotten.
const NEW_BROWSER_ADDRESSES: usize = 4096;

/// When each client address last got a new browser id. Pure.
#[derive(Debug, Default)]
struct NewBrowsers {
    last: HashMap<IpAddr, Instant>,
}

impl NewBrowsers {
    /// `Ok` when `ip` may get a new id now (and records it); else how long until it may.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if let Some(at) = self.last.get(&ip) {
            let since = now.saturating_duration_since(*at);
            if since < NEW_BROWSER_EVERY {
                return Err(NEW_BROWSER_EVERY - since);
            }
        }
        if self.last.len() >= NEW_BROWSER_ADDRESSES {
            self.last.retain(|_, at| now.saturating_duration_since(*at) < NEW_BROWSER_EVERY);
            if self.last.len() >= NEW_BROWSER_ADDRESSES
                && let Some(oldest) = self.last.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip)
            {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(ip, now);
        Ok(())
    }
}

/// The chat page, setting the browser's id cookie when it has none.
fn page(shared: &Shared, request: &Request) -> Response {
    let response = Response::html(200, PAGE)
        .header("Content-Security-Policy", PAGE_CSP)
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .header("X-Frame-Options", "DENY");
    if request.cookie(SID_COOKIE).is_some_and(is_valid_sid) {
        return response;
    }
    if shared.keeper.policy == SenderPolicy::Pairing
        && let Some(ip) = request.peer.map(|p| p.ip().to_canonical())
    {
        let allowed = shared.new_browsers.lock().unwrap_or_else(|p| p.into_inner()).allow(ip, Instant::now());
        if let Err(wait) = allowed {
            return Response::text(
                429,
                format!(
                    "This address got a new browser id less than an hour ago. On this chat each \
                     address gets one per hour (it needs pairing): use the browser you paired, or \
                     try again in {} minutes.\n",
                    wait.as_secs() / 60 + 1
                ),
            );
        }
    }
    match random_hex(16) {
        Ok(sid) => response
            .header("Set-Cookie", &format!("{SID_COOKIE}={sid}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Strict")),
        Err(e) => Response::text(500, format!("cannot make a browser id: {e}\n")),
    }
}

fn open_socket(shared: &Arc<Shared>, request: &Request) -> Reply {
    if !request.is_same_origin() {
        return Reply::Respond(Response::text(403, "cross-origin WebSocket refused\n"));
    }
    let Some(sid) = request.cookie(SID_COOKIE).filter(|s| is_valid_sid(s)).map(browser_id) else {
        return Reply::Respond(Response::text(403, "no browser id: open the chat page first (it sets a cookie)\n"));
    };
    match httpd::websocket_upgrade(request) {
        Err(response) => Reply::Respond(response),
        Ok(response) => {
            let shared = shared.clone();
            Reply::Upgrade(response, Box::new(move |stream, rest| run_socket(&shared, &sid, stream, rest)))
        }
    }
}

/// `localhost`, `*.localhost` or a loopback IP, with or without a port; an IPv6 address
/// only in brackets, followed by nothing or `:port` (`[::1]evil.example` is not loopback).
fn is_loopback_host(host: &str) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, after)) if after.strip_prefix(':').is_some_and(is_port) => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The public id of the browser whose cookie holds `secret`: 32 hex digits of
/// SHA-1("tether-webchat-browser:" + secret). One-way, so an id (which many can see) never
/// gives the secret (which only the browser holds).
fn browser_id(secret: &str) -> String {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha.update(b"tether-webchat-browser:");
    sha.update(secret.as_bytes());
    hex(&sha.finish().as_ref()[..16])
}

/// Browser secrets and ids are 32 lowercase hex digits; anything else is ignored (it also names a
/// directory, so it must never carry a path).
fn is_valid_sid(sid: &str) -> bool {
    sid.len() == 32 && sid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf)?;
    Ok(hex(&buf))
}

// ---------------------------------------------------------------------------------------------
// Threads: dispatcher and sockets

/// How often old uploads are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

fn dispatch_loop(shared: &Shared, outbox: &Receiver<Outbound>) {
    let mut next_sweep = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + SWEEP_EVERY;
            let removed = uploads::sweep(&shared.upload_root, uploads::RETENTION, SystemTime::now());
            if removed > 0 {
                log::info!(target: shared.channel.as_str(), "removed {removed} upload(s) older than a day");
            }
        }
        crossbeam_channel::select! {
            recv(outbox) -> action => match action {
                Ok(action) if action.channel() == shared.channel => {
                    let action = with_files(shared, action);
                    shared.hub().deliver(action, wall_ms());
                }
                Ok(action) => log::debug!(
                    "web chat \"{}\": ignoring an action for channel \"{}\"", shared.channel, action.channel()
                ),
                Err(_) => {
                    log::debug!("web chat \"{}\": outbox closed", shared.channel);
                    return;
                }
            },
            recv(shared.stopped) -> _ => return,
            default(next_sweep.saturating_duration_since(Instant::now())) => {}
        }
    }
}

/// The `[IMAGE: …]` / `[FILE: …]` markers of an answer become an inline picture
/// (`![name](/media/<id>)`) or a link, for files the channel may send; a refused one is
/// named ("(not sent: … outside the allowed directories)").
fn with_files(shared: &Shared, action: Outbound) -> Outbound {
    let Outbound::Text { chat, text, answers } = action else { return action };
    let (mut text, markers) = crate::media::take_markers_owned(text);
    let mut lines = Vec::new();
    for marker in markers {
        let shown = shared.out_files.check(&marker.path).and_then(|(path, _)| {
            let id = random_hex(16).map_err(|e| format!("no random id for {}: {e}", marker.path))?;
            let mut served = shared.served.lock().unwrap_or_else(|p| p.into_inner());
            if served.len() >= SERVED_FILES {
                served.pop_front();
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            served.push_back((id.clone(), chat.chat_id.clone(), path));
            let name = crate::media::safe_file_name(&name, "file");
            Ok(match marker.kind {
                crate::media::FileKind::Image => format!("![{name}](/media/{id})"),
                crate::media::FileKind::Document => format!("[📎 {name}](/media/{id})"),
            })
        });
        match shown {
            Ok(line) => lines.push(line),
            Err(why) => {
                log::warn!(target: shared.channel.as_str(), "a file the agent asked to show was refused: {why}");
                lines.push(format!("(not sent: {why})"));
            }
        }
    }
    if !lines.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(&lines.join("\n\n"));
    }
    Outbound::Text { chat, text, answers }
}

/// `/media/<id>`: a file the agent sent, only to the browser it was sent to; checked again
/// as it is read. Pictures are shown, other files downloaded.
fn sent_file(shared: &Shared, request: &Request) -> Response {
    let id = request.path.trim_start_matches("/media/");
    let browser = request.cookie(SID_COOKIE).filter(|s| is_valid_sid(s)).map(browser_id);
    let path = {
        let served = shared.served.lock().unwrap_or_else(|p| p.into_inner());
        served.iter().find(|(i, b, _)| i == id && Some(b) == browser.as_ref()).map(|(_, _, p)| p.clone())
    };
    let Some(path) = path else { return Response::text(404, "not found\n") };
    let bytes = match shared.out_files.read(&path) {
        Ok(bytes) => bytes,
        Err(e) => return Response::text(404, format!("{e}\n")),
    };
    let response = Response::new(200)
        .header("Cache-Control", "private, max-age=3600")
        .header("X-Content-Type-Options", "nosniff")
        .header("Content-Security-Policy", "default-src 'none'; sandbox");
    let response = match crate::media::sniff_image(&bytes) {
        Some(mime) => response.header("Content-Type", mime),
        None => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name: String = crate::media::safe_file_name(&name, "file").chars().filter(char::is_ascii).collect();
            response
                .header("Content-Type", "application/octet-stream")
                .header("Content-Disposition", &format!("attachment; filename=\"{name}\""))
        }
    };
    response.body(bytes)
}

/// Unregisters a socket from the hub however its thread ends.
struct Registration<'a> {
    shared: &'a Shared,
    sid: &'a str,
    socket: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.hub().disconnect(self.sid, self.socket);
    }
}

pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Its read buffer is filled with zeros to its size, per tab: small, as chat frames are
        // (a longer frame reserves its own length anyway).
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
}

/// The connection as tungstenite sees it: reads take what the socket's reader thread
/// forwarded (`WouldBlock` when nothing waits, end of file once the reader saw it), writes
/// go straight to the connection (blocking, with [`WRITE_TIMEOUT`]).
struct SocketIo {
    stream: TcpStream,
    inbox: Vec<u8>,
    /// How much of `inbox` tungstenite has taken.
    taken: usize,
    eof: bool,
}

impl io::Read for SocketIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let waiting = self.inbox.get(self.taken..).unwrap_or_default();
        if waiting.is_empty() {
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = waiting.len().min(buf.len());
        buf[..n].copy_from_slice(&waiting[..n]);
        self.taken += n;
        if self.taken == self.inbox.len() {
            self.inbox.clear();
            self.taken = 0;
            // An upload passed through: don't keep its size for the rest of the socket's life.
            if self.inbox.capacity() > 64 * 1024 {
                self.inbox = Vec::new();
            }
        }
        Ok(n)
    }
}

impl io::Write for SocketIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The thread that blocks on the connection's reads and forwards what arrives, so that the
/// socket thread can wait on one thing (its queue or these bytes, whichever comes first)
/// instead of polling. Ends at end of file, on an error, or when the socket thread is gone
/// (which shuts the connection down to wake it).
fn spawn_reader(stream: TcpStream) -> io::Result<Receiver<Vec<u8>>> {
    use std::io::Read;
    let (tx, rx) = crossbeam_channel::bounded(READ_AHEAD_CHUNKS);
    std::thread::Builder::new().name("webchat-read".into()).stack_size(64 * 1024).spawn(move || {
        let mut stream = stream;
        // On this thread's stack, not the heap: its pages go when the thread ends, instead of
        // staying in the heap between longer-lived allocations.
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })?;
    Ok(rx)
}

/// Write one text frame past tungstenite's write buffer (see [`DIRECT_FRAME`]): flush what it
/// holds first, so frames stay in order, then the frame header (a server's frames are not
/// masked) and the payload.
fn write_direct(ws: &mut WebSocket<SocketIo>, text: &str) -> io::Result<()> {
    use std::io::Write;
    ws.flush().map_err(io::Error::other)?;
    let len = text.len();
    let mut header = vec![0x81u8]; // FIN, text
    match len {
        0..=125 => header.push(len as u8),
        126..=0xFFFF => {
            header.push(126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(127);
            header.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let stream = &mut ws.get_mut().stream;
    stream.write_all(&header)?;
    stream.write_all(text.as_bytes())?;
    stream.flush()
}

/// Why a socket's loop ended.
enum SocketEnd {
    /// The chat stops, or the hub dropped the socket: say goodbye properly.
    Close,
    /// The connection failed or the browser went away.
    Gone,
}

/// Serve one WebSocket until it closes, goes quiet, falls behind, or the chat stops.
fn run_socket(shared: &Shared, sid: &str, stream: TcpStream, rest: Vec<u8>) {
    // The reader blocks without a timeout; silence is judged here (SOCKET_IDLE_LIMIT).
    if stream.set_read_timeout(None).is_err() || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let Ok(bytes) = stream.try_clone().and_then(spawn_reader) else {
        log::warn!("web chat: cannot start the reader of a socket of {}", short(sid));
        return;
    };
    let io = SocketIo { stream, inbox: Vec::new(), taken: 0, eof: false };
    let mut ws = WebSocket::from_partially_read(io, rest, Role::Server, Some(socket_config()));
    let (socket, queue) = shared.hub().connect(sid);
    let _registration = Registration { shared, sid, socket };
    if let SocketEnd::Close = socket_loop(shared, sid, &mut ws, &queue, &bytes) {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    // Wakes the reader thread, which then ends.
    let _ = ws.get_ref().stream.shutdown(std::net::Shutdown::Both);
}

fn socket_loop(
    shared: &Shared,
    sid: &str,
    ws: &mut WebSocket<SocketIo>,
    queue: &SocketQueue,
    bytes: &Receiver<Vec<u8>>,
) -> SocketEnd {
    let mut last_heard = Instant::now();
    let mut last_ping = Instant::now();
    // Frames in the history frame are already queued: write them before waiting.
    let mut frames_ready = true;
    let mut bytes_ready = !ws.get_ref().inbox.is_empty();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return SocketEnd::Close;
        }
        if !frames_ready && !bytes_ready {
            crossbeam_channel::select! {
                recv(queue.frames) -> frame => match frame {
                    Ok(json) => {
                        queue.taken(&json);
                        if write_frame(ws, &json).is_err() {
                            return SocketEnd::Gone;
                        }
                        frames_ready = true;
                    }
                    // The hub dropped us (queue overflow): the page reconnects and replays.
                    Err(_) => return SocketEnd::Close,
                },
                recv(bytes) -> chunk => {
                    match chunk {
                        Ok(data) => ws.get_mut().inbox.extend_from_slice(&data),
                        Err(_) => ws.get_mut().eof = true,
                    }
                    bytes_ready = true;
                },
                recv(shared.stopped) -> _ => return SocketEnd::Close,
                // Nothing to do until the next ping or the silence limit.
                default(next_check(last_ping, last_heard)) => {}
            }
        }
        if frames_ready {
            frames_ready = false;
            loop {
                match queue.frames.try_recv() {
                    Ok(json) => {
                        queue.taken(&json);
                        if write_frame(ws, &json).is_err() {
                            return SocketEnd::Gone;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return SocketEnd::Close,
                }
            }
        }
        if bytes_ready {
            bytes_ready = false;
            loop {
                match bytes.try_recv() {
                    Ok(data) => ws.get_mut().inbox.extend_from_slice(&data),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ws.get_mut().eof = true;
                        break;
                    }
                }
            }
            // Every complete frame that arrived; a partial one waits for more bytes.
            loop {
                match ws.read() {
                    Ok(Message::Text(text)) => {
                        last_heard = Instant::now();
                        if let Some(error) = take_client_frame(shared, sid, text.as_str()) {
                            let frame = ServerFrame::Error { text: &error }.to_json();
                            if ws.write(Message::text(frame)).is_err() {
                                return SocketEnd::Gone;
                            }
                        }
                    }
                    Ok(Message::Binary(_)) => {
                        last_heard = Instant::now();
                        let frame = ServerFrame::Error { text: "send JSON text frames" }.to_json();
                        if ws.write(Message::text(frame)).is_err() {
                            return SocketEnd::Gone;
                        }
                    }
                    // Pings are answered by tungstenite on the next write or flush; a close is
                    // answered the same way, and the next read reports ConnectionClosed.
                    Ok(_) => last_heard = Instant::now(),
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::debug!("web chat: socket of {} ended: {e}", short(sid));
                        return SocketEnd::Gone;
                    }
                }
            }
        }
        if last_heard.elapsed() > SOCKET_IDLE_LIMIT {
            log::debug!("web chat: socket of {} silent too long; closing", short(sid));
            return SocketEnd::Gone;
        }
        if last_ping.elapsed() >= PING_EVERY {
            last_ping = Instant::now();
            if ws.write(Message::Ping(Default::default())).is_err() {
                return SocketEnd::Gone;
            }
        }
        if ws.flush().is_err() {
            return SocketEnd::Gone;
        }
    }
}

/// How long an idle socket may sleep: until its next ping is due or its silence limit passes.
fn next_check(last_ping: Instant, last_heard: Instant) -> Duration {
    let due = (last_ping + PING_EVERY).min(last_heard + SOCKET_IDLE_LIMIT);
    due.saturating_duration_since(Instant::now())
}

/// Queue one frame from the hub on the socket (written at the next flush), or write a long
/// one at once past the buffer.
fn write_frame(ws: &mut WebSocket<SocketIo>, json: &str) -> Result<(), ()> {
    if json.len() >= DIRECT_FRAME {
        write_direct(ws, json).map_err(|_| ())
    } else {
        ws.write(Message::text(json)).map_err(|_| ())
    }
}

fn short(sid: &str) -> &str {
    sid.get(..6).unwrap_or(sid)
}

/// Act on one client frame; returns an error text for the sender when it was not taken.
fn take_client_frame(shared: &Shared, sid: &str, json: &str) -> Option<String> {
    let frame = match ClientFrame::from_json(json) {
        Ok(frame) => frame,
        Err(e) => return Some(format!("not a message this server understands: {e}")),
    };
    let (text, file) = match frame {
        ClientFrame::Message { text, file } => (text, file),
        ClientFrame::Button { data } => {
            let press = ButtonPress {
                channel: shared.channel.clone(),
                sender_id: sid.to_string(),
                sender_name: format!("web-{}", short(sid)),
                chat_id: sid.to_string(),
                data: data.chars().take(64).collect(),
                ..Default::default()
            };
            return match shared.inbound.send_timeout(Inbound::Button(press), INBOUND_SEND_TIMEOUT) {
                Ok(()) => None,
                Err(_) => Some("tether is not taking answers right now; try again shortly".into()),
            };
        }
    };
    if text.trim().is_empty() && file.is_none() {
        return None;
    }
    let mut text = text;
    let mut attachments = Vec::new();
    let id = if shared.may_store(sid) {
        if let Some(file) = &file {
            match save_upload(&shared.upload_root, sid, file) {
                Ok(attachment) => attachments.push(attachment),
                Err(e) => return Some(e),
            }
        }
        let file_name = attachments.first().map(|a| a.file_name.clone());
        shared.hub().record_from_person(sid, &text, file_name, wall_ms())
    } else {
        // A stranger: no file written, nothing kept or echoed; the core hears a short text.
        truncate_at_char(&mut text, STRANGER_TEXT_LIMIT);
        shared.hub().new_id()
    };
    let message = InboundMessage {
        channel: shared.channel.clone(),
        sender_id: sid.to_string(),
        sender_name: format!("web-{}", short(sid)),
        chat_id: sid.to_string(),
        thread_id: None,
        message_id: Some(id),
        is_group: false,
        is_mentioned: true,
        is_reply_to_bot: false,
        text,
        quoted_text: None,
        attachments,
        sent_at_ms: None,
        webhook: None,
    };
    match shared.inbound.send_timeout(Inbound::Message(message), INBOUND_SEND_TIMEOUT) {
        Ok(()) => None,
        Err(_) => Some("tether is not taking messages right now; try again shortly".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Attachments

/// Decode and save an attachment under `root/<sid>/<sanitized name>` (a new name if taken).
fn save_upload(root: &Path, sid: &str, file: &ClientFile) -> Result<Attachment, String> {
    let data = file.data.strip_prefix("data:").and_then(|d| d.split_once(',').map(|(_, b)| b)).unwrap_or(&file.data);
    if data.len() / 4 * 3 > MAX_UPLOAD + 3 {
        return Err("file too large: the limit is 5 MB".into());
    }
    let bytes = decode_base64(data).ok_or("the file's data is not valid base64")?;
    if bytes.len() > MAX_UPLOAD {
        return Err("file too large: the limit is 5 MB".into());
    }
    let name = sanitize_file_name(&file.name);
    let mime_type = sanitize_mime(&file.mime);
    let dir = uploads::private_dir(root, sid).map_err(|e| {
        log::warn!("web chat: cannot use {}: {e}", root.join(sid).display());
        "the server could not store the file".to_string()
    })?;
    let path = uploads::write_new_file(&dir, &name, &bytes).map_err(|e| {
        log::warn!("web chat: cannot save into {}: {e}", dir.display());
        "the server could not store the file".to_string()
    })?;
    let kind = if mime_type.starts_with("image/") { AttachmentKind::Image } else { AttachmentKind::File };
    Ok(Attachment {
        kind,
        file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(name),
        path,
        mime_type,
    })
}

/// A safe file name: the last path component, ASCII letters, digits, `.`, `-`, `_` only, no
/// leading dot, at most 100 characters (keeping a short extension), never empty.
pub(crate) fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    let cleaned = cleaned.trim_start_matches('.');
    let cleaned = if cleaned.len() > 100 {
        match cleaned.rsplit_once('.') {
            Some((stem, ext)) if ext.len() <= 10 => {
                format!("{}.{ext}", stem.chars().take(100 - ext.len() - 1).collect::<String>())
            }
            _ => cleaned.chars().take(100).collect(),
        }
    } else {
        cleaned.to_string()
    };
    if cleaned.is_empty() { "file".to_string() } else { cleaned }
}

/// `type/subtype` in lowercase, or `application/octet-stream` when it is not one.
pub(crate) fn sanitize_mime(mime: &str) -> String {
    let essence = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match essence.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => essence,
        _ => "application/octet-stream".to_string(),
    }
}

/// Standard or URL-safe base64, padding optional, whitespace ignored; `None` when malformed.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = false;
    for b in text.bytes() {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            b if b.is_ascii_whitespace() => continue,
            _ => return None,
        };
        if padding {
            return None;
        }
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // One lone character in the last group carries no whole byte.
    if bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, SenderPolicy};
    use crate::event::ChatRef;
    use crate::net::httpd::parse_head;
    use crate::net::httpd::tests::{raw_request, read_to_close, status_of};
    use std::io::Write;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::http::HeaderValue;

    const WAIT: Duration = Duration::from_secs(5);

    /// A webchat channel config with every other key at its default.
    fn channel_config(listen: &str, token: Option<&str>) -> ChannelConfig {
        let settings = PlatformSettings {
            secrets: token.map(|t| ("token", Secret::new(t.into(), None))).into_iter().collect(),
            values: [("listen", serde_json::Value::String(listen.into()))].into(),
        };
        ChannelConfig { settings, sender_policy: SenderPolicy::Open, ..ChannelConfig::for_tests("web", &PLATFORM) }
    }

    /// Start a web chat without an admin page, its threads unsupervised.
    fn spawn(
        channel: &ChannelConfig,
        inbound: Sender<Inbound>,
        outbox: Receiver<Outbound>,
    ) -> Result<WebchatHandle, Error> {
        let uploads = std::env::temp_dir().join(format!("tether-webchat-{}", random_hex(8).unwrap()));
        spawn_with_uploads(channel, inbound, outbox, uploads, None, None, &Supervisor::new().0)
    }

    struct Chat {
        handle: WebchatHandle,
        inbound: Receiver<Inbound>,
        outbox: Sender<Outbound>,
        uploads: PathBuf,
    }

    impl Chat {
        fn start(token: Option<&str>) -> Chat {
            Chat::start_with(channel_config("127.0.0.1:0", token))
        }

        fn start_with(config: ChannelConfig) -> Chat {
            let uploads = std::env::temp_dir().join(format!("tether-webchat-test-{}", random_hex(8).unwrap()));
            let (inbound_tx, inbound) = crossbeam_channel::unbounded();
            let (outbox, outbox_rx) = crossbeam_channel::unbounded();
            let handle =
                spawn_with_uploads(&config, inbound_tx, outbox_rx, uploads.clone(), None, None, &Supervisor::new().0)
                    .unwrap();
            Chat { handle, inbound, outbox, uploads }
        }

        fn addr(&self) -> SocketAddr {
            self.handle.local_addr
        }

        /// GET `path` with optional extra header lines; the whole response.
        fn get(&self, path: &str, extra: &str) -> String {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", self.addr());
            raw_request(self.addr(), request.as_bytes())
        }

        /// Load the page and return the new browser id.
        fn new_browser(&self) -> String {
            let page = self.get("/", "");
            assert_eq!(status_of(&page), 200, "{page}");
            set_cookie(&page, SID_COOKIE).unwrap()
        }

        fn socket(&self, cookie: &str) -> WebSocket<TcpStream> {
            self.try_socket(cookie, None).unwrap()
        }

        fn try_socket(&self, cookie: &str, origin: Option<&str>) -> Result<WebSocket<TcpStream>, tungstenite::Error> {
            let stream = TcpStream::connect_timeout(&self.addr(), WAIT).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
            let mut request = format!("ws://{}/ws", self.addr()).into_client_request().unwrap();
            request.headers_mut().insert("Cookie", HeaderValue::from_str(cookie).unwrap());
            if let Some(origin) = origin {
                request.headers_mut().insert("Origin", HeaderValue::from_str(origin).unwrap());
            }
            tungstenite::client(request, stream).map(|(ws, _)| ws).map_err(|e| match e {
                tungstenite::HandshakeError::Failure(e) => e,
                tungstenite::HandshakeError::Interrupted(_) => {
                    panic!("handshake interrupted")
                }
            })
        }

        fn next_message(&self) -> InboundMessage {
            let deadline = Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.inbound.recv_timeout(left) {
                    Ok(Inbound::Message(m)) => return m,
                    Ok(Inbound::Button(_) | Inbound::OperatorClear { .. }) => continue,
                    Err(e) => panic!("no inbound message: {e}"),
                }
            }
        }

        fn assert_no_message(&self) {
            if let Ok(event) = self.inbound.recv_timeout(Duration::from_millis(200)) {
                panic!("unexpected {event:?}");
            }
        }

        fn send(&self, action: Outbound) {
            self.outbox.send(action).unwrap();
        }
    }

    impl Drop for Chat {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.uploads);
        }
    }

    fn chat_ref(sid: &str) -> ChatRef {
        ChatRef { channel: "web".into(), chat_id: sid.into(), thread_id: None }
    }

    /// The value of `Set-Cookie: name=value; ...` in a raw response.
    fn set_cookie(response: &str, name: &str) -> Option<String> {
        response
            .lines()
            .filter_map(|l| l.strip_prefix("Set-Cookie: "))
            .filter_map(|c| c.split(';').next()?.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    /// The next text frame as JSON (pings skipped), within 5 s.
    fn next_frame(ws: &mut WebSocket<TcpStream>) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match ws.read().unwrap() {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                _ => continue,
            }
        }
        panic!("no frame within {WAIT:?}");
    }

    fn send_json(ws: &mut WebSocket<TcpStream>, value: serde_json::Value) {
        ws.send(Message::text(value.to_string())).unwrap();
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    // ---- pure ----------------------------------------------------------------------------

    #[test]
    fn client_frames_parse_like_the_serde_derive_did() {
        let message = ClientFrame::from_json(r#"{"type":"message","text":"hi","file":{"data":"QQ==","x":1}}"#);
        let Ok(ClientFrame::Message { text, file: Some(file) }) = message else { panic!("{message:?}") };
        assert_eq!((text.as_str(), file.name.as_str(), file.mime.as_str(), file.data.as_str()), ("hi", "", "", "QQ=="));
        let bare = ClientFrame::from_json(r#"{"type":"message","file":null}"#);
        assert!(matches!(bare, Ok(ClientFrame::Message { ref text, file: None }) if text.is_empty()), "{bare:?}");
        let button = ClientFrame::from_json(r#"{"type":"button","data":"yes"}"#);
        assert!(matches!(button, Ok(ClientFrame::Button { ref data }) if data == "yes"), "{button:?}");
        for (json, wanted) in [
            (r#"{"text":"hi"}"#, "missing field `type`"),
            (r#"{"type":"shout"}"#, "unknown variant `shout`"),
            (r#"{"type":"button"}"#, "missing field `data`"),
            (r#"{"type":"message","text":5}"#, "invalid type: 5, expected a string for `text`"),
            (r#"{"type":"message","file":{"name":"a"}}"#, "missing field `data`"),
            (r#"{"type":"message","file":"x"}"#, "invalid type: \"x\", expected a file object"),
            ("[]", "missing field `type`"),
        ] {
            let error = ClientFrame::from_json(json).unwrap_err();
            assert!(error.starts_with(wanted), "{json}: {error}");
        }
    }

    #[test]
    fn sanitize_file_name_table() {
        let long = format!("{}.png", "a".repeat(200));
        let cases = [
            ("photo.png", "photo.png".to_string()),
            ("../../etc/passwd", "passwd".to_string()),
            ("C:\\Users\\me\\report final.pdf", "report_final.pdf".to_string()),
            (".bashrc", "bashrc".to_string()),
            ("..", "file".to_string()),
            ("", "file".to_string()),
            ("résumé.txt", "r_sum_.txt".to_string()),
            ("a;b|c$.sh", "a_b_c_.sh".to_string()),
            (long.as_str(), format!("{}.png", "a".repeat(96))),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_file_name(input), expected, "{input}");
        }
        assert_eq!(sanitize_file_name(&"b".repeat(300)).len(), 100);
    }

    #[test]
    fn sanitize_mime_table() {
        let cases = [
            ("image/png", "image/png"),
            ("Image/PNG", "image/png"),
            ("text/plain; charset=utf-8", "text/plain"),
            ("", "application/octet-stream"),
            ("png", "application/octet-stream"),
            ("image/", "application/octet-stream"),
            ("text/html\r\nX: y", "application/octet-stream"),
            ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_mime(input), expected, "{input:?}");
        }
    }

    #[test]
    fn decode_base64_table() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("aGk=", Some(b"hi")),
            ("aGk", Some(b"hi")),
            ("aGVsbG8=", Some(b"hello")),
            ("aGVs\nbG8=", Some(b"hello")),
            ("aGVsbG8h", Some(b"hello!")),
            ("-_8=", Some(&[0xfb, 0xff])),
            ("+/8=", Some(&[0xfb, 0xff])),
            ("a", None),
            ("aGk=aGk=", None),
            ("aG*k", None),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_base64(input).as_deref(), *expected, "{input:?}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_base64(&base64(&all)).unwrap(), all);
    }

    #[test]
    fn small_predicates_table() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        let hosts = [
            ("localhost", true),
            ("localhost:8787", true),
            ("LOCALHOST:1", true),
            ("chat.localhost:80", true),
            ("127.0.0.1:8787", true),
            ("127.1.2.3", true),
            ("[::1]:8787", true),
            ("[::1]", true),
            ("evil.example:8787", false),
            ("localhost.evil.example", false),
            ("192.168.1.2:8787", false),
            ("[::1", false),
            ("[::1]evil.example", false),
            ("[::1].evil.example:80", false),
            ("[::1]:", false),
            ("[::1]:80x", false),
            ("[::ffff:127.0.0.1]:80", true),
        ];
        for (host, expected) in hosts {
            assert_eq!(is_loopback_host(host), expected, "{host}");
        }
        let sids = [
            ("0123456789abcdef0123456789abcdef", true),
            ("0123456789ABCDEF0123456789abcdef", false),
            ("0123456789abcdef", false),
            ("../../../../../../../../../../aa", false),
        ];
        for (sid, expected) in sids {
            assert_eq!(is_valid_sid(sid), expected, "{sid}");
        }
    }

    fn request(head: &str) -> Request {
        parse_head(format!("{head}\r\n\r\n").as_bytes()).unwrap()
    }

    #[test]
    fn same_origin_table() {
        let cases = [
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1", true),
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: http://127.0.0.1:1", true),
            ("GET /ws HTTP/1.1\r\nHost: box:1\r\nOrigin: https://BOX:1", true),
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: http://evil.example", false),
            ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nOrigin: null", false),
            ("GET /ws HTTP/1.1\r\nOrigin: http://127.0.0.1:1", false),
        ];
        for (head, expected) in cases {
            assert_eq!(request(head).is_same_origin(), expected, "{head}");
        }
    }

    #[test]
    fn check_access_table() {
        let status = |head: &str, token: Option<&str>| match check_access(&request(head), token) {
            Access::Allowed => 0,
            Access::Answer(r) => r.status,
        };
        let cookie = format!("Cookie: {TOKEN_COOKIE}={}", hex(b"s3cret"));
        let cases = [
            ("GET / HTTP/1.1\r\nHost: 127.0.0.1:8787".to_string(), None, 0),
            ("GET / HTTP/1.1".to_string(), None, 0),
            ("GET / HTTP/1.1\r\nHost: evil.example:8787".to_string(), None, 403),
            ("GET / HTTP/1.1\r\nHost: evil.example".to_string(), Some("s3cret"), 401),
            ("GET /?token=s3cret HTTP/1.1".to_string(), Some("s3cret"), 303),
            ("GET /?token=wrong HTTP/1.1".to_string(), Some("s3cret"), 401),
            ("GET /?token= HTTP/1.1".to_string(), Some("s3cret"), 401),
            (format!("GET / HTTP/1.1\r\n{cookie}"), Some("s3cret"), 0),
            (format!("GET /ws HTTP/1.1\r\n{cookie}x"), Some("s3cret"), 401),
            ("GET / HTTP/1.1\r\nAuthorization: Bearer s3cret".to_string(), Some("s3cret"), 0),
            ("GET / HTTP/1.1\r\nAuthorization: Bearer s3cre".to_string(), Some("s3cret"), 401),
            ("GET / HTTP/1.1\r\nCookie: tether_token=s3cret".to_string(), Some("s3cret"), 401),
            // Same length as the token: only the comparison itself can tell.
            ("GET /?token=s3creT HTTP/1.1".to_string(), Some("s3cret"), 401),
            ("GET / HTTP/1.1\r\nAuthorization: Bearer s3creT".to_string(), Some("s3cret"), 401),
            (format!("GET / HTTP/1.1\r\nCookie: {TOKEN_COOKIE}={}", hex(b"s3creT")), Some("s3cret"), 401),
        ];
        for (head, token, expected) in cases {
            assert_eq!(status(&head, token), expected, "{head} with {token:?}");
        }
        // The redirect drops the query, goes to a fixed path on this server, and stores the
        // token (hex).
        for path in ["//evil.example", "/\\evil.example", "/\\/evil.example/x", "/anything"] {
            let head = format!("GET {path}?token=s3cret HTTP/1.1");
            let Access::Answer(r) = check_access(&request(&head), Some("s3cret")) else {
                panic!("expected a redirect");
            };
            assert!(r.headers.contains(&("Location".into(), "/".into())), "{path}: {r:?}");
        }
        let Access::Answer(r) = check_access(&request("GET /?token=s3cret HTTP/1.1"), Some("s3cret")) else {
            panic!("expected a redirect");
        };
        let cookie = r.headers.iter().find(|(n, _)| n == "Set-Cookie").unwrap();
        assert!(cookie.1.starts_with(&format!("{TOKEN_COOKIE}={};", hex(b"s3cret"))), "{cookie:?}");
        assert!(cookie.1.contains("HttpOnly") && cookie.1.contains("SameSite=Strict"));
    }

    /// Drain a socket queue into decoded frames.
    fn frames(queue: &SocketQueue) -> Vec<serde_json::Value> {
        queue
            .frames
            .try_iter()
            .map(|j| {
                queue.taken(&j);
                serde_json::from_str(&j).unwrap()
            })
            .collect()
    }

    #[test]
    fn hub_routes_and_keeps_history() {
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        let mut hub = Hub::new("boot".into());
        let (_, a1) = hub.connect(&a);
        let (_, a2) = hub.connect(&a);
        let (_, b1) = hub.connect(&b);
        let empty = serde_json::json!({"type": "history", "messages": [], "draft": null});
        assert_eq!(frames(&a1), vec![empty.clone()]);
        assert_eq!(frames(&b1), vec![empty]);
        let _ = frames(&a2);

        let id = hub.record_from_person(&a, "hi", Some("x.png".into()), 1);
        assert_eq!(id, "boot-1");
        hub.deliver(Outbound::Typing { chat: chat_ref(&a) }, 2);
        hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: "He".into() }, 3);
        hub.deliver(Outbound::Text { chat: chat_ref(&a), text: "Hello".into(), answers: vec![] }, 4);
        // The final text replaced the draft: a tab opened now sees none.
        let (_, between) = hub.connect(&a);
        let seen = frames(&between);
        assert_eq!(seen[0]["draft"], serde_json::Value::Null, "{seen:?}");
        drop(between);
        hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: "Ne".into() }, 5);
        hub.deliver(Outbound::Text { chat: chat_ref("not-a-browser"), text: "x".into(), answers: vec![] }, 6);
        let expected = vec![
            serde_json::json!({"type": "message", "id": "boot-1", "from": "you", "text": "hi", "file": "x.png", "ts": 1}),
            serde_json::json!({"type": "typing"}),
            serde_json::json!({"type": "draft", "text": "He"}),
            serde_json::json!({"type": "message", "id": "boot-2", "from": "agent", "text": "Hello", "ts": 4}),
            serde_json::json!({"type": "draft", "text": "Ne"}),
        ];
        assert_eq!(frames(&a1), expected);
        assert_eq!(frames(&a2), expected);
        assert_eq!(frames(&b1), Vec::<serde_json::Value>::new());

        // A new tab gets the finished messages and the draft in progress.
        let (_, a3) = hub.connect(&a);
        let history = frames(&a3);
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["type"], "history");
        assert_eq!(history[0]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(history[0]["messages"][1]["text"], "Hello");
        assert_eq!(history[0]["draft"], "Ne");

        // A dropped receiver is forgotten; typing for an unknown browser creates nothing.
        drop(a2);
        hub.deliver(Outbound::Typing { chat: chat_ref(&a) }, 7);
        assert_eq!(hub.browsers[&a].sockets.len(), 2);
        hub.deliver(Outbound::Typing { chat: chat_ref(&"c".repeat(32)) }, 8);
        assert_eq!(hub.browsers.len(), 2);
    }

    #[test]
    fn history_is_bounded_in_bytes_and_keeps_long_answers_cut() {
        let a = "a".repeat(32);
        let mut hub = Hub::new("boot".into());
        // A 2 MB answer (multi-byte characters, so the cut must find a boundary) is shown
        // whole but kept cut, with a note.
        let long = "é".repeat(1_000_000);
        hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: long.clone() }, 0);
        let draft = hub.browsers[&a].draft.as_ref().unwrap();
        assert!(draft.capacity() < HISTORY_ENTRY_BYTES + 200, "the draft kept {} bytes", draft.capacity());
        hub.deliver(Outbound::Text { chat: chat_ref(&a), text: long.clone(), answers: Vec::new() }, 0);
        assert_eq!(hub.browsers[&a].draft, None, "the answer replaced the draft");
        let kept = &hub.browsers[&a].history.back().unwrap().text;
        assert!(kept.len() < HISTORY_ENTRY_BYTES + 200, "kept {} bytes", kept.len());
        // Not only cut but reallocated: the history holds no 2 MB buffer (a `Box<str>` has
        // no spare capacity).
        assert!(kept.starts_with(&"é".repeat(100)));
        assert!(kept.ends_with("the whole message had 1000000 characters)"), "{}", &kept[kept.len() - 100..]);
        // Many medium messages: the oldest go once the bytes pass the budget.
        for i in 0..20 {
            hub.record_from_person(&a, &format!("{i:02}{}", "x".repeat(20 * 1024)), None, i);
        }
        let history = &hub.browsers[&a].history;
        let bytes: usize = history.iter().map(|e| e.text.len()).sum();
        assert!(bytes <= HISTORY_BYTES, "{bytes} bytes kept");
        assert!(history.back().unwrap().text.starts_with("19"));
        assert!(history.len() < 20);
    }

    #[test]
    fn a_history_entry_is_small_and_its_frame_unchanged() {
        assert!(std::mem::size_of::<Entry>() <= 56, "{} bytes, times 100 per browser", std::mem::size_of::<Entry>());
        let plain = Entry { id: "b-1".into(), from: Speaker::Agent, text: "hi".into(), ts: 7, extra: None };
        assert_eq!(
            serde_json::to_value(ServerFrame::Message(&plain)).unwrap(),
            serde_json::json!({"type": "message", "id": "b-1", "from": "agent", "text": "hi", "ts": 7})
        );
        let extra = EntryExtra {
            file: Some("a.png".into()),
            buttons: vec![Button { label: "Allow".into(), data: "p:1".into() }].into(),
            key: Some("k".into()),
        };
        let full = Entry { extra: Some(Box::new(extra)), ..plain };
        assert_eq!(
            serde_json::to_value(ServerFrame::Message(&full)).unwrap(),
            serde_json::json!({"type": "message", "id": "b-1", "from": "agent", "text": "hi", "ts": 7,
                "file": "a.png", "buttons": [{"label": "Allow", "data": "p:1"}]})
        );
    }

    #[test]
    fn a_socket_queue_admits_by_frames_and_bytes() {
        let table = [
            (0, 0, 1, true),
            (0, 0, SOCKET_QUEUE_BYTES * 4, true), // one frame always fits an empty queue
            (1, 1, SOCKET_QUEUE_BYTES - 1, true),
            (1, 1, SOCKET_QUEUE_BYTES, false),
            (1, SOCKET_QUEUE_BYTES, 1, false),
            (1, usize::MAX, 1, false),
            (SOCKET_QUEUE - 1, 100, 1, true),
            (SOCKET_QUEUE, 100, 1, false),
        ];
        for (frames, queued, len, admitted) in table {
            assert_eq!(queue_admits(frames, queued, len), admitted, "{frames} frames of {queued} bytes, one of {len}");
        }
    }

    #[test]
    fn hub_bounds_history_queues_and_browsers() {
        let a = "a".repeat(32);
        let mut hub = Hub::new("boot".into());
        for i in 0..(HISTORY_LIMIT + 20) {
            hub.record_from_person(&a, &format!("m{i}"), None, i as u64);
        }
        let history = &hub.browsers[&a].history;
        assert_eq!(history.len(), HISTORY_LIMIT);
        assert_eq!(&*history.front().unwrap().text, "m20");
        assert_eq!(history.capacity(), HISTORY_LIMIT, "room for no more than the limit");

        // A socket that does not drain its queue is dropped once the queue is full.
        let (_, slow) = hub.connect(&a);
        assert_eq!(slow.frames.capacity(), None, "no slots allocated up front: the queue grows as frames come");
        for i in 0..SOCKET_QUEUE {
            hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: format!("{i}") }, 0);
        }
        assert!(hub.browsers[&a].sockets.is_empty());
        drop(slow);

        // By bytes too: a tab that does not read while long answers stream is dropped once
        // its queue holds SOCKET_QUEUE_BYTES, and a page that reconnects gets the history.
        let (_, slow) = hub.connect(&a);
        let (_, reading) = hub.connect(&a);
        let long = "x".repeat(3 * 1024 * 1024);
        for _ in 0..2 {
            hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: long.clone() }, 0);
            let _ = frames(&reading);
        }
        assert_eq!(hub.browsers[&a].sockets.len(), 2, "6 MiB queued: not too many yet");
        hub.deliver(Outbound::Draft { chat: chat_ref(&a), text: long.clone() }, 0);
        assert_eq!(hub.browsers[&a].sockets.len(), 1, "9 MiB would be too many; the tab that reads stays");
        hub.deliver(Outbound::Text { chat: chat_ref(&a), text: long.clone(), answers: vec![] }, 0);
        assert_eq!(frames(&slow).len(), 3, "the history and two drafts were queued, no more");
        assert!(slow.frames.try_recv().is_err(), "the queue is closed: the page reconnects");
        assert_eq!(frames(&reading).len(), 2, "the last draft and the answer");
        let (_, again) = hub.connect(&a);
        let history = frames(&again);
        assert_eq!(history[0]["type"], "history");
        assert!(
            history[0]["messages"].as_array().unwrap().last().unwrap()["text"].as_str().unwrap().starts_with("xxx")
        );
        drop((slow, reading, again));

        // Browsers are bounded; the stalest one without a tab goes first.
        let (_, _keep) = hub.connect(&a);
        for i in 0..MAX_BROWSERS + 5 {
            hub.record_from_person(&format!("{i:032x}"), "x", None, 0);
        }
        assert_eq!(hub.browsers.len(), MAX_BROWSERS);
        assert!(hub.browsers.contains_key(&a), "a browser with an open tab is kept");
        assert!(!hub.browsers.contains_key(&format!("{:032x}", 0)));
    }

    // ---- over sockets --------------------------------------------------------------------

    #[test]
    fn page_is_served_with_a_browser_cookie() {
        let chat = Chat::start(None);
        let page = chat.get("/", "");
        assert_eq!(status_of(&page), 200, "{page}");
        assert!(page.contains("<title>tether</title>"), "{page}");
        assert!(page.contains("Content-Security-Policy: default-src 'none'"));
        assert!(!page.contains("<script src"), "the page loads nothing from elsewhere");
        let cookie_line = page.lines().find(|l| l.starts_with("Set-Cookie: tether_sid=")).unwrap();
        assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"));
        let sid = set_cookie(&page, SID_COOKIE).unwrap();
        assert!(is_valid_sid(&sid), "{sid}");
        // A browser that has an id keeps it.
        let again = chat.get("/", &format!("Cookie: {SID_COOKIE}={sid}\r\n"));
        assert_eq!(status_of(&again), 200);
        assert_eq!(set_cookie(&again, SID_COOKIE), None);
        // Two browsers get different ids.
        assert_ne!(chat.new_browser(), sid);

        let health = chat.get("/healthz", "");
        assert_eq!(status_of(&health), 200);
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        assert_eq!(status_of(&chat.get("/nope", "")), 404);
        assert_eq!(status_of(&chat.get("/admin", "")), 404);
        let post = raw_request(chat.addr(), b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&post), 405, "{post}");
    }

    #[test]
    fn message_reaches_inbound_with_its_sender_and_is_echoed() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={sid}"));
        let history = next_frame(&mut ws);
        assert_eq!(history["type"], "history");
        assert_eq!(history["messages"], serde_json::json!([]));

        send_json(&mut ws, serde_json::json!({"type": "message", "text": "hello agent"}));
        let m = chat.next_message();
        assert_eq!(m.channel, "web");
        assert_eq!(m.sender_id, browser_id(&sid));
        assert_eq!(m.chat_id, browser_id(&sid));
        assert_eq!(m.sender_name, format!("web-{}", &browser_id(&sid)[..6]));
        assert_eq!(m.text, "hello agent");
        assert!(m.is_mentioned && !m.is_group && m.thread_id.is_none());
        assert!(m.attachments.is_empty());
        let echo = next_frame(&mut ws);
        assert_eq!(echo["type"], "message");
        assert_eq!(echo["from"], "you");
        assert_eq!(echo["text"], "hello agent");
        assert_eq!(Some(echo["id"].as_str().unwrap().to_string()), m.message_id);

        // Blank messages are ignored; garbage gets an error frame and nothing reaches the core.
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "  "}));
        ws.send(Message::text("{not json")).unwrap();
        let error = next_frame(&mut ws);
        assert_eq!(error["type"], "error");
        chat.assert_no_message();
    }

    #[test]
    fn naming_another_browsers_id_gets_neither_its_history_nor_its_identity() {
        let chat = Chat::start(None);
        let secret = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={secret}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "private words"}));
        let victim = chat.next_message().sender_id;
        assert_ne!(victim, secret, "the public id is not the cookie");

        // Someone who learned the id (pairing list, log, admin page) presents it as a cookie.
        let mut thief = chat.socket(&format!("{SID_COOKIE}={victim}"));
        let history = next_frame(&mut thief);
        assert_eq!(history["messages"], serde_json::json!([]), "no history of the victim's");
        send_json(&mut thief, serde_json::json!({"type": "message", "text": "approve me"}));
        let theirs = chat.next_message();
        assert_ne!(theirs.sender_id, victim, "not the victim's identity");
        assert_ne!(theirs.chat_id, victim);
    }

    /// Under `allowlist`, a stranger's 7 MB message and 4 MB upload reach the core only as a
    /// short text (the gates decide there): no file is written, nothing is kept or echoed.
    #[test]
    fn a_strangers_messages_and_uploads_are_neither_stored_nor_kept() {
        let chat = Chat::start_with(ChannelConfig {
            sender_policy: SenderPolicy::Allowlist,
            ..channel_config("127.0.0.1:0", None)
        });
        let secret = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={secret}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        let big = "x".repeat(7 * 1024 * 1024 - 100);
        send_json(&mut ws, serde_json::json!({"type": "message", "text": big}));
        let m = chat.next_message();
        assert!(m.text.len() <= STRANGER_TEXT_LIMIT, "{} bytes went to the core", m.text.len());
        let upload = base64(&vec![7u8; 4 * 1024 * 1024]);
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "file", "file": {"name": "a.bin", "mime": "application/octet-stream", "data": upload}}),
        );
        let m = chat.next_message();
        assert!(m.attachments.is_empty());
        assert!(!chat.uploads.exists(), "a stranger's upload was written under {}", chat.uploads.display());
        let kept = chat.handle.shared.hub().total_history_bytes();
        assert_eq!(kept, 0, "bytes of a stranger's messages kept in history");
        let mut again = chat.socket(&format!("{SID_COOKIE}={secret}"));
        assert_eq!(next_frame(&mut again)["messages"], serde_json::json!([]));
    }

    #[cfg(unix)]
    #[test]
    fn uploads_are_private_and_a_pre_created_open_directory_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        let chat = Chat::start(None);
        let file = serde_json::json!({"name": "a.txt", "mime": "text/plain", "data": base64(b"secret notes")});
        let mine = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={mine}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "mine", "file": file}));
        let saved = chat.next_message().attachments[0].path.clone();
        assert_eq!((mode(&chat.uploads), mode(saved.parent().unwrap()), mode(&saved)), (0o700, 0o700, 0o600));

        // Another user prepared the next browser's directory, open to everyone.
        let victim = chat.new_browser();
        let planted = chat.uploads.join(browser_id(&victim));
        std::fs::create_dir(&planted).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={victim}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "theirs", "file": file}));
        let error = next_frame(&mut ws);
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0, "nothing written into the planted directory");
    }

    /// A browser's id stays what earlier releases derived (pairing files hold it): the first
    /// 16 bytes of SHA-1 over the prefix and the secret, as `sha1sum` computes them.
    #[test]
    fn a_browser_id_is_the_known_sha1_prefix() {
        assert_eq!(browser_id("0123456789abcdef0123456789abcdef"), "f71eed1c9ab429b105d6d19b6cf635c3");
    }

    #[test]
    fn under_pairing_one_address_gets_one_new_browser_id_per_hour() {
        let t0 = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut limit = NewBrowsers::default();
        assert_eq!(limit.allow(a, t0), Ok(()));
        assert_eq!(limit.allow(a, t0 + Duration::from_secs(60)), Err(NEW_BROWSER_EVERY - Duration::from_secs(60)));
        assert_eq!(limit.allow(b, t0), Ok(()));
        assert_eq!(limit.allow(a, t0 + NEW_BROWSER_EVERY), Ok(()));

        // Through the server: a second page load without a cookie from the same address gets
        // no new id, so one client holds at most one of the channel's 3 pairing slots.
        let chat = Chat::start_with(ChannelConfig {
            sender_policy: SenderPolicy::Pairing,
            ..channel_config("127.0.0.1:0", None)
        });
        assert_eq!(status_of(&chat.get("/", "")), 200);
        let again = chat.get("/", "");
        assert_eq!(status_of(&again), 429, "{again}");
        assert_eq!(set_cookie(&again, SID_COOKIE), None);
        // A browser that has its id keeps getting the page.
        let cookie = format!("Cookie: {SID_COOKIE}={}\r\n", "a".repeat(32));
        assert_eq!(status_of(&chat.get("/", &cookie)), 200);
    }

    #[test]
    fn history_is_capped_in_bytes_per_browser_and_in_total() {
        let mut hub = Hub::new("b".into());
        let big = "y".repeat(300 * 1024);
        for n in 0..200u32 {
            let sid = format!("{:032x}", n % 100);
            hub.deliver(Outbound::Text { chat: chat_ref(&sid), text: big.clone(), answers: vec![] }, 0);
            assert!(hub.browsers[&sid].history_bytes <= HISTORY_BYTES);
            assert!(hub.total_history_bytes() <= TOTAL_HISTORY_BYTES + HISTORY_BYTES);
        }
        let sid = format!("{:032x}", 999);
        hub.deliver(Outbound::Text { chat: chat_ref(&sid), text: "z".repeat(5 * 1024 * 1024), answers: vec![] }, 0);
        assert!(hub.browsers[&sid].history_bytes <= HISTORY_BYTES, "one long message is kept cut");
        assert!(hub.browsers[&sid].history[0].text.contains("cut here in the replayed history"));
    }

    #[test]
    fn long_frames_written_past_the_buffer_arrive_whole_and_in_order() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={sid}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        let long = "ü".repeat(300_000); // 600 kB: a frame with a 64-bit length
        let medium = "m".repeat(70_000); // a 16-bit length, still direct
        let short = "s".repeat(DIRECT_FRAME - 100); // through tungstenite's buffer
        let to = chat_ref(&browser_id(&sid));
        chat.send(Outbound::Typing { chat: to.clone() });
        chat.send(Outbound::Draft { chat: to.clone(), text: short.clone() });
        chat.send(Outbound::Draft { chat: to.clone(), text: medium.clone() });
        chat.send(Outbound::Text { chat: to.clone(), text: long.clone(), answers: vec![] });
        chat.send(Outbound::Typing { chat: to });
        assert_eq!(next_frame(&mut ws)["type"], "typing");
        assert_eq!(next_frame(&mut ws)["text"], short.as_str());
        assert_eq!(next_frame(&mut ws)["text"], medium.as_str());
        assert_eq!(next_frame(&mut ws)["text"], long.as_str());
        assert_eq!(next_frame(&mut ws)["type"], "typing");
    }

    #[test]
    fn draft_typing_and_text_arrive_in_order_in_every_tab() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let other = chat.new_browser();
        let cookie = format!("{SID_COOKIE}={sid}");
        let mut tab1 = chat.socket(&cookie);
        let mut tab2 = chat.socket(&cookie);
        let mut stranger = chat.socket(&format!("{SID_COOKIE}={other}"));
        for ws in [&mut tab1, &mut tab2, &mut stranger] {
            assert_eq!(next_frame(ws)["type"], "history");
        }
        chat.send(Outbound::Typing { chat: chat_ref(&browser_id(&sid)) });
        chat.send(Outbound::Draft { chat: chat_ref(&browser_id(&sid)), text: "Hel".into() });
        chat.send(Outbound::Text {
            chat: ChatRef { channel: "other-channel".into(), ..chat_ref(&browser_id(&sid)) },
            text: "not for this channel".into(),
            answers: vec![],
        });
        chat.send(Outbound::Draft { chat: chat_ref(&browser_id(&sid)), text: "Hello".into() });
        chat.send(Outbound::Text {
            chat: chat_ref(&browser_id(&sid)),
            text: "Hello, **world**".into(),
            answers: vec![],
        });
        chat.send(Outbound::Text {
            chat: chat_ref(&browser_id(&other)),
            text: "for the other one".into(),
            answers: vec![],
        });
        for ws in [&mut tab1, &mut tab2] {
            assert_eq!(next_frame(ws), serde_json::json!({"type": "typing"}));
            assert_eq!(next_frame(ws), serde_json::json!({"type": "draft", "text": "Hel"}));
            assert_eq!(next_frame(ws), serde_json::json!({"type": "draft", "text": "Hello"}));
            let text = next_frame(ws);
            assert_eq!(text["type"], "message");
            assert_eq!(text["from"], "agent");
            assert_eq!(text["text"], "Hello, **world**");
        }
        let theirs = next_frame(&mut stranger);
        assert_eq!(theirs["text"], "for the other one");
    }

    #[test]
    fn reconnect_replays_history_and_the_draft() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let cookie = format!("{SID_COOKIE}={sid}");
        let mut ws = chat.socket(&cookie);
        assert_eq!(next_frame(&mut ws)["type"], "history");
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "question"}));
        assert_eq!(chat.next_message().text, "question");
        assert_eq!(next_frame(&mut ws)["from"], "you");
        chat.send(Outbound::Text { chat: chat_ref(&browser_id(&sid)), text: "answer".into(), answers: vec![] });
        assert_eq!(next_frame(&mut ws)["text"], "answer");
        chat.send(Outbound::Draft { chat: chat_ref(&browser_id(&sid)), text: "more…".into() });
        assert_eq!(next_frame(&mut ws)["type"], "draft");
        ws.close(None).unwrap();
        drop(ws);

        let mut again = chat.socket(&cookie);
        let history = next_frame(&mut again);
        assert_eq!(history["type"], "history");
        let messages = history["messages"].as_array().unwrap();
        let said: Vec<(&str, &str)> =
            messages.iter().map(|m| (m["from"].as_str().unwrap(), m["text"].as_str().unwrap())).collect();
        assert_eq!(said, vec![("you", "question"), ("agent", "answer")]);
        assert_eq!(history["draft"], "more…");
    }

    #[test]
    fn attachments_are_saved_under_the_browser_with_a_safe_name() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={sid}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        let png = b"\x89PNG\r\n\x1a\nnot really";
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "look",
                "file": {"name": "../../evil/shot.png", "mime": "image/png", "data": base64(png)}}),
        );
        let m = chat.next_message();
        assert_eq!(m.text, "look");
        assert_eq!(m.attachments.len(), 1);
        let a = &m.attachments[0];
        assert_eq!(a.kind, AttachmentKind::Image);
        assert_eq!(a.file_name, "shot.png");
        assert_eq!(a.mime_type, "image/png");
        assert_eq!(a.path, chat.uploads.join(browser_id(&sid)).join("shot.png"));
        assert_eq!(std::fs::read(&a.path).unwrap(), png);
        let echo = next_frame(&mut ws);
        assert_eq!(echo["file"], "shot.png");

        // Same name again: a new file, the first one untouched; not an image: kind File.
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "",
                "file": {"name": "shot.png", "mime": "application/pdf", "data": base64(b"%PDF")}}),
        );
        let m = chat.next_message();
        let a = &m.attachments[0];
        assert_eq!(a.kind, AttachmentKind::File);
        assert_eq!(a.file_name, "1-shot.png");
        assert_eq!(std::fs::read(&a.path).unwrap(), b"%PDF");
        assert_eq!(std::fs::read(chat.uploads.join(browser_id(&sid)).join("shot.png")).unwrap(), png);
        assert_eq!(next_frame(&mut ws)["type"], "message");

        // Too big, or not base64: an error frame, nothing saved, nothing to the core.
        let big = base64(&vec![7u8; MAX_UPLOAD + 1]);
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "big",
                "file": {"name": "big.bin", "mime": "", "data": big}}),
        );
        let error = next_frame(&mut ws);
        assert_eq!(error["type"], "error");
        assert!(error["text"].as_str().unwrap().contains("5 MB"), "{error}");
        send_json(
            &mut ws,
            serde_json::json!({"type": "message", "text": "bad",
                "file": {"name": "x", "mime": "", "data": "***"}}),
        );
        assert_eq!(next_frame(&mut ws)["type"], "error");
        chat.assert_no_message();
        assert!(!chat.uploads.join(browser_id(&sid)).join("big.bin").exists());
    }

    #[test]
    fn socket_needs_a_browser_id_and_the_same_origin() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let cookie = format!("{SID_COOKIE}={sid}");
        let status = |r: Result<WebSocket<TcpStream>, tungstenite::Error>| match r {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => 101,
        };
        assert_eq!(status(chat.try_socket("other=1", None)), 403);
        assert_eq!(status(chat.try_socket(&format!("{SID_COOKIE}=../../x"), None)), 403);
        assert_eq!(status(chat.try_socket(&cookie, Some("http://evil.example"))), 403);
        let same = format!("http://{}", chat.addr());
        assert_eq!(status(chat.try_socket(&cookie, Some(&same))), 101);
        // A page on another name (DNS rebinding) cannot even load the chat.
        let foreign = raw_request(chat.addr(), b"GET / HTTP/1.1\r\nHost: evil.example:8787\r\n\r\n");
        assert_eq!(status_of(&foreign), 403, "{foreign}");
    }

    #[test]
    fn token_is_required_everywhere_and_stored_in_a_cookie() {
        let chat = Chat::start(Some("s3cret token"));
        for path in ["/", "/healthz", "/ws", "/?token=wrong"] {
            let r = chat.get(path, "");
            assert_eq!(status_of(&r), 401, "{path}: {r}");
            assert!(r.contains("token"), "{r}");
        }
        let redirect = chat.get("/?token=s3cret%20token", "");
        assert_eq!(status_of(&redirect), 303, "{redirect}");
        assert!(redirect.contains("\r\nLocation: /\r\n"), "{redirect}");
        let token_cookie = set_cookie(&redirect, TOKEN_COOKIE).unwrap();
        let with_token = format!("Cookie: {TOKEN_COOKIE}={token_cookie}\r\n");
        let page = chat.get("/", &with_token);
        assert_eq!(status_of(&page), 200, "{page}");
        let sid = set_cookie(&page, SID_COOKIE).unwrap();
        assert_eq!(status_of(&chat.get("/healthz", &with_token)), 200);
        assert_eq!(status_of(&chat.get("/healthz", "Authorization: Bearer s3cret token\r\n")), 200);

        // The socket needs the token cookie too.
        match chat.try_socket(&format!("{SID_COOKIE}={sid}"), None) {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
        let mut ws = chat.socket(&format!("{SID_COOKIE}={sid}; {TOKEN_COOKIE}={token_cookie}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        send_json(&mut ws, serde_json::json!({"type": "message", "text": "authorized"}));
        assert_eq!(chat.next_message().text, "authorized");
    }

    #[test]
    fn listen_rules_and_bind_errors() {
        let (inbound, _inbound_rx) = crossbeam_channel::unbounded();
        let (_outbox, outbox_rx) = crossbeam_channel::unbounded::<Outbound>();
        let open = spawn(&channel_config("0.0.0.0:0", None), inbound.clone(), outbox_rx.clone());
        let message = open.err().unwrap().to_string();
        assert!(message.contains("`token`") && message.contains("0.0.0.0:0"), "{message}");
        let empty_token = spawn(&channel_config("0.0.0.0:0", Some("")), inbound.clone(), outbox_rx.clone());
        assert!(empty_token.is_err());
        let with_token = spawn(&channel_config("0.0.0.0:0", Some("t")), inbound.clone(), outbox_rx.clone()).unwrap();
        assert!(with_token.url().starts_with("http://127.0.0.1:"), "{}", with_token.url());
        with_token.stop();

        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let busy = spawn(&channel_config(&listen, None), inbound.clone(), outbox_rx.clone());
        let message = busy.err().unwrap().to_string();
        assert!(message.contains(&listen) && message.contains("`listen`"), "{message}");
        let nonsense = spawn(&channel_config("not an address", None), inbound, outbox_rx);
        let message = nonsense.err().unwrap().to_string();
        assert!(message.contains("\"web\"") && message.contains("127.0.0.1:8787"), "{message}");
    }

    #[test]
    fn bad_clients_do_not_block_others() {
        let chat = Chat::start(None);
        let addr = chat.addr();
        // Half-open: connected, silent.
        let _silent = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        let mut partial = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        partial.write_all(b"GET / HTTP/1.1\r\nHost: 127.0").unwrap();
        let started = Instant::now();
        assert_eq!(status_of(&chat.get("/", "")), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Malformed request line.
        assert_eq!(status_of(&raw_request(addr, b"GARBAGE\r\n\r\n")), 400);
        // Oversized head.
        let mut big = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
        big.extend_from_slice(format!("Cookie: {}\r\n\r\n", "x".repeat(20 * 1024)).as_bytes());
        let answer = raw_request(addr, &big);
        assert!(matches!(status_of(&answer), 431 | 400), "{answer}");
        assert_eq!(status_of(&chat.get("/healthz", "")), 200);
    }

    #[test]
    fn thirty_concurrent_clients_from_one_address_each_get_the_page() {
        let chat = Chat::start(None);
        let addr = chat.addr();
        // One address may hold `max_per_address` (32) connections at once.
        let clients: Vec<_> = (0..30)
            .map(|_| {
                std::thread::spawn(move || {
                    raw_request(addr, format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
                })
            })
            .collect();
        for client in clients {
            let page = client.join().unwrap();
            assert_eq!(status_of(&page), 200, "{page}");
            assert!(page.contains("</html>"), "whole page");
        }
    }

    #[test]
    fn stop_closes_sockets_and_the_port() {
        let chat = Chat::start(None);
        let sid = chat.new_browser();
        let mut ws = chat.socket(&format!("{SID_COOKIE}={sid}"));
        assert_eq!(next_frame(&mut ws)["type"], "history");
        let addr = chat.addr();
        let mut chat = chat;
        chat.handle.shutdown();
        // The socket sees a close frame or EOF, well before its 5 s read timeout.
        let started = Instant::now();
        loop {
            match ws.read() {
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
        let mut leftover = ws.into_inner();
        let _ = read_to_close(&mut leftover);
    }
}
