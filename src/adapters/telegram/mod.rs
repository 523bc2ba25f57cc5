//! The Telegram channel: a long-poll thread (`getUpdates`) that reports messages, and the
//! shared outbox (`adapters::outbox`) with Telegram's courier (`send.rs`) that delivers
//! replies and typing indicators. The two never wait for each other: a failing send does
//! not stop polling.
//!
//! No lost messages: each batch of updates is appended to the channel's journal (fsynced)
//! before the offset moves past it; the offset is kept in `<home>/<channel>-offset.json`,
//! written lazily ([`crate::adapters::lazy_save_due`]: Telegram itself forgets only updates confirmed by a
//! later `getUpdates`, so a stale file only brings back updates the journal knows). The
//! sender marks a message answered in the journal once every part of its answer is delivered.
//! The poller reports to the channel's health [`Probe`]; a rejected token (401) parks it.
//!
//! Files (photos, documents, voice, audio, video) are fetched by the poll thread between
//! decoding and journaling, within a time budget per batch (`inbound.rs`), so a journaled
//! message carries its files' paths; a sweeper thread deletes them after `mediaRetention`.

mod inbound;
mod send;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use serde_json::{Value, json};

use crate::adapters::uploads::{self, OutboundFiles};
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel, lazy_save_due, outbox};
use crate::backoff::Backoff;
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings};
use crate::error::Error;
use crate::event::Inbound;
use crate::health::{Probe, wall_ms};
use crate::journal::{Journal, JournalEntry};
use crate::media::{self, MediaLimits};
use crate::net::http::{HttpClient, Method};
use crate::vec_map::VecMap;
use wire::{BotIdentity, Failure};

/// How long Telegram holds a `getUpdates` call open when there is nothing new.
const POLL_HOLD: Duration = Duration::from_secs(30);
/// Our side waits this much longer than the hold before calling the poll dead.
const POLL_MARGIN: Duration = Duration::from_secs(10);
/// Largest Bot API answer read (an upload's answer is small).
const REPLY_LIMIT: u64 = 1024 * 1024;
/// How often a parked channel looks whether it was asked to stop.
const PARKED_CHECK: Duration = Duration::from_secs(60);

/// The Bot API endpoint of one bot.
#[derive(Debug, Clone)]
struct Api {
    http: HttpClient,
    /// `{apiBase}/bot{token}`: never logged.
    base: String,
    /// `{apiBase}/file/bot{token}`, where `getFile`'s paths are downloaded: never logged.
    file_base: String,
    channel: String,
}

impl Api {
    fn call(&self, method: &str, body: &Value, timeout: Duration) -> Result<Value, Failure> {
        self.call_with(method, body, timeout, wire::parse_reply)
    }

    /// A call whose reply is read by `parse` (such as [`wire::parse_sent`]).
    fn call_with<T>(
        &self,
        method: &str,
        body: &Value,
        timeout: Duration,
        parse: fn(u16, &str) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let json = serde_json::to_vec(body)
            .map_err(|e| Failure::Transient(format!("cannot encode the {method} request body: {e}")))?;
        self.call_json(method, &json, timeout, parse)
    }

