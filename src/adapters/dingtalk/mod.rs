//! The DingTalk channel (Stream mode, enterprise internal app robot): a stream thread that
//! opens a connection (`connections/open`), holds the gateway's WebSocket with its
//! single-use ticket, answers pings, journals each robot message and only then acks it, and
//! reconnects with a fresh ticket on `disconnect`, a closed socket or two minutes of silence;
//! an inbox thread that fetches a message's files (two steps, by download code) before
//! passing it to the core, so slow downloads never hold up acks and pings; and the shared
//! outbox with DingTalk's courier (`send.rs`), which answers through the conversation's
//! session webhook or, once that expired, the robot OpenAPI.
//!
//! DingTalk gives every connection of an app a share of the messages: a second program
//! connected with the same credentials silently takes some of them. Said at start, and in
//! the status when tether sees it (two channels of one home with the same app).

mod api;
mod routes;
mod send;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded};
use serde_json::Value;

use crate::adapters::Fingerprint;
use crate::adapters::uploads::OutboundFiles;
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel, contain, outbox};
use crate::backoff::Backoff;
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings};
use crate::error::Error;
use crate::event::{Attachment, AttachmentKind, Inbound, InboundMessage};
use crate::health::{Probe, wall_ms};
use crate::journal::{Journal, JournalEntry};
use crate::net::ws::{self, WsClient, WsConfig, WsEvent};
use crate::vec_map::VecMap;
use api::App;
use routes::Routes;
use wire::{ApiError, Dedup, Frame, MediaRef};

/// The Stream gateway and robot OpenAPI host when `apiBase` is not set.
const DEFAULT_API_BASE: &str = "https://api.dingtalk.com";
/// The host of the access token when `oapiBase` is not set.
const DEFAULT_OAPI_BASE: &str = "https://oapi.dingtalk.com";
/// No frame, ping or pong for this long: the connection is dead, make a new one.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);
/// Tests shorten [`SILENCE_LIMIT`] with this variable (milliseconds).
pub const SILENCE_ENV: &str = "TETHER_DINGTALK_SILENCE_MS";
/// How long one read waits, so that a stop request and the watchdog are seen promptly.
const READ_SLICE: Duration = Duration::from_millis(500);
/// How often a parked channel looks whether it was asked to stop.
const PARKED_CHECK: Duration = Duration::from_secs(60);
/// Messages waiting for their files to be fetched; the stream thread waits when it is full.
const INBOX_DEPTH: usize = 64;

/// DingTalk, as the seam sees it.
pub const PLATFORM: Platform = Platform {
    name: "dingtalk",
    keys: &["clientId", "clientSecret", "apiBase", "oapiBase", crate::media::KEY_MAX_BYTES],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: false,
        buttons: false,
        max_message_len: send::MESSAGE_LIMIT,
        markup: Markup::Markdown,
        // No typing API: a 👀 reaction on the person's message stands in. It stays until taken
        // back, so asking again now and then only puts it back after an early recall.
        typing_refresh: Some(Duration::from_secs(20)),
        journaled: true,
        addressed_commands: false,
    },
    heartbeats: true,
    spawn,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let id = keys.required_secret("clientId", "your app's Client ID (AppKey)", "DINGTALK_CLIENT_ID")?;
    let secret =
        keys.required_secret("clientSecret", "your app's Client Secret (AppSecret)", "DINGTALK_CLIENT_SECRET")?;
    let api_base = keys.url("apiBase", None, DEFAULT_API_BASE)?;
    let oapi_base = keys.url("oapiBase", None, DEFAULT_OAPI_BASE)?;
    let mut values: VecMap<&'static str, Value> =
        [("apiBase", Value::String(api_base)), ("oapiBase", Value::String(oapi_base))].into_iter().collect();
    // The size limit of files sent out (received ones have their own cap).
    if let Some(max) = keys.positive_integer(crate::media::KEY_MAX_BYTES)? {
        values.insert(crate::media::KEY_MAX_BYTES, Value::from(max));
    }
    Ok(PlatformSettings { secrets: [("clientId", id), ("clientSecret", secret)].into_iter().collect(), values })
}

