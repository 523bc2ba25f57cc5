//! From gateway dispatches to our events: the bot's id from READY, MESSAGE_CREATE and button
//! clicks decoded, a thread's parent channel looked up (so `groups` keyed by channel ids
//! apply to its threads), attachments downloaded, and nothing lost across a lost session:
//! after one, the next READY fetches the messages posted meanwhile in every channel the bot
//! was talking in (`after` the last one seen) and hands on the ones not seen before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::link::LinkEvent;
use super::rest::Rest;
use super::wire::{self, Incoming, OwnMessages, RestFailure};
use crate::event::{Attachment, AttachmentKind, ButtonPress};
use crate::store;

/// Channels remembered for gap recovery, and thread parents cached.
const MAX_CHANNELS: usize = 256;

/// Message ids remembered to hand each message on once.
const MAX_SEEN: usize = 4096;
/// Pages of 100 fetched per channel after a gap.
const MAX_PAGES: usize = 5;
/// Largest attachment downloaded (Discord's default upload limit is 10 MiB).
pub(super) const MAX_ATTACHMENT: u64 = 25 * 1024 * 1024;

/// What the dispatcher hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Message(Incoming),
    Button(ButtonPress),
}

/// Ids of messages the bot sent, shared by the sender (writes) and the decoder (reads), so a
/// reply to one of them is recognised even when Discord does not include the replied message.
#[derive(Debug, Default)]
pub struct SentIds(Mutex<BoundedSet>);

impl SentIds {
    pub fn remember(&self, id: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_string());
    }
}

impl OwnMessages for SentIds {
    fn sent_by_bot(&self, message_id: &str) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(message_id)
    }
}