    /// A call whose body is JSON text already (see [`wire::get_updates`]).
    fn call_json<T>(
        &self,
        method: &str,
        body: &[u8],
        timeout: Duration,
        parse: fn(u16, &str) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let url = format!("{}/{method}", self.base);
        match self.http.post_json_text(&url, body, timeout) {
            Ok((status, text)) => parse(status, &text),
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    }

    /// A multipart upload (`sendPhoto`, `sendDocument`).
    fn upload(&self, method: &str, content_type: &str, body: &[u8], timeout: Duration) -> Result<Value, Failure> {
        let url = format!("{}/{method}", self.base);
        let headers = [("Content-Type", content_type.to_string())];
        match self.http.exchange(Method::Post, &url, &headers, body, timeout, REPLY_LIMIT) {
            Ok(reply) => wire::parse_reply(reply.status, &reply.text()),
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    }

    /// The bytes of a file `getFile` located, refusing more than `limit` bytes.
    fn download(&self, file_path: &str, limit: u64, timeout: Duration) -> Result<Vec<u8>, String> {
        let url = format!("{}/{file_path}", self.file_base);
        match self.http.exchange(Method::Get, &url, &[], &[], timeout, limit) {
            Ok(reply) if reply.status == 200 => Ok(reply.body),
            Ok(reply) => Err(format!("HTTP {}", reply.status)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The Bot API host when `apiBase` (or `baseUrl`) is not set.
const DEFAULT_API_BASE: &str = "https://api.telegram.org";

/// Telegram, as the seam sees it.
pub const PLATFORM: Platform = Platform {
    name: "telegram",
    keys: &["token", "apiBase", "baseUrl", media::KEY_MAX_BYTES, media::KEY_RETENTION],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: true,
        buttons: true,
        max_message_len: 4096,
        markup: Markup::TelegramHtml,
        // Telegram shows "typing…" for about 5 s.
        typing_refresh: Some(Duration::from_secs(4)),
        journaled: true,
        addressed_commands: true,
    },
    heartbeats: true,
    spawn,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let token = keys.required_secret("token", "your bot token", "TELEGRAM_BOT_TOKEN")?;
    let api_base = keys.url("apiBase", Some("baseUrl"), DEFAULT_API_BASE)?;
    // Telegram ids are numbers; anything else (a @username, a placeholder) matches nobody.
    for (i, id) in keys.user_ids("allowedUsers")?.iter().enumerate() {
        let digits = id.strip_prefix('-').unwrap_or(id);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(keys.error(
                &format!("allowedUsers[{i}]"),
                format!(
                    "\"{id}\" is not a Telegram user id: Telegram ids are numbers such as 123456789 \
                     (not @usernames). To find yours, send your bot a message while tether runs: the \
                     log says \"dropped message from <id>\"; or message @userinfobot in Telegram"
                ),
            ));
        }
    }
    let mut values: VecMap<&'static str, Value> = MediaLimits::parse(keys)?.into_iter().collect();
    values.insert("apiBase", Value::String(api_base));
    Ok(PlatformSettings { secrets: [("token", token)].into_iter().collect(), values })
}

/// Start the poller and the sender of one Telegram channel.
fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let token = channel.secret("token").map(|t| t.expose().to_string()).unwrap_or_default();
    let api_base = channel.setting("apiBase").unwrap_or(DEFAULT_API_BASE);
    let journal = io.journal.ok_or_else(|| Error::Other(format!("channel \"{}\": no journal", channel.name)))?;
    let api = Api {
        http: HttpClient::default(),
        base: format!("{api_base}/bot{token}"),
        file_base: format!("{api_base}/file/bot{token}"),
        channel: channel.name.clone(),
    };
    let limits = MediaLimits::from_settings(&channel.settings.values);
    let media_dir = io.home.join("media").join(&channel.name);
    let fetch = inbound::Fetch {
        api: api.clone(),
        dir: media_dir.clone(),
        limits,
        keeper: uploads::Keeper::new(channel, Some(&io.home)),
    };
    let stop = io.stop.clone();
    let offset = Arc::new(Mutex::new(OffsetKeeper::new(io.home.join(format!("{}-offset.json", channel.name)))));
    let poller = Poller {
        fetch,
        api: api.clone(),
        inbound: io.inbound,
        stop: io.stop,
        journal: journal.clone(),
        probe: io.probe.clone(),
        offset: offset.clone(),
    };
    io.supervisor.spawn(format!("tg-poll-{}", channel.name), move || poller.run())?;
    {
        let (dir, name) = (media_dir.clone(), channel.name.clone());
        io.supervisor.spawn(format!("tg-media-{}", channel.name), move || {
            inbound::sweep_loop(&dir, limits.retention, &stop, &name)
        })?;
    }
    let files = OutboundFiles { roots: vec![channel.cwd.clone(), media_dir], max_bytes: limits.max_bytes };
    let courier = Arc::new(send::TelegramCourier { api, files });
    let settle = outbox::Settle { channel: channel.name.clone(), journal: Some(journal), probe: io.probe };
    let outbox = outbox::spawn(courier, settle, &io.supervisor)?;
    let guard: Box<dyn Send> = Box::new(OffsetFlush { keeper: offset, channel: channel.name.clone() });
    Ok(RunningChannel { guard: Some(guard), ..RunningChannel::delivering(outbox) })
}

/// The offset as polled and as last written to the file; shared by the poll thread and the
/// channel's [`OffsetFlush`].
struct OffsetKeeper {
    path: PathBuf,
    bot_id: i64,
    current: i64,
    saved: i64,
    saved_at: Option<Instant>,
}

impl OffsetKeeper {
    /// Before the bot is known (`getMe`) nothing moves and nothing is written.
    fn new(path: PathBuf) -> OffsetKeeper {
        OffsetKeeper { path, bot_id: 0, current: 0, saved: 0, saved_at: None }
    }

    /// The bot and the offset the file had for it.
    fn start(&mut self, bot_id: i64, offset: i64) {
        (self.bot_id, self.current, self.saved, self.saved_at) = (bot_id, offset, offset, None);
    }

    /// Take the next offset; write it when due ([`lazy_save_due`]).
    fn moved(&mut self, next: i64, now: Instant, target: &str) {
        self.current = next;
        if self.current != self.saved && lazy_save_due(self.saved_at, now) {
            self.save(now, target);
        }
    }

    /// Write the offset if the file is behind (at stop).
    fn flush(&mut self, target: &str) {
        if self.current != self.saved {
            self.save(Instant::now(), target);
        }
    }

    fn save(&mut self, now: Instant, target: &str) {
        match save_offset(&self.path, self.bot_id, self.current) {
            Ok(()) => self.saved = self.current,
            // Not fatal: the journal knows these messages if Telegram sends them again.
            Err(e) => log::warn!(target: target, "{e}"),
        }
        self.saved_at = Some(now);
    }
}

/// The channel's guard ([`RunningChannel::guard`]): dropped when the channel stops (a clean
/// stop or a reload), it writes the offset the poll thread took last, since that thread may
/// be inside a long poll the stop cannot interrupt.
struct OffsetFlush {
    keeper: Arc<Mutex<OffsetKeeper>>,
    channel: String,
}

impl Drop for OffsetFlush {
    fn drop(&mut self) {
        self.keeper.lock().unwrap_or_else(PoisonError::into_inner).flush(&self.channel);
    }
}

/// Wait `delay` unless asked to stop; true when the loop should end.
fn pause(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// The delay a failure asks for: Telegram's own `retry_after`, backoff for the rest (a
/// rejected token does not come here: it parks the channel).
fn failure_delay(failure: &Failure, backoff: &mut Backoff) -> Duration {
    match failure {
        Failure::RateLimited(d) => *d,
        _ => backoff.next_delay(),
    }
}

/// A failure as a person should read it in the log and in `tether status`.
fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Conflict(d) => format!(
            "conflict (409): another program is polling this bot token, or a webhook is set ({d}). \
             Stop the other bot process using this token; tether deletes webhooks at start"
        ),
        other => other.to_string(),
    }
}

struct Poller {
    api: Api,
    /// Downloads the files of new messages before they are journaled.
    fetch: inbound::Fetch,
    inbound: Sender<Inbound>,
    stop: Receiver<()>,
    journal: Arc<Journal>,
    probe: Probe,
    offset: Arc<Mutex<OffsetKeeper>>,
}

impl Poller {
    fn target(&self) -> &str {
        self.api.channel.as_str()
    }

    fn run(self) {
        let Some(bot) = self.connect() else { return };
        let offset = {
            let mut keeper = self.keeper();
            let offset = load_offset(&keeper.path, bot.id);
            keeper.start(bot.id, offset);
            offset
        };
        if offset > 0 {
            log::info!(target: self.target(), "resuming after update {}", offset - 1);
        }
        self.poll(&bot);
        self.keeper().flush(self.target());
    }

    fn keeper(&self) -> MutexGuard<'_, OffsetKeeper> {
        self.offset.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `getUpdates` until stopped or parked.
    fn poll(&self, bot: &BotIdentity) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            if stopped(&self.stop) {
                return;
            }
            let offset = self.keeper().current;
            let body = wire::get_updates(offset, POLL_HOLD);
            match self.api.call_json("getUpdates", &body, POLL_HOLD + POLL_MARGIN, wire::parse_reply) {
                Ok(result) => {
                    if backoff.attempts() > 0 {
                        log::info!(target: self.target(), "polling again after {} failed attempts", backoff.attempts());
                    }
                    self.probe.ok();
                    match self.take(&result, offset, bot) {
                        Ok(next) => {
                            backoff.reset();
                            self.keeper().moved(next, Instant::now(), self.target());
                        }
                        Err(e) => {
                            // Telegram keeps the updates until the offset moves: nothing is lost.
                            let error = format!("cannot write the journal {}: {e}", self.journal.path().display());
                            if self.probe.failed(&error) {
                                log::error!(target: self.target(), "{error}; not taking messages until it can");
                            }
                            if pause(&self.stop, backoff.next_delay()) {
                                return;
                            }
                        }
                    }
                }
                Err(Failure::Unauthorized(d)) => return self.park(&d),
                Err(failure) => {
                    self.report(&format!("getUpdates failed: {}", describe(&failure)));
                    if pause(&self.stop, failure_delay(&failure, &mut backoff)) {
                        return;
                    }
                }
            }
        }
    }