/// Start the stream, inbox and delivery threads of one DingTalk channel.
fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let secret = |key| channel.secret(key).map(|s| s.expose().to_string()).unwrap_or_default();
    let app = Arc::new(App::new(
        channel.setting("apiBase").unwrap_or(DEFAULT_API_BASE).to_string(),
        channel.setting("oapiBase").unwrap_or(DEFAULT_OAPI_BASE).to_string(),
        secret("clientId"),
        secret("clientSecret"),
    ));
    let journal = io.journal.ok_or_else(|| Error::Other(format!("channel \"{}\": no journal", channel.name)))?;
    let routes = Arc::new(Routes::load(io.home.join(format!("dingtalk-{}-chats.json", channel.name))));
    let (inbox_tx, inbox_rx) = bounded(INBOX_DEPTH);
    let stream = Stream {
        name: channel.name.clone(),
        app: app.clone(),
        journal: journal.clone(),
        routes: routes.clone(),
        probe: io.probe.clone(),
        stop: io.stop.clone(),
        inbox: inbox_tx,
        home: io.home.clone(),
        silence_limit: silence_limit(),
    };
    io.supervisor.spawn(format!("dt-stream-{}", channel.name), move || stream.run())?;
    let inbox = Inbox {
        name: channel.name.clone(),
        app: app.clone(),
        pending: inbox_rx,
        inbound: io.inbound,
        media_dir: io.home.join("media"),
    };
    io.supervisor.spawn(format!("dt-inbox-{}", channel.name), move || inbox.run())?;
    let max_bytes = crate::media::MediaLimits::from_settings(&channel.settings.values).max_bytes;
    let files = OutboundFiles { roots: vec![channel.cwd.clone(), io.home.join("media")], max_bytes };
    let courier = Arc::new(send::DingTalkCourier {
        app,
        routes,
        channel: channel.name.clone(),
        reactions: Default::default(),
        files,
    });
    let settle = outbox::Settle { channel: channel.name.clone(), journal: Some(journal), probe: io.probe };
    let outbox = outbox::spawn(courier, settle, &io.supervisor)?;
    Ok(RunningChannel::delivering(outbox))
}

fn silence_limit() -> Duration {
    std::env::var(SILENCE_ENV).ok().and_then(|v| v.parse().ok()).map_or(SILENCE_LIMIT, Duration::from_millis)
}