/// A set that forgets its oldest entries past [`MAX_SEEN`].
#[derive(Debug, Default)]
pub struct BoundedSet {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl BoundedSet {
    /// False when it was already there.
    pub fn insert(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() >= MAX_SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

pub struct Dispatcher {
    channel: String,
    rest: Arc<Rest>,
    sent: Arc<SentIds>,
    media_dir: PathBuf,
    bot_id: Option<String>,
    /// Discord channel (thread) id → the newest message id seen there.
    talked: HashMap<String, String>,
    /// Discord channel id → its server and channel type, as live messages gave them.
    context: HashMap<String, (Option<String>, Option<u64>)>,
    talked_order: VecDeque<String>,
    seen: BoundedSet,
    /// Channel id → (type, parent), for threads.
    channels: HashMap<String, (u64, Option<String>)>,
    recover: bool,
    /// Where `talked` is kept across restarts, and the bot it was saved for.
    state_path: Option<PathBuf>,
    saved_bot: Option<String>,
    /// `talked` changed since the file was written.
    unsaved: bool,
    /// When the file was last written in this run.
    saved_at: Option<Instant>,
}

impl Dispatcher {
    pub fn new(channel: &str, rest: Arc<Rest>, sent: Arc<SentIds>, media_dir: PathBuf) -> Dispatcher {
        Dispatcher {
            channel: channel.to_string(),
            rest,
            sent,
            media_dir,
            bot_id: None,
            talked: HashMap::new(),
            context: HashMap::new(),
            talked_order: VecDeque::new(),
            seen: BoundedSet::default(),
            channels: HashMap::new(),
            recover: false,
            state_path: None,
            saved_bot: None,
            unsaved: false,
            saved_at: None,
        }
    }

    /// Keep the channels being talked in at `path`, so that the first READY after a restart
    /// fetches what was posted there while tether was stopped.
    pub fn with_state(mut self, path: PathBuf) -> Dispatcher {
        match store::read_json::<Value>(&path) {
            Ok(Some(saved)) => {
                self.saved_bot = saved.get("botId").and_then(Value::as_str).map(str::to_string);
                for entry in saved.get("channels").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                    let (Some(id), Some(last)) =
                        (entry.get("id").and_then(Value::as_str), entry.get("last").and_then(Value::as_str))
                    else {
                        continue;
                    };
                    self.note_talked(id, last);
                    let guild = entry.get("guild").and_then(Value::as_str).map(str::to_string);
                    self.context.insert(id.to_string(), (guild, entry.get("type").and_then(Value::as_u64)));
                }
                self.recover = !self.talked.is_empty();
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!(target: self.channel.as_str(), "{e}; messages posted while tether was stopped are not fetched")
            }
        }
        self.state_path = Some(path);
        self
    }

    /// When the state file should be written next (`None`: nothing to write): the first
    /// change of a run at once, then as [`crate::adapters::lazy_save_due`] says. Lazy is safe: after a
    /// crash a stale file makes the next start fetch again messages that were already taken,
    /// and the journal recognises those; it is written only after the messages it covers were
    /// journaled, so none it skips can be missing. Writing it per message cost two disk flushes.
    pub fn save_due(&self) -> Option<Instant> {
        if !self.unsaved {
            return None;
        }
        Some(self.saved_at.map_or_else(Instant::now, |at| at + crate::adapters::LAZY_SAVE_EVERY))
    }

    /// Write the state file if it is behind and due at `now` (or `force`d, at the end).
    pub fn save_if_due(&mut self, now: Instant, force: bool) {
        if self.unsaved && (force || crate::adapters::lazy_save_due(self.saved_at, now)) {
            self.save();
            self.unsaved = false;
            self.saved_at = Some(now);
        }
    }

    fn save(&self) {
        let (Some(path), Some(bot)) = (&self.state_path, &self.bot_id) else { return };
        let channels: Vec<Value> = self
            .talked_order
            .iter()
            .filter_map(|id| {
                let last = self.talked.get(id)?;
                let (guild, kind) = self.context.get(id).cloned().unwrap_or_default();
                Some(json!({"id": id, "last": last, "guild": guild, "type": kind}))
            })
            .collect();
        if let Err(e) = store::write_json_atomic(path, &json!({"botId": bot, "channels": channels})) {
            log::warn!(target: self.channel.as_str(), "{e}");
        }
    }

    /// Handle one event of the gateway link.
    pub fn on_event(&mut self, event: &LinkEvent, deliver: &mut dyn FnMut(Delivery)) {
        match event {
            LinkEvent::SessionLost => self.recover = true,
            LinkEvent::Dispatch { name, data } => self.on_dispatch(name, data, deliver),
            LinkEvent::Health { .. } | LinkEvent::Alive | LinkEvent::Parked(_) => {}
        }
    }

    fn on_dispatch(&mut self, name: &str, data: &Value, deliver: &mut dyn FnMut(Delivery)) {
        match name {
            "READY" => {
                if let Some(ready) = wire::parse_ready(data) {
                    log::info!(target: self.channel.as_str(), "connected to Discord as {} ({})", ready.username, ready.user_id);
                    if self.saved_bot.take().is_some_and(|saved| saved != ready.user_id) {
                        // Saved for another bot (the token changed): its channels are not ours.
                        self.talked.clear();
                        self.talked_order.clear();
                        self.context.clear();
                    }
                    self.bot_id = Some(ready.user_id);
                }
                if std::mem::take(&mut self.recover) {
                    self.recover_gap(deliver);
                }
            }
            "MESSAGE_CREATE" => {
                let Some(bot_id) = self.bot_id.clone() else { return };
                if let Some(incoming) = decode_contained(&self.channel, data, || {
                    wire::parse_message(data, &self.channel, &bot_id, &*self.sent)
                }) {
                    self.hand_on(incoming, deliver);
                }
            }
            "INTERACTION_CREATE" => {
                if let Some(press) = decode_contained(&self.channel, data, || wire::parse_button(data, &self.channel)) {
                    deliver(Delivery::Button(press));
                }
            }
            _ => {}
        }
    }

    /// Dedup, remember for gap recovery, resolve the thread parent, fetch files, deliver.
    fn hand_on(&mut self, mut incoming: Incoming, deliver: &mut dyn FnMut(Delivery)) {
        let Some(id) = incoming.message.message_id.clone() else { return };
        if !self.seen.insert(id.clone()) {
            return;
        }
        let discord_channel = incoming.message.chat_id.clone();
        self.note_talked(&discord_channel, &id);
        if incoming.guild_id.is_some() || incoming.channel_type.is_some() {
            self.context.insert(discord_channel.clone(), (incoming.guild_id.clone(), incoming.channel_type));
        }
        let in_thread = match incoming.in_thread {
            Some(known) => known,
            None => self.channel_info(&discord_channel).is_some_and(|(kind, _)| matches!(kind, 10..=12)),
        };
        if in_thread {
            incoming.message.thread_id = Some(discord_channel.clone());
            // `groups` name channels: a thread follows its parent's entry.
            if let Some((_, Some(parent))) = self.channel_info(&discord_channel) {
                incoming.message.chat_id = parent;
            }
        }
        for remote in std::mem::take(&mut incoming.attachments) {
            match self.download(&remote, &id) {
                Ok(path) => incoming.message.attachments.push(Attachment {
                    kind: kind_of(&remote.content_type),
                    path,
                    file_name: remote.file_name.clone(),
                    mime_type: remote.content_type.clone(),
                }),
                Err(e) => {
                    log::warn!(target: self.channel.as_str(), "attachment {:?} of message {id} not saved: {e}", remote.file_name)
                }
            }
        }
        if !incoming.message.text.is_empty() || !incoming.message.attachments.is_empty() {
            deliver(Delivery::Message(incoming));
        }
        // Only now, with the message journaled: the file says "seen up to here".
        self.unsaved = true;
        self.save_if_due(Instant::now(), false);
    }

    fn note_talked(&mut self, discord_channel: &str, id: &str) {
        match self.talked.get_mut(discord_channel) {
            Some(last) => {
                if wire::snowflake_newer(id, last) {
                    *last = id.to_string();
                }
            }
            None => {
                if self.talked_order.len() >= MAX_CHANNELS
                    && let Some(old) = self.talked_order.pop_front()
                {
                    self.talked.remove(&old);
                    self.context.remove(&old);
                }
                self.talked.insert(discord_channel.to_string(), id.to_string());
                self.talked_order.push_back(discord_channel.to_string());
            }
        }
    }

    /// A channel's type and parent, cached; `None` when Discord could not be asked.
    fn channel_info(&mut self, channel_id: &str) -> Option<(u64, Option<String>)> {
        if let Some(info) = self.channels.get(channel_id) {
            return Some(info.clone());
        }
        match self.rest.channel_info(channel_id) {
            Ok(info) => {
                if self.channels.len() >= MAX_CHANNELS {
                    self.channels.clear();
                }
                self.channels.insert(channel_id.to_string(), info.clone());
                Some(info)
            }
            Err(e) => {
                log::warn!(target: self.channel.as_str(), "cannot look up channel {channel_id}: {e}; if it is a thread, its own id is used for `groups`");
                None
            }
        }
    }

    /// After a lost session: every channel we were talking in, from its last seen message on.
    fn recover_gap(&mut self, deliver: &mut dyn FnMut(Delivery)) {
        let Some(bot_id) = self.bot_id.clone() else { return };
        let channels: Vec<(String, String)> = self.talked.iter().map(|(c, m)| (c.clone(), m.clone())).collect();
        let mut found = 0;
        for (discord_channel, mut after) in channels {
            for _ in 0..MAX_PAGES {
                let page = match self.fetch_after(&discord_channel, &after) {
                    Ok(page) => page,
                    Err(e) => {
                        log::warn!(target: self.channel.as_str(), "cannot fetch the messages missed in {discord_channel}: {e}");
                        break;
                    }
                };
                let full = page.len() >= 100;
                let (guild_id, channel_type) = self.context.get(&discord_channel).cloned().unwrap_or_default();
                for mut message in page {
                    if let Some(id) = message.get("id").and_then(Value::as_str)
                        && wire::snowflake_newer(id, &after)
                    {
                        after = id.to_string();
                    }
                    // REST messages carry neither `guild_id` nor `channel_type`: without them
                    // a server message would pass for a DM (and skip the mention rule).
                    if let Some(map) = message.as_object_mut() {
                        if let Some(guild) = &guild_id {
                            map.entry("guild_id").or_insert_with(|| Value::String(guild.clone()));
                        }
                        if let Some(kind) = channel_type {
                            map.entry("channel_type").or_insert_with(|| Value::from(kind));
                        }
                    }
                    let message = &message;
                    if let Some(incoming) = decode_contained(&self.channel, message, || {
                        wire::parse_message(message, &self.channel, &bot_id, &*self.sent)
                    }) {
                        found += 1;
                        self.hand_on(incoming, deliver);
                    }
                }
                if !full {
                    break;
                }
            }
        }
        log::info!(target: self.channel.as_str(), "fetched {found} message(s) posted while the gateway was not delivering");
    }

    fn fetch_after(&self, discord_channel: &str, after: &str) -> Result<Vec<Value>, RestFailure> {
        for _ in 0..3 {
            match self.rest.messages_after(discord_channel, after) {
                Err(RestFailure::RateLimited(d) | RestFailure::GlobalRateLimited(d)) => {
                    std::thread::sleep(d.min(Duration::from_secs(10)))
                }
                other => return other,
            }
        }
        self.rest.messages_after(discord_channel, after)
    }

    fn download(&self, remote: &wire::RemoteAttachment, message_id: &str) -> Result<PathBuf, String> {
        if remote.size > MAX_ATTACHMENT {
            return Err(format!("{} bytes is over the {} MiB limit", remote.size, MAX_ATTACHMENT / 1024 / 1024));
        }
        let bytes = self.rest.download(&remote.url, MAX_ATTACHMENT)?;
        std::fs::create_dir_all(&self.media_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.media_dir.display()))?;
        let path = self.media_dir.join(format!("{message_id}-{}", safe_file_name(&remote.file_name)));
        write_file(&path, &bytes)?;
        Ok(path)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A file name that stays inside the media folder: no separators, no leading dots, bounded.
fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(100)
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() { "file".to_string() } else { cleaned.to_string() }
}

fn kind_of(content_type: &str) -> AttachmentKind {
    match content_type.split('/').next().unwrap_or_default() {
        "image" => AttachmentKind::Image,
        "audio" => AttachmentKind::Audio,
        "video" => AttachmentKind::Video,
        _ => AttachmentKind::File,
    }
}

/// Decode inside `catch_unwind`: a payload that makes the decoder panic is skipped, never
/// the end of the gateway thread. It is known by its id (a message fetched again after a
/// restart has the one it had on the gateway).
fn decode_contained<T>(channel: &str, data: &Value, decode: impl FnOnce() -> Option<T>) -> Option<T> {
    let id = data.get("id").and_then(Value::as_str).unwrap_or_default();
    let input = crate::adapters::Fingerprint::of(&[channel.as_bytes(), id.as_bytes()]);
    crate::adapters::contain(input, decode).unwrap_or_else(|| {
        log::error!("a Discord event could not be decoded (the decoder panicked); skipped");
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_in_the_folder() {
        for (name, safe) in [
            ("shot.png", "shot.png"),
            ("../../etc/passwd", "_.._etc_passwd"),
            ("..", "file"),
            ("a b/c", "a_b_c"),
            ("", "file"),
        ] {
            assert_eq!(safe_file_name(name), safe, "{name}");
        }
    }

    #[test]
    fn bounded_sets_forget_the_oldest() {
        let mut set = BoundedSet::default();
        assert!(set.insert("a".into()));
        assert!(!set.insert("a".into()));
        for n in 0..MAX_SEEN {
            set.insert(n.to_string());
        }
        assert!(!set.contains("a"));
        assert!(set.contains(&(MAX_SEEN - 1).to_string()));
        assert_eq!(set.order.len(), MAX_SEEN);
    }
}