    /// `getMe` until it answers, then delete any webhook (once); `None` when stopped or parked.
    fn connect(&self) -> Option<BotIdentity> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let bot = loop {
            match self.api.call("getMe", &json!({}), Duration::from_secs(30)) {
                Ok(result) => match wire::parse_identity(&result) {
                    Some(bot) => break bot,
                    None => self.report(&format!("getMe answered without id and username: {result}")),
                },
                Err(Failure::Unauthorized(d)) => {
                    self.park(&d);
                    return None;
                }
                Err(failure) => self.report(&format!("getMe failed: {}", describe(&failure))),
            }
            if pause(&self.stop, backoff.next_delay()) {
                return None;
            }
        };
        log::info!(target: self.target(), "connected as @{} ({})", bot.username, bot.id);
        self.probe.ok();
        // A webhook makes getUpdates fail with 409; keep the updates it holds.
        match self.api.call("deleteWebhook", &json!({"drop_pending_updates": false}), Duration::from_secs(30)) {
            Ok(_) => log::debug!(target: self.target(), "deleteWebhook: no webhook is set now"),
            Err(failure) => log::warn!(target: self.target(), "deleteWebhook failed: {}", describe(&failure)),
        }
        Some(bot)
    }

    /// Log a failure: a warning for the first of a streak (or a new error), detail after.
    fn report(&self, error: &str) {
        self.probe.report(self.target(), error);
    }

    /// A rejected token will not fix itself: say so once and wait to be stopped.
    fn park(&self, detail: &str) {
        let reason = format!(
            "Telegram rejected the bot token ({detail}); fix \"token\" of channel \"{}\" in the config, \
             then reload (kill -HUP) or restart. Not retrying",
            self.api.channel
        );
        log::error!(target: self.target(), "{reason}");
        self.probe.park(&reason);
        while !pause(&self.stop, PARKED_CHECK) {}
    }

    /// Journal one batch, then pass the new messages on; returns the next offset (the caller
    /// keeps it). On a journal error nothing moves.
    fn take(&self, result: &Value, offset: i64, bot: &BotIdentity) -> std::io::Result<i64> {
        let (last_id, messages) = wire::parse_updates_with_media(result, &self.api.channel, bot);
        // Files are fetched before the journal and the offset move (a crash meanwhile loses
        // nothing: Telegram sends the update again), within a budget per batch so a slow
        // download cannot hold the poller for long; a file not fetched is named in the text.
        let budget = std::time::Instant::now() + inbound::BATCH_BUDGET;
        let messages: Vec<_> =
            messages.into_iter().filter_map(|(message, files)| self.fetch.attach(message, files, budget)).collect();
        let now = wall_ms();
        let entries = messages
            .into_iter()
            .map(|message| JournalEntry { sent_at_ms: message.sent_at_ms.unwrap_or(now), message })
            .collect();
        let fresh = self.journal.record(entries)?;
        let next = last_id.map_or(offset, |id| id + 1);
        for message in fresh {
            log::debug!(target: self.target(), "message {:?} from {} in {}", message.message_id, message.sender_id, message.chat_id);
            if self.inbound.send(Inbound::Message(message)).is_err() {
                return Ok(next); // The daemon is gone; the journal replays these at the next start.
            }
        }
        // Button presses are answers to a question of a running turn: not journaled (after a
        // restart the question is gone).
        for press in wire::parse_button_presses(result, &self.api.channel) {
            log::debug!(target: self.target(), "button {:?} pressed by {} in {}", press.data, press.sender_id, press.chat_id);
            if self.inbound.send(Inbound::Button(press)).is_err() {
                break;
            }
        }
        Ok(next)
    }
}