/// Wait `delay` unless asked to stop; true when the loop should end.
fn pause(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// A message journaled and acked, on its way to the core once its files are fetched.
struct Pending {
    message: InboundMessage,
    media: Vec<MediaRef>,
    robot_code: Option<String>,
}

/// How a connection ended.
enum End {
    Stop,
    /// The server asked us to move (routine: load balancing, expiry).
    Disconnect(String),
    Lost(String),
}

struct Stream {
    name: String,
    app: Arc<App>,
    journal: Arc<Journal>,
    routes: Arc<Routes>,
    probe: Probe,
    stop: Receiver<()>,
    inbox: Sender<Pending>,
    home: PathBuf,
    silence_limit: Duration,
}

impl Stream {
    fn target(&self) -> &str {
        self.name.as_str()
    }

    fn run(self) {
        let _claim = self.claim_app();
        let mut dedup = Dedup::new(wire::DEDUP_CAPACITY);
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            if stopped(&self.stop) {
                return;
            }
            let ticket = match self.app.open_connection() {
                Ok(ticket) => ticket,
                Err(ApiError::Unauthorized(d)) => return self.park(&d),
                Err(ApiError::Transient(d)) => {
                    self.report(&format!("connections/open failed: {d}"));
                    if pause(&self.stop, backoff.next_delay()) {
                        return;
                    }
                    continue;
                }
            };
            // The ticket is single-use and lives 90 s: connect now, and on failure ask anew.
            let mut socket = match ws::connect(&wire::socket_url(&ticket), &WsConfig::default()) {
                Ok(socket) => socket,
                Err(e) => {
                    self.report(&format!("cannot connect the Stream WebSocket: {e}"));
                    if pause(&self.stop, backoff.next_delay()) {
                        return;
                    }
                    continue;
                }
            };
            if backoff.attempts() > 0 {
                log::info!(target: self.target(), "connected to the DingTalk Stream gateway {} after {} failed attempts", socket.peer(), backoff.attempts());
            } else {
                log::info!(target: self.target(), "connected to the DingTalk Stream gateway {}", socket.peer());
            }
            self.probe.ok();
            match self.session(&mut socket, &mut dedup, &mut backoff) {
                End::Stop => {
                    socket.close(1000, "stopping", Duration::from_millis(500));
                    return;
                }
                End::Disconnect(reason) => {
                    // Routine: move to a new connection at once.
                    log::info!(target: self.target(), "the gateway asked to reconnect ({reason}); opening a new connection");
                    socket.close(1000, "reconnecting", Duration::from_millis(200));
                }
                End::Lost(why) => {
                    self.report(&format!("Stream connection lost: {why}; reconnecting"));
                    if pause(&self.stop, backoff.next_delay()) {
                        return;
                    }
                }
            }
        }
    }

    /// Read frames until the connection ends, answering each at once.
    fn session(&self, socket: &mut WsClient, dedup: &mut Dedup, backoff: &mut Backoff) -> End {
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        // A quiet but healthy connection answers our pings; the gateway pings us too.
        let keepalive = self.silence_limit / 2;
        loop {
            if stopped(&self.stop) {
                return End::Stop;
            }
            let now = Instant::now();
            if now.duration_since(last_heard) >= self.silence_limit {
                return End::Lost(format!("nothing heard for {} s", self.silence_limit.as_secs_f32()));
            }
            if now.duration_since(last_ping) >= keepalive {
                last_ping = now;
                if let Err(e) = socket.send_ping(b"tether") {
                    return End::Lost(e.to_string());
                }
            }
            let text = match socket.read(Instant::now() + READ_SLICE) {
                WsEvent::Text(text) => text,
                WsEvent::Binary(_) | WsEvent::Ping | WsEvent::Pong => {
                    // Alive, for the watchdog and for the channel's health.
                    last_heard = Instant::now();
                    self.probe.ok();
                    continue;
                }
                WsEvent::Timeout => continue,
                WsEvent::Close { code, reason } => {
                    return End::Lost(format!("the gateway closed the connection ({code:?} {reason})"));
                }
                WsEvent::Error(e) => return End::Lost(e.to_string()),
            };
            last_heard = Instant::now();
            self.probe.ok();
            let input = Fingerprint::of(&[self.name.as_bytes(), text.as_bytes()]);
            let frame = match contain(input, || wire::parse_frame(&text)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    log::warn!(target: self.target(), "skipped a frame that does not read: {e}");
                    continue;
                }
                None => {
                    log::error!(target: self.target(), "skipped a frame that made the decoder fail");
                    continue;
                }
            };
            backoff.reset();
            let reply = match frame {
                Frame::Ping { message_id, data } => Some(wire::ack(&message_id, &data)),
                Frame::Disconnect { reason } => return End::Disconnect(reason),
                Frame::System { message_id, topic } => {
                    log::debug!(target: self.target(), "system frame {topic}");
                    Some(wire::callback_ack(&message_id))
                }
                Frame::Event { message_id, .. } => Some(wire::event_ack(&message_id)),
                Frame::Callback { message_id, topic, data } if topic == wire::ROBOT_TOPIC => {
                    self.take_robot_message(&data, dedup).then(|| wire::callback_ack(&message_id))
                }
                Frame::Callback { message_id, topic, .. } => {
                    log::debug!(target: self.target(), "callback on topic {topic} ignored");
                    Some(wire::callback_ack(&message_id))
                }
            };
            if let Some(reply) = reply
                && let Err(e) = socket.send_text(&reply)
            {
                return End::Lost(e.to_string());
            }
        }
    }

    /// Decode, de-duplicate and journal one robot message, then queue it for the core; false
    /// when it could not be journaled (then it is not acked, so DingTalk may send it again).
    fn take_robot_message(&self, data: &str, dedup: &mut Dedup) -> bool {
        let input = Fingerprint::of(&[self.name.as_bytes(), data.as_bytes()]);
        let robot = match contain(input, || wire::parse_robot_message(data, &self.name)) {
            Some(Ok(robot)) => robot,
            Some(Err(e)) => {
                log::warn!(target: self.target(), "skipped a robot message that does not read: {e}");
                return true;
            }
            None => {
                log::error!(target: self.target(), "skipped a robot message that made the decoder fail");
                return true;
            }
        };
        let id = robot.message.message_id.clone().unwrap_or_default();
        if !dedup.first_time(&id, wall_ms()) {
            log::debug!(target: self.target(), "message {id} delivered again; taken once");
            return true;
        }
        let robot_code = robot.route.robot_code.clone();
        self.routes.update(robot.route);
        let entry =
            JournalEntry { sent_at_ms: robot.message.sent_at_ms.unwrap_or_else(wall_ms), message: robot.message };
        let fresh = match self.journal.record(vec![entry]) {
            Ok(fresh) => fresh,
            Err(e) => {
                dedup.forget(&id);
                let error = format!("cannot write the journal {}: {e}", self.journal.path().display());
                if self.probe.failed(&error) {
                    log::error!(target: self.target(), "{error}; not acking messages until it can");
                }
                return false;
            }
        };
        for message in fresh {
            log::debug!(target: self.target(), "message {:?} from {} in {}", message.message_id, message.sender_id, message.chat_id);
            let pending = Pending { message, media: robot.media.clone(), robot_code: robot_code.clone() };
            if self.inbox.send(pending).is_err() {
                break; // The channel is stopping; the journal replays it at the next start.
            }
        }
        true
    }

    /// Log a failure: a warning for the first of a streak (or a new error), detail after.
    fn report(&self, error: &str) {
        self.probe.report(self.target(), error);
    }

    /// Rejected credentials will not fix themselves: say so once and wait to be stopped.
    fn park(&self, detail: &str) {
        let reason = format!(
            "DingTalk rejected the app credentials ({detail}); fix \"clientId\"/\"clientSecret\" of channel \"{}\" \
             in the config, then reload (kill -HUP) or restart. Not retrying",
            self.name
        );
        log::error!(target: self.target(), "{reason}");
        self.probe.park(&reason);
        while !pause(&self.stop, PARKED_CHECK) {}
    }

    /// DingTalk splits messages between every connection of an app. Say so, and hold a lock
    /// per app in the home so that a second channel (or service) with the same app is seen.
    fn claim_app(&self) -> Option<crate::store::FileLock> {
        log::info!(target: self.target(), "note: DingTalk shares an app's messages among all its connections; run one tether channel per app, or each gets only some messages");
        let path = self.home.join(format!("dingtalk-{}.lock", lock_name(&self.app.client_id)));
        match crate::store::lock(&path, Duration::from_secs(3)) {
            Ok(lock) => Some(lock),
            Err(_) => {
                let warning = format!(
                    "another connection uses the same DingTalk app (clientId {}): DingTalk splits the messages \
                     between them, so this channel misses some. Keep one channel per app",
                    self.app.client_id
                );
                log::warn!(target: self.target(), "{warning}");
                self.probe.note_error(&warning);
                None
            }
        }
    }
}

/// A file name for the app's lock: the client id's safe characters and a hash of it.
fn lock_name(client_id: &str) -> String {
    let safe: String = client_id.chars().filter(char::is_ascii_alphanumeric).take(32).collect();
    let hash =
        client_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{safe}-{:08x}", hash as u32)
}

/// Fetches a message's files, then passes it to the core.
struct Inbox {
    name: String,
    app: Arc<App>,
    pending: Receiver<Pending>,
    inbound: Sender<Inbound>,
    media_dir: PathBuf,
}

impl Inbox {
    fn run(self) {
        // Ends when the stream thread ends (its sender is dropped).
        for Pending { mut message, media, robot_code } in self.pending.iter() {
            let mut saved = 0;
            for reference in &media {
                match self.fetch(reference, robot_code.as_deref()) {
                    Ok(attachment) => {
                        message.attachments.push(attachment);
                        saved += 1;
                    }
                    Err(e) => {
                        log::warn!(target: self.name.as_str(), "a file of message {:?} could not be fetched: {e}", message.message_id)
                    }
                }
            }
            if saved == media.len() && saved > 0 && is_placeholder(&message.text) {
                // The attachment line says it all.
                message.text.clear();
            }
            if self.inbound.send(Inbound::Message(message)).is_err() {
                return;
            }
        }
    }