/// The saved offset for this bot (an offset of another bot would skip this one's updates).
fn load_offset(path: &Path, bot_id: i64) -> i64 {
    let Ok(text) = std::fs::read_to_string(path) else { return 0 };
    let Ok(saved) = serde_json::from_slice::<Value>(text.as_bytes()) else {
        log::warn!(target: "telegram", "{} is not valid JSON; starting from Telegram's oldest kept update", path.display());
        return 0;
    };
    match (saved.get("botId").and_then(Value::as_i64), saved.get("offset").and_then(Value::as_i64)) {
        (Some(id), Some(offset)) if id == bot_id && offset >= 0 => offset,
        _ => 0,
    }
}

fn save_offset(path: &Path, bot_id: i64, offset: i64) -> Result<(), Error> {
    crate::store::write_json_atomic(path, &json!({"botId": bot_id, "offset": offset}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keeper_writes_the_first_move_and_the_last_one_at_stop() {
        let dir = std::env::temp_dir().join(format!("tether-offset-keeper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phone-offset.json");
        let mut keeper = OffsetKeeper::new(path.clone());
        keeper.start(42, 0);
        let t0 = Instant::now();
        keeper.moved(0, t0, "test");
        assert!(!path.exists(), "an offset that did not move is not written");
        keeper.moved(1001, t0, "test");
        assert_eq!(load_offset(&path, 42), 1001);
        keeper.moved(1005, t0 + Duration::from_secs(1), "test");
        assert_eq!(load_offset(&path, 42), 1001, "not yet due");
        keeper.moved(1007, t0 + crate::adapters::LAZY_SAVE_EVERY, "test");
        assert_eq!(load_offset(&path, 42), 1007);
        keeper.moved(1009, t0 + crate::adapters::LAZY_SAVE_EVERY, "test");
        keeper.flush("test");
        assert_eq!(load_offset(&path, 42), 1009, "written at stop");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn offsets_are_kept_per_bot() {
        let dir = std::env::temp_dir().join(format!("tether-offset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("phone-offset.json");
        assert_eq!(load_offset(&path, 42), 0);
        save_offset(&path, 42, 1001).unwrap();
        assert_eq!(load_offset(&path, 42), 1001);
        // Another bot (the token changed): its updates are numbered apart; start over.
        assert_eq!(load_offset(&path, 43), 0);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load_offset(&path, 42), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn parse_channel(extra: &str) -> Result<MediaLimits, String> {
        let text = format!(r#"{{"channels": {{"phone": {{"type": "telegram", "token": "1:a"{extra}}}}}}}"#);
        let cx = crate::config::ParseContext {
            path: Path::new("/c.json"),
            cwd: Path::new("/w"),
            home: None,
            env: &|_| None,
            platforms: crate::adapters::PLATFORMS,
        };
        let config = crate::config::parse(&text, &cx).map_err(|e| e.to_string())?;
        let channel = config.channels.get("phone").ok_or("no channel")?;
        Ok(MediaLimits::from_settings(&channel.settings.values))
    }

    #[test]
    fn media_keys_have_defaults_and_precise_errors() {
        assert_eq!(parse_channel(""), Ok(MediaLimits::default()));
        assert_eq!(
            parse_channel(r#", "maxMediaBytes": 1000, "mediaRetention": "2h""#),
            Ok(MediaLimits { max_bytes: 1000, retention: Duration::from_secs(7200) })
        );
        let err = parse_channel(r#", "maxMediaBytes": "big""#).unwrap_err();
        assert!(err.contains("maxMediaBytes") && err.contains("phone"), "{err}");
        let err = parse_channel(r#", "mediaRetention": "soon""#).unwrap_err();
        assert!(err.contains("mediaRetention") && err.contains("24h"), "{err}");
    }

    #[test]
    fn a_conflict_says_who_holds_the_token() {
        let text = describe(&Failure::Conflict("Conflict: terminated by other getUpdates request".into()));
        assert!(text.contains("another program is polling this bot token, or a webhook is set"), "{text}");
        assert_eq!(describe(&Failure::Transient("HTTP 502: Bad Gateway".into())), "HTTP 502: Bad Gateway");
    }
}