    fn fetch(&self, media: &MediaRef, robot_code: Option<&str>) -> Result<Attachment, String> {
        let fetched = self.app.download(&media.download_code, robot_code)?;
        let mime = fetched
            .header("content-type")
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| default_mime(media.kind).to_string());
        let file_name = media
            .file_name
            .as_deref()
            .map(safe_file_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}{}", kind_word(media.kind), extension(&mime)));
        crate::store::ensure_private_dir(&self.media_dir).map_err(|e| e.to_string())?;
        let path = self.media_dir.join(format!("{}-{}-{file_name}", self.name, unique()));
        crate::store::write_atomic(&path, &fetched.body).map_err(|e| e.to_string())?;
        log::debug!(target: self.name.as_str(), "saved {} bytes to {}", fetched.body.len(), path.display());
        Ok(Attachment { kind: media.kind, path, file_name, mime_type: mime })
    }
}

/// The text a media message has before its file is saved.
fn is_placeholder(text: &str) -> bool {
    matches!(text, "(image)" | "(audio)" | "(video)") || (text.starts_with("(file: ") && text.ends_with(')'))
}

/// A prefix no two saved files share: the time and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", wall_ms(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A file name from a message, safe to put in a path: its last component, without control
/// characters or leading dots, at most 80 characters.
pub(crate) fn safe_file_name(name: &str) -> String {
    let last = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String =
        last.chars().filter(|c| !c.is_control() && *c != '/' && *c != '\\').take(80).collect::<String>();
    // Dots and spaces in any order: " .x" must not become ".x" once trimmed.
    clean.trim_start_matches(|c: char| c == '.' || c.is_whitespace()).trim_end().to_string()
}

fn kind_word(kind: AttachmentKind) -> &'static str {
    match kind {
        AttachmentKind::Image => "image",
        AttachmentKind::File => "file",
        AttachmentKind::Audio => "audio",
        AttachmentKind::Video => "video",
    }
}

fn default_mime(kind: AttachmentKind) -> &'static str {
    match kind {
        AttachmentKind::Image => "image/jpeg",
        AttachmentKind::Audio => "audio/amr",
        AttachmentKind::Video => "video/mp4",
        AttachmentKind::File => "application/octet-stream",
    }
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "image/gif" => ".gif",
        "image/webp" => ".webp",
        "audio/amr" => ".amr",
        "audio/mpeg" => ".mp3",
        "audio/ogg" => ".ogg",
        "video/mp4" => ".mp4",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_messages_cannot_escape_the_media_directory() {
        let cases = [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("/abs/path/x.txt", "x.txt"),
            (".hidden", "hidden"),
            ("a\u{0}b\nc.txt", "abc.txt"),
            ("..", ""),
            (" .+2", "+2"),
            (". . .x ", "x"),
        ];
        for (name, want) in cases {
            assert_eq!(safe_file_name(name), want, "{name:?}");
        }
        assert_eq!(safe_file_name(&"é".repeat(200)).chars().count(), 80);
    }

    #[test]
    fn placeholders_and_lock_names() {
        for text in ["(image)", "(file: a.pdf)", "(audio)", "(video)"] {
            assert!(is_placeholder(text), "{text}");
        }
        assert!(!is_placeholder("look at this"));
        assert_eq!(lock_name("ding/abc"), lock_name("ding/abc"));
        assert_ne!(lock_name("dingabc"), lock_name("ding/abc"));
        assert!(lock_name("../x").starts_with("x-"));
    }
}
