//! DM pairing and the access step of the core: the pending requests and approved users of
//! each channel (loaded from and saved to files by the daemon; pure here), the pairing
//! codes, and what a message that the gate did not simply pass gets back.
//!
//! Rules (Qwen Code's, with our fixes): a code is 8 symbols of
//! [`CODE_ALPHABET`], lives one hour, at most [`MAX_PENDING`] live per channel; the same
//! sender keeps the same code; the bot answers a pending sender at most once an hour; codes
//! go to direct chats only. Time is wall-clock epoch milliseconds (`createdAt` is persisted),
//! given by the caller; randomness comes from an injectable source.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Action;
use super::gate::{self, Verdict};
use crate::config::ChannelConfig;
use crate::event::{ChatRef, InboundMessage, Outbound};
use crate::vec_map::VecMap;

/// 32 symbols without 0, O, 1 and I, which people misread.
pub const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
pub const CODE_LENGTH: usize = 8;
/// A request is live while `now - createdAt` is less than this.
pub const CODE_LIFETIME_MS: u64 = 60 * 60 * 1000;
/// Live requests per channel; more senders get nothing until one is approved or expires.
pub const MAX_PENDING: usize = 3;
/// The bot answers a pending (or denied) sender at most once per this interval.
pub const REPLY_INTERVAL_MS: u64 = 60 * 60 * 1000;
/// Sender names are shown to the operator's terminal: cap them.
const NAME_LIMIT: usize = 64;

/// One pending request, as stored in `<channel>-pairing.json`: Qwen Code's shape, plus the
/// chat to tell "you're paired" in (absent in files Qwen Code wrote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairingRequest {
    pub sender_id: String,
    pub sender_name: String,
    pub code: String,
    /// Epoch milliseconds.
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// What asks to be approved when it is not the sender: a group under
    /// `groupPolicy: pairing` (Qwen Code's later `subject` field). `None`: the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
}

/// The group a request is for, in Qwen Code's shape `{"type": "group", "id", "name"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "type")]
    pub kind: SubjectKind,
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    User,
    Group,
}

impl PairingRequest {
    /// The group this request asks approval for, if it is a group's request.
    pub fn group(&self) -> Option<&str> {
        self.subject.as_ref().filter(|s| s.kind == SubjectKind::Group).map(|s| s.id.as_str())
    }

    /// Who or what is to be approved: one live request each.
    fn asker(&self) -> (bool, &str) {
        match self.group() {
            Some(group) => (true, group),
            None => (false, self.sender_id.as_str()),
        }
    }

    /// Live: younger than an hour (and not stamped more than an hour ahead, after a clock step).
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.created_at) < CODE_LIFETIME_MS
            && self.created_at.saturating_sub(now_ms) < CODE_LIFETIME_MS
    }
}

/// The code for 8 random bytes: each byte picks a symbol (256 is a multiple of 32: no bias).
pub fn code_from_bytes(bytes: [u8; CODE_LENGTH]) -> String {
    bytes.iter().map(|b| char::from(CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()])).collect()
}

/// A code as typed by the operator: surrounding space ignored, any case.
pub fn normalize_code(typed: &str) -> String {
    typed.trim().to_ascii_uppercase()
}

/// A display name safe to print in a terminal and a log: control and invisible format
/// characters become spaces, at most 64 characters, `unknown` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c.is_control() || is_invisible_format(c) { ' ' } else { c }).take(NAME_LIMIT).collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() { "unknown".to_string() } else { cleaned }
}

/// Bidi overrides and isolates, zero-width characters and line separators: they can make
/// a terminal line read differently from what it holds.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// What [`PairingBook::ask`] decided for an unknown sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A new request: send its code, save it.
    Created(PairingRequest),
    /// The sender has a live request; `remind` when the last answer is an hour old.
    Pending { code: String, remind: bool },
    /// The sender was answered within the hour and has no live request (denied, or
    /// revoked): nothing.
    Quiet,
    /// [`MAX_PENDING`] requests are live: nothing.
    Full,
    /// No randomness to make a code from (logged).
    NoEntropy,
}

/// The pairing state of one channel.
#[derive(Debug, Clone, Default)]
pub struct PairingBook {
    pending: Vec<PairingRequest>,
    approved: Vec<String>,
    /// Approved group chat ids (`<channel>-groups.json`).
    approved_groups: Vec<String>,
    /// When the bot last answered each unknown sender (epoch ms); in memory only.
    last_reply: HashMap<String, u64>,
}

impl PairingBook {
    /// A book as read from the files. Requests are taken as answered when they were made.
    pub fn new(pending: Vec<PairingRequest>, approved: Vec<String>) -> PairingBook {
        let mut book = PairingBook::default();
        book.replace(pending, approved);
        book
    }

    /// The same book with these approved groups.
    pub fn with_groups(mut self, groups: Vec<String>) -> PairingBook {
        self.set_approved_groups(groups);
        self
    }

    pub fn approved_groups(&self) -> &[String] {
        &self.approved_groups
    }

    pub fn is_group_approved(&self, chat_id: &str) -> bool {
        self.approved_groups.iter().any(|g| g == chat_id)
    }

    /// Take the approved groups the file holds (duplicates dropped).
    pub fn set_approved_groups(&mut self, groups: Vec<String>) {
        self.approved_groups.clear();
        for id in groups {
            if !self.approved_groups.contains(&id) {
                self.approved_groups.push(id);
            }
        }
    }

    /// A group under `groupPolicy: pairing` was addressed by someone who may use the bot:
    /// find or make its request. Nothing is ever said in the group: the code is for the
    /// operator's eyes (log, `tether pairing list`, admin page).
    pub fn ask_group(
        &mut self,
        chat_id: &str,
        sender_id: &str,
        sender_name: &str,
        now_ms: u64,
        random: &mut dyn FnMut() -> Option<[u8; CODE_LENGTH]>,
    ) -> Ask {
        self.drop_expired(now_ms);
        if let Some(request) = self.pending.iter().find(|r| r.group() == Some(chat_id)) {
            return Ask::Pending { code: request.code.clone(), remind: false };
        }
        let subject = Subject { kind: SubjectKind::Group, id: chat_id.to_string(), name: clean_name(chat_id) };
        self.open_request(sender_id, sender_name, chat_id, Some(subject), now_ms, random)
    }

    /// Every request held, expired ones included until the next write drops them.
    pub fn pending(&self) -> &[PairingRequest] {
        &self.pending
    }

    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = &PairingRequest> {
        self.pending.iter().filter(move |r| r.is_live(now_ms))
    }

    pub fn approved(&self) -> &[String] {
        &self.approved
    }

    pub fn is_approved(&self, sender_id: &str) -> bool {
        self.approved.iter().any(|a| a == sender_id)
    }

    /// Forget expired requests; true when any was dropped.
    pub fn drop_expired(&mut self, now_ms: u64) -> bool {
        let before = self.pending.len();
        self.pending.retain(|r| r.is_live(now_ms));
        self.pending.len() != before
    }

    /// An unknown sender wrote in a direct chat: find or make their request.
    /// `random` is called only when a new code is needed.
    pub fn ask(
        &mut self,
        sender_id: &str,
        sender_name: &str,
        chat_id: &str,
        now_ms: u64,
        random: &mut dyn FnMut() -> Option<[u8; CODE_LENGTH]>,
    ) -> Ask {
        self.drop_expired(now_ms);
        self.last_reply.retain(|_, at| now_ms.saturating_sub(*at) < REPLY_INTERVAL_MS);
        let answered_recently = self.last_reply.contains_key(sender_id);
        if let Some(request) = self.pending.iter().find(|r| r.asker() == (false, sender_id)) {
            let code = request.code.clone();
            if !answered_recently {
                self.last_reply.insert(sender_id.to_string(), now_ms);
            }
            return Ask::Pending { code, remind: !answered_recently };
        }
        if answered_recently {
            return Ask::Quiet;
        }
        let asked = self.open_request(sender_id, sender_name, chat_id, None, now_ms, random);
        if matches!(asked, Ask::Created(_)) {
            self.last_reply.insert(sender_id.to_string(), now_ms);
        }
        asked
    }

    /// A new request with a fresh code, unless the book is full or no randomness can be had.
    fn open_request(
        &mut self,
        sender_id: &str,
        sender_name: &str,
        chat_id: &str,
        subject: Option<Subject>,
        now_ms: u64,
        random: &mut dyn FnMut() -> Option<[u8; CODE_LENGTH]>,
    ) -> Ask {
        if self.pending.len() >= MAX_PENDING {
            return Ask::Full;
        }
        let Some(code) = self.new_code(random, now_ms) else { return Ask::NoEntropy };
        let request = PairingRequest {
            sender_id: sender_id.to_string(),
            sender_name: clean_name(sender_name),
            code,
            created_at: now_ms,
            chat_id: Some(chat_id.to_string()),
            subject,
        };
        self.pending.push(request.clone());
        Ask::Created(request)
    }

    /// A fresh code no live request has. A repeat is a 1 in 2^40 event; draw again rather than
    /// share it. `None` when no randomness could be had.
    fn new_code(&self, random: &mut dyn FnMut() -> Option<[u8; CODE_LENGTH]>, now_ms: u64) -> Option<String> {
        (0..4).find_map(|_| random().map(code_from_bytes).filter(|c| self.find_live(c, now_ms).is_none()))
    }

    fn find_live(&self, code: &str, now_ms: u64) -> Option<usize> {
        let code = normalize_code(code);
        self.pending.iter().position(|r| r.code == code && r.is_live(now_ms))
    }

    /// Approve the live request with `code` (any case): it leaves the pending list and its
    /// sender joins the approved list (once). `None` when no live request has that code.
    pub fn approve(&mut self, code: &str, now_ms: u64) -> Option<PairingRequest> {
        let request = self.pending.remove(self.find_live(code, now_ms)?);
        match request.group() {
            Some(group) if !self.is_group_approved(group) => self.approved_groups.push(group.to_string()),
            Some(_) => {}
            None if !self.is_approved(&request.sender_id) => self.approved.push(request.sender_id.clone()),
            None => {}
        }
        Some(request)
    }

    /// Refuse the live request with `code`: it is removed, nobody is approved.
    pub fn deny(&mut self, code: &str, now_ms: u64) -> Option<PairingRequest> {
        Some(self.pending.remove(self.find_live(code, now_ms)?))
    }

    /// Remove a user (or a group: its chat id) from the approved lists; false when neither
    /// held it.
    pub fn revoke(&mut self, id: &str) -> bool {
        let before = self.approved.len() + self.approved_groups.len();
        self.approved.retain(|a| a != id);
        self.approved_groups.retain(|g| g != id);
        self.approved.len() + self.approved_groups.len() != before
    }

    /// Add a request made elsewhere (the daemon merging the core's new request into the
    /// file). It replaces any older request of the same sender: the new code is the one
    /// they were sent. True when an older one was replaced.
    pub fn insert(&mut self, request: PairingRequest) -> bool {
        let before = self.pending.len();
        self.pending.retain(|r| r.asker() != request.asker());
        let replaced = self.pending.len() != before;
        self.pending.push(request);
        replaced
    }

    /// Take the state the files now hold (another process may have approved, denied or
    /// revoked). Returns the requests this book held that were approved meanwhile: gone from
    /// the pending list, their sender now approved. Both files must be read together (under
    /// their lock), or an approval seen half-done would be missed.
    pub fn replace(&mut self, pending: Vec<PairingRequest>, approved: Vec<String>) -> Vec<PairingRequest> {
        let newly_approved = self
            .pending
            .iter()
            .filter(|old| {
                let approved_now = match old.group() {
                    Some(group) => self.approved_groups.iter().any(|g| g == group),
                    None => approved.contains(&old.sender_id),
                };
                !pending.iter().any(|r| r.asker() == old.asker() && r.code == old.code) && approved_now
            })
            .cloned()
            .collect();
        for request in &pending {
            self.last_reply.entry(request.sender_id.clone()).or_insert(request.created_at);
        }
        self.pending = pending;
        let mut deduped: Vec<String> = Vec::with_capacity(approved.len());
        for id in approved {
            if !deduped.contains(&id) {
                deduped.push(id);
            }
        }
        self.approved = deduped;
        newly_approved
    }
}

/// The reply that carries a code.
pub fn code_text(channel: &str, code: &str) -> String {
    format!(
        "Your pairing code is: {code}\n\nAsk the bot operator to approve you with:\ntether pairing approve {channel} {code}"
    )
}

/// What `/start` says to someone who may use the bot.
pub const WELCOME_TEXT: &str = "Hi! You can talk to the agent here: send any message. /help lists the commands.";
/// Before the code, when the first thing an unknown sender sends is `/start`.
pub const WELCOME_STRANGER: &str = "Hi! This bot answers only people its operator has approved.";
/// Sent in the chat of a request when the operator approves it.
pub const PAIRED_TEXT: &str = "You're paired: you can talk to the agent here now. Send any message to start.";
/// Sent in a group when the operator approves it.
pub const GROUP_PAIRED_TEXT: &str =
    "This group is approved: people allowed to use the bot can mention it (or reply to it) to talk to the agent.";

/// What the gates decided about a message, for the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// On to local commands and routing.
    Go,
    /// An authorised sender's group message that does not address the bot: context only.
    Overheard,
    /// Dropped (any reply is already in the actions).
    No,
}

/// A channel's pairing files as read: pending requests, approved users, approved groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFilesState {
    pub pending: Vec<PairingRequest>,
    pub approved: Vec<String>,
    pub approved_groups: Vec<String>,
}

/// Randomness for codes; replaceable so tests are deterministic.
pub struct Entropy(Box<dyn FnMut() -> Option<[u8; CODE_LENGTH]> + Send>);

impl Entropy {
    pub fn new(source: impl FnMut() -> Option<[u8; CODE_LENGTH]> + Send + 'static) -> Entropy {
        Entropy(Box::new(source))
    }

    /// The operating system's CSPRNG.
    pub fn os() -> Entropy {
        Entropy::new(|| {
            let mut bytes = [0u8; CODE_LENGTH];
            getrandom::fill(&mut bytes).ok().map(|()| bytes)
        })
    }
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy")
    }
}

/// The access step of the core: every channel's pairing book, the wall clock and the
/// randomness it needs.
#[derive(Debug)]
pub struct Access {
    books: VecMap<String, PairingBook>,
    entropy: Entropy,
    wall_ms: u64,
}

impl Default for Access {
    fn default() -> Access {
        Access { books: VecMap::new(), entropy: Entropy::os(), wall_ms: 0 }
    }
}

impl Access {
    pub fn set_entropy(&mut self, entropy: Entropy) {
        self.entropy = entropy;
    }

    /// The current wall-clock time in epoch ms (pairing times are persisted, so `Instant`
    /// will not do). The daemon sets it before each event.
    pub fn set_wall_clock(&mut self, epoch_ms: u64) {
        self.wall_ms = epoch_ms;
    }

    #[cfg(test)]
    pub fn book(&self, channel: &str) -> Option<&PairingBook> {
        self.books.get(channel)
    }

    /// Live requests waiting in a channel's pairing file, as last read or written; for the
    /// service's `status.json`.
    pub fn live_requests(&self, channel: &str, now_ms: u64) -> usize {
        self.books.get(channel).map_or(0, |book| book.live(now_ms).count())
    }

    /// For `/status`: the sender policy, paired and pending counts under pairing, the
    /// group policy. E.g. `pairing (2 paired, 1 pending); groups: disabled`.
    pub fn summary(&self, channel: &ChannelConfig) -> String {
        let policy = gate::sender_policy_name(channel.sender_policy);
        let counts = match (channel.sender_policy, self.books.get(&channel.name)) {
            (crate::config::SenderPolicy::Pairing, Some(book)) => {
                format!(" ({} paired, {} pending)", book.approved().len(), book.live(self.wall_ms).count())
            }
            (crate::config::SenderPolicy::Pairing, None) => " (0 paired, 0 pending)".to_string(),
            _ => String::new(),
        };
        format!("{policy}{counts}; groups: {}", gate::group_policy_name(channel.group_policy))
    }

    /// What the pairing files say about a message's sender and chat.
    pub fn approvals(&self, channel: &str, sender_id: &str, chat_id: &str) -> gate::Approvals {
        self.books.get(channel).map_or_else(gate::Approvals::default, |book| gate::Approvals {
            sender: book.is_approved(sender_id),
            group: book.is_group_approved(chat_id),
        })
    }

    /// Run the gates on a message: whether it goes on to local commands and routing, is
    /// kept as group context only, or is dropped (possibly with a reply, a pairing code or a
    /// welcome, in `out`).
    pub fn admit(&mut self, channel: &ChannelConfig, m: &InboundMessage, out: &mut Vec<Action>) -> Admit {
        let target = channel.name.as_str();
        let approvals = self.approvals(&channel.name, &m.sender_id, &m.chat_id);
        let book = self.books.get_or_default(channel.name.clone());
        match gate::check(channel, m, approvals) {
            Verdict::Drop(reason) => {
                log::info!(target: target, "dropped message from {} in {}: {reason}", m.sender_id, m.chat_id);
                Admit::No
            }
            Verdict::Overheard => Admit::Overheard,
            Verdict::Pass
                if !m.is_group
                    && m.webhook.is_none()
                    && channel.capabilities().addressed_commands
                    && gate::is_start_command(&m.text) =>
            {
                out.push(reply(m, WELCOME_TEXT.to_string()));
                Admit::No
            }
            Verdict::Pass => Admit::Go,
            Verdict::PairGroup => {
                let random = &mut *self.entropy.0;
                match book.ask_group(&m.chat_id, &m.sender_id, &m.sender_name, self.wall_ms, random) {
                    Ask::Created(request) => {
                        // The operator's eyes only: a code in the group would let anyone there use it.
                        log::warn!(target: target, "group {} asks to use this channel (asked by {} (name {:?})): approve with `tether pairing approve {target} {}` or on the admin page",
                            clean_name(&m.chat_id), clean_name(&m.sender_id), request.sender_name, request.code);
                        out.push(Action::SavePairingRequest { channel: channel.name.clone(), request });
                    }
                    Ask::Pending { .. } | Ask::Quiet => {
                        log::info!(target: target, "dropped message from {} in {}: the group's approval is pending", m.sender_id, m.chat_id);
                    }
                    Ask::Full => {
                        log::warn!(target: target, "dropped message in group {}: {MAX_PENDING} pairing requests pending already", m.chat_id);
                    }
                    Ask::NoEntropy => {
                        log::error!(target: target, "cannot make a pairing code for group {}: the system's random source failed", m.chat_id);
                    }
                }
                Admit::No
            }
            Verdict::Pair => {
                let start = channel.capabilities().addressed_commands && gate::is_start_command(&m.text);
                let greeting = if start { WELCOME_STRANGER } else { "" };
                let with_greeting =
                    |text: String| if greeting.is_empty() { text } else { format!("{greeting}\n\n{text}") };
                let random = &mut *self.entropy.0;
                match book.ask(&m.sender_id, &m.sender_name, &m.chat_id, self.wall_ms, random) {
                    Ask::Created(request) => {
                        log::info!(target: target, "pairing request from {} (name {:?}); see `tether pairing list {target}`", request.sender_id, request.sender_name);
                        // Saved before it is sent: a code the operator cannot see would be useless.
                        let text = with_greeting(code_text(target, &request.code));
                        out.push(Action::SavePairingRequest { channel: channel.name.clone(), request });
                        out.push(reply(m, text));
                    }
                    Ask::Pending { code, remind: true } => {
                        log::info!(target: target, "reminded {} of their pending pairing code", m.sender_id);
                        out.push(reply(m, with_greeting(code_text(target, &code))));
                    }
                    Ask::Pending { remind: false, .. } => {
                        log::info!(target: target, "dropped message from {}: pairing pending (answered within the hour)", m.sender_id);
                    }
                    Ask::Quiet => {
                        log::info!(target: target, "dropped message from {}: not paired (answered within the hour)", m.sender_id);
                    }
                    Ask::Full => {
                        log::warn!(target: target, "dropped message from {}: {MAX_PENDING} pairing requests pending already", m.sender_id);
                    }
                    Ask::NoEntropy => {
                        log::error!(target: target, "cannot make a pairing code for {}: the system's random source failed", m.sender_id);
                    }
                }
                Admit::No
            }
        }
    }

    /// The channel's files changed (or were read at start): take their content and tell
    /// each sender whose request was approved meanwhile.
    pub fn reload(&mut self, channel: &str, files: AccessFilesState, out: &mut Vec<Action>) {
        let AccessFilesState { pending, approved, approved_groups } = files;
        let book = self.books.get_or_default(channel.to_string());
        let before: Vec<String> = book.approved().iter().chain(book.approved_groups()).cloned().collect();
        book.set_approved_groups(approved_groups);
        let gone: Vec<PairingRequest> = book
            .pending()
            .iter()
            .filter(|old| {
                let approved_now = match old.group() {
                    Some(group) => book.is_group_approved(group),
                    None => approved.contains(&old.sender_id),
                };
                !pending.iter().any(|r| r.code == old.code) && !approved_now
            })
            .cloned()
            .collect();
        for request in gone {
            log::info!(target: channel, "pairing request of {} (name {:?}) was denied or expired", clean_name(&request.sender_id), clean_name(&request.sender_name));
        }
        for request in book.replace(pending, approved) {
            let text = match request.group() {
                Some(group) => {
                    log::info!(target: channel, "group {} was approved", clean_name(group));
                    GROUP_PAIRED_TEXT
                }
                None => {
                    log::info!(target: channel, "{} (name {:?}) was approved", clean_name(&request.sender_id), clean_name(&request.sender_name));
                    PAIRED_TEXT
                }
            };
            match request.chat_id {
                Some(chat_id) => out.push(Action::Send(Outbound::Text {
                    chat: ChatRef { channel: channel.to_string(), chat_id, thread_id: None },
                    text: text.to_string(),
                    answers: Vec::new(),
                })),
                None => log::info!(target: channel, "no chat known for {}: they were not told", request.sender_id),
            }
        }
        for gone in before.iter().filter(|id| !book.is_approved(id) && !book.is_group_approved(id)) {
            log::info!(target: channel, "{gone} is no longer approved");
        }
    }
}

fn reply(m: &InboundMessage, text: String) -> Action {
    // Replies to a direct chat: no thread.
    Action::Send(Outbound::Text {
        chat: ChatRef { channel: m.channel.clone(), chat_id: m.chat_id.clone(), thread_id: None },
        text,
        answers: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 60 * 60 * 1000;
    const T0: u64 = 1_700_000_000_000;

    /// Entropy that yields 0,1,2,… in every byte position, one step per call.
    fn counting() -> impl FnMut() -> Option<[u8; 8]> {
        let mut n = 0u8;
        move || {
            n = n.wrapping_add(1);
            Some([n; 8])
        }
    }

    fn ask(book: &mut PairingBook, sender: &str, now: u64, random: &mut dyn FnMut() -> Option<[u8; 8]>) -> Ask {
        book.ask(sender, &format!("name {sender}"), sender, now, random)
    }

    fn created_code(ask: Ask) -> String {
        match ask {
            Ask::Created(r) => r.code,
            other => panic!("expected a new request, got {other:?}"),
        }
    }

    #[test]
    fn codes_use_the_alphabet_without_bias() {
        assert_eq!(code_from_bytes([0, 1, 2, 3, 4, 5, 6, 7]), "ABCDEFGH");
        assert_eq!(code_from_bytes([31, 32, 63, 255, 8, 13, 14, 23]), "9A99JPQZ");
        for b in 0..=255u8 {
            let code = code_from_bytes([b; 8]);
            assert_eq!(code.len(), 8);
            assert!(code.bytes().all(|c| CODE_ALPHABET.contains(&c)), "{code}");
            assert!(!code.contains(['0', 'O', '1', 'I']));
        }
        assert_eq!(normalize_code(" abcd2345 "), "ABCD2345");
    }

    #[test]
    fn same_sender_same_code_and_one_answer_an_hour() {
        let mut book = PairingBook::default();
        let mut random = counting();
        let code = created_code(ask(&mut book, "7", T0, &mut random));
        assert_eq!(code, "BBBBBBBB");
        // Every later message within the hour: same request, no answer.
        for dt in [1, 1000, HOUR / 2, HOUR - 1] {
            assert_eq!(ask(&mut book, "7", T0 + dt, &mut random), Ask::Pending { code: code.clone(), remind: false });
        }
        assert_eq!(book.pending().len(), 1);
        // An hour on, the code has expired: a new one, answered again.
        assert_eq!(created_code(ask(&mut book, "7", T0 + HOUR, &mut random)), "CCCCCCCC");
        assert_eq!(book.pending().len(), 1);
    }

    #[test]
    fn a_request_loaded_from_file_is_taken_as_answered() {
        let old = PairingRequest {
            sender_id: "7".into(),
            sender_name: "A".into(),
            code: "ABCDEFGH".into(),
            created_at: T0,
            chat_id: None,
            subject: None,
        };
        let mut book = PairingBook::new(vec![old], vec![]);
        let mut random = counting();
        assert_eq!(ask(&mut book, "7", T0 + 10, &mut random), Ask::Pending { code: "ABCDEFGH".into(), remind: false });
    }

    #[test]
    fn at_most_three_pending_and_others_get_nothing() {
        let mut book = PairingBook::default();
        let mut random = counting();
        for sender in ["1", "2", "3"] {
            created_code(ask(&mut book, sender, T0, &mut random));
        }
        assert_eq!(ask(&mut book, "4", T0 + 5, &mut random), Ask::Full);
        assert_eq!(ask(&mut book, "4", T0 + 6, &mut random), Ask::Full);
        // Approving one frees a slot.
        let code = book.pending()[0].code.clone();
        assert!(book.approve(&code, T0 + 7).is_some());
        created_code(ask(&mut book, "4", T0 + 8, &mut random));
        assert_eq!(ask(&mut book, "5", T0 + 9, &mut random), Ask::Full);
        // An hour after the first three, their slots are free again.
        assert_eq!(book.live(T0 + HOUR).count(), 1);
        created_code(ask(&mut book, "5", T0 + HOUR, &mut random));
    }

    #[test]
    fn expiry_is_one_hour_and_survives_clock_steps() {
        let r = |created_at| PairingRequest {
            sender_id: "7".into(),
            sender_name: "A".into(),
            code: "ABCDEFGH".into(),
            created_at,
            chat_id: None,
            subject: None,
        };
        let cases = [
            (T0, T0, true),
            (T0, T0 + HOUR - 1, true),
            (T0, T0 + HOUR, false),
            (T0, T0 + 10 * HOUR, false),
            // Made "in the future" (the clock stepped back): live within an hour of it only.
            (T0 + HOUR - 1, T0, true),
            (T0 + 5 * HOUR, T0, false),
        ];
        for (created, now, live) in cases {
            assert_eq!(r(created).is_live(now), live, "created {created}, now {now}");
        }
        let mut book = PairingBook::new(vec![r(T0)], vec![]);
        assert_eq!(book.approve("ABCDEFGH", T0 + HOUR), None, "an expired code cannot be approved");
        assert!(book.drop_expired(T0 + HOUR));
        assert!(book.pending().is_empty());
    }

    #[test]
    fn approve_deny_revoke() {
        let mut book = PairingBook::default();
        let mut random = counting();
        let a = created_code(ask(&mut book, "1", T0, &mut random));
        let b = created_code(ask(&mut book, "2", T0, &mut random));
        // Case-insensitive, spaces ignored.
        let approved = book.approve(&format!(" {} ", a.to_lowercase()), T0 + 1).unwrap();
        assert_eq!((approved.sender_id.as_str(), approved.sender_name.as_str()), ("1", "name 1"));
        assert_eq!(book.approved(), ["1".to_string()]);
        assert!(book.is_approved("1"));
        assert_eq!(book.approve(&a, T0 + 2), None, "a code works once");
        assert_eq!(book.deny("ZZZZZZZZ", T0 + 2), None);
        assert_eq!(book.deny(&b, T0 + 2).map(|r| r.sender_id), Some("2".to_string()));
        assert!(!book.is_approved("2"));
        assert!(book.pending().is_empty());
        // A denied sender hears nothing more within the hour, then may ask again.
        assert_eq!(ask(&mut book, "2", T0 + 3, &mut random), Ask::Quiet);
        created_code(ask(&mut book, "2", T0 + HOUR, &mut random));
        assert!(book.revoke("1"));
        assert!(!book.revoke("1"));
        assert!(!book.is_approved("1"));
    }

    #[test]
    fn no_entropy_means_no_code_and_a_repeated_code_is_drawn_again() {
        let mut book = PairingBook::default();
        assert_eq!(ask(&mut book, "1", T0, &mut || None), Ask::NoEntropy);
        assert!(book.pending().is_empty());
        let mut same = || Some([0u8; 8]);
        assert_eq!(created_code(ask(&mut book, "1", T0, &mut same)), "AAAAAAAA");
        assert_eq!(ask(&mut book, "2", T0, &mut same), Ask::NoEntropy);
        let mut draws = [[0u8; 8], [1u8; 8]].into_iter();
        assert_eq!(created_code(ask(&mut book, "2", T0, &mut || draws.next())), "BBBBBBBB");
    }

    #[test]
    fn replace_reports_approvals_made_elsewhere() {
        let mut book = PairingBook::default();
        let mut random = counting();
        let a = ask(&mut book, "1", T0, &mut random);
        let b = ask(&mut book, "2", T0, &mut random);
        let (Ask::Created(a), Ask::Created(b)) = (a, b) else { panic!() };
        // The CLI approved 1, denied nobody, left 2 pending, and an operator hand-added 9.
        let approved = book.replace(vec![b.clone()], vec!["1".into(), "9".into(), "1".into()]);
        assert_eq!(approved, vec![a.clone()]);
        assert_eq!(book.approved(), ["1".to_string(), "9".to_string()]);
        // Reading the same files again reports nothing new.
        assert_eq!(book.replace(vec![b.clone()], vec!["1".into(), "9".into()]), vec![]);
        // 2 denied (gone, not approved): nothing to tell.
        assert_eq!(book.replace(vec![], vec!["1".into()]), vec![]);
    }

    #[test]
    fn names_are_cleaned_for_terminals() {
        let cases = [
            ("Ada Lovelace", "Ada Lovelace"),
            ("evil\u{1b}[2Jname", "evil [2Jname"),
            ("line\nbreak\r", "line break"),
            ("rtl\u{202E}kcatta", "rtl kcatta"),
            ("", "unknown"),
            ("\u{200B}", "unknown"),
        ];
        for (raw, clean) in cases {
            assert_eq!(clean_name(raw), clean, "{raw:?}");
        }
        assert_eq!(clean_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn requests_keep_qwen_codes_json_shape() {
        let r = PairingRequest {
            sender_id: "7".into(),
            sender_name: "A".into(),
            code: "ABCDEFGH".into(),
            created_at: T0,
            chat_id: Some("7".into()),
            subject: None,
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"senderId": "7", "senderName": "A", "code": "ABCDEFGH", "createdAt": T0, "chatId": "7"})
        );
        // A file Qwen Code wrote (no chatId) reads fine.
        let qwen: PairingRequest =
            serde_json::from_str(r#"{"senderId":"7","senderName":"A","code":"ABCDEFGH","createdAt":1}"#).unwrap();
        assert_eq!(qwen.chat_id, None);
    }
}

/// The access step inside the core: events in, actions out, asserting what reaches routing.
#[cfg(test)]
mod core_tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::config::{Config, GroupConfig, GroupPolicy, SenderPolicy};
    use crate::core::tests::channel;
    use crate::core::{Core, Event};
    use crate::event::{AgentRequest, Inbound};

    const T0: u64 = 1_700_000_000_000;
    const HOUR: u64 = 60 * 60 * 1000;

    fn core(policy: SenderPolicy) -> Core {
        let mut c = channel("tg");
        c.sender_policy = policy;
        c.group_policy = GroupPolicy::Allowlist;
        c.groups = [("-100".to_string(), GroupConfig::default())].into();
        let config = Config {
            path: PathBuf::from("/t/config.json"),
            agents: Default::default(),
            channels: [("tg".to_string(), c)].into(),
            env: Default::default(),
            disabled: Default::default(),
            allowed_channel_types: None,
            audit: None,
        };
        let mut core = Core::new(&config);
        let mut n = 0u8;
        core.set_entropy(Entropy::new(move || {
            n += 1;
            Some([n; 8])
        }));
        core.set_wall_clock(T0);
        core
    }

    fn dm(sender: &str, text: &str) -> Event {
        Event::Inbound(Inbound::Message(InboundMessage {
            channel: "tg".into(),
            sender_id: sender.into(),
            sender_name: format!("User {sender}"),
            chat_id: sender.into(),
            is_mentioned: true,
            text: text.into(),
            ..Default::default()
        }))
    }

    fn group(sender: &str, text: &str) -> Event {
        Event::Inbound(Inbound::Message(InboundMessage {
            channel: "tg".into(),
            sender_id: sender.into(),
            sender_name: format!("User {sender}"),
            chat_id: "-100".into(),
            is_group: true,
            is_mentioned: true,
            text: text.into(),
            ..Default::default()
        }))
    }

    fn text_to(chat: &str, text: &str) -> Action {
        Action::Send(Outbound::Text {
            chat: ChatRef { channel: "tg".into(), chat_id: chat.into(), thread_id: None },
            text: text.into(),
            answers: Vec::new(),
        })
    }

    fn reaches_routing(actions: &[Action]) -> bool {
        actions.iter().any(|a| {
            matches!(a, Action::Agent { request: AgentRequest::NewSession { .. } | AgentRequest::Prompt { .. }, .. })
        })
    }

    fn files(pending: Vec<PairingRequest>, approved: &[&str]) -> Event {
        Event::AccessFiles {
            channel: "tg".into(),
            pending,
            approved: approved.iter().map(|s| s.to_string()).collect(),
            approved_groups: Vec::new(),
        }
    }

    #[test]
    fn pairing_round_trip_inside_the_core() {
        let t = Instant::now();
        let mut core = core(SenderPolicy::Pairing);
        let got = core.handle(dm("7", "let me in"), t);
        let code = "BBBBBBBB";
        let request = PairingRequest {
            sender_id: "7".into(),
            sender_name: "User 7".into(),
            code: code.into(),
            created_at: T0,
            chat_id: Some("7".into()),
            subject: None,
        };
        assert_eq!(
            got,
            vec![
                Action::SavePairingRequest { channel: "tg".into(), request: request.clone() },
                text_to(
                    "7",
                    &format!(
                        "Your pairing code is: {code}\n\nAsk the bot operator to approve you with:\ntether pairing approve tg {code}"
                    )
                ),
            ]
        );
        // More messages: no second reply, nothing to the agent.
        core.set_wall_clock(T0 + 60_000);
        assert_eq!(core.handle(dm("7", "hello?"), t), vec![]);
        assert_eq!(core.handle(dm("7", "/start"), t), vec![]);
        // The daemon reads back its own write: nothing to say.
        assert_eq!(core.handle(files(vec![request.clone()], &[]), t), vec![]);
        assert_eq!(core.access_summary("tg").unwrap(), "pairing (0 paired, 1 pending); groups: allowlist");
        // The operator approves in another process.
        assert_eq!(core.handle(files(vec![], &["7"]), t), vec![text_to("7", PAIRED_TEXT)]);
        assert_eq!(core.handle(files(vec![], &["7"]), t), vec![], "told once");
        assert!(reaches_routing(&core.handle(dm("7", "now?"), t)));
        assert_eq!(core.access_summary("tg").unwrap(), "pairing (1 paired, 0 pending); groups: allowlist");
    }

    #[test]
    fn revoked_users_are_strangers_again() {
        let t = Instant::now();
        let mut core = core(SenderPolicy::Pairing);
        core.handle(files(vec![], &["7"]), t);
        assert!(reaches_routing(&core.handle(dm("7", "one"), t)));
        core.handle(files(vec![], &[]), t);
        let got = core.handle(dm("7", "two"), t);
        assert!(!reaches_routing(&got));
        assert!(
            matches!(&got[1], Action::Send(Outbound::Text { text, .. }) if text.starts_with("Your pairing code is: "))
        );
    }

    #[test]
    fn start_says_allowed_pending_or_nothing() {
        let t = Instant::now();
        // Allowed (allowedUsers "111") under each policy: the welcome, not the agent.
        for policy in [SenderPolicy::Allowlist, SenderPolicy::Pairing, SenderPolicy::Open] {
            let mut core = core(policy);
            assert_eq!(core.handle(dm("111", "/start"), t), vec![text_to("111", WELCOME_TEXT)], "{policy:?}");
        }
        // Anyone under open.
        assert_eq!(core(SenderPolicy::Open).handle(dm("5", "/start"), t), vec![text_to("5", WELCOME_TEXT)]);
        // A stranger under allowlist: silence.
        assert_eq!(core(SenderPolicy::Allowlist).handle(dm("5", "/start"), t), vec![]);
        // A stranger under pairing: the welcome and the code, once.
        let mut core = core(SenderPolicy::Pairing);
        let got = core.handle(dm("5", "/start"), t);
        assert_eq!(got[1], text_to("5", &format!("{WELCOME_STRANGER}\n\n{}", code_text("tg", "BBBBBBBB"))));
        assert_eq!(core.handle(dm("5", "/start"), t), vec![]);
        // An hour later the old code has expired: a new one.
        core.set_wall_clock(T0 + HOUR);
        let got = core.handle(dm("5", "/start extra"), t);
        assert_eq!(got[1], text_to("5", &format!("{WELCOME_STRANGER}\n\n{}", code_text("tg", "CCCCCCCC"))));
    }

    #[test]
    fn groups_never_get_codes_and_paired_users_may_talk_there() {
        let t = Instant::now();
        let mut core = core(SenderPolicy::Pairing);
        assert_eq!(core.handle(group("7", "hi bot"), t), vec![]);
        assert_eq!(core.handle(group("7", "/start"), t), vec![]);
        core.handle(files(vec![], &["7"]), t);
        assert!(reaches_routing(&core.handle(group("7", "hi bot"), t)));
        // A group /start from a paired user is not the DM welcome: it goes on.
        assert!(reaches_routing(&core.handle(group("111", "/start"), t)));
    }

    #[test]
    fn the_cap_holds_inside_the_core() {
        let t = Instant::now();
        let mut core = core(SenderPolicy::Pairing);
        for sender in ["1", "2", "3"] {
            assert_eq!(core.handle(dm(sender, "hi"), t).len(), 2, "code and save for {sender}");
        }
        assert_eq!(core.handle(dm("4", "hi"), t), vec![]);
        // A file with an old request (written an hour ago) does not hold a slot.
        let old = PairingRequest {
            sender_id: "1".into(),
            sender_name: "x".into(),
            code: "BBBBBBBB".into(),
            created_at: T0 - HOUR,
            chat_id: None,
            subject: None,
        };
        let live: Vec<PairingRequest> = core.access.book("tg").unwrap().pending()[1..].to_vec();
        core.handle(files([vec![old], live].concat(), &[]), t);
        assert_eq!(core.handle(dm("4", "hi"), t).len(), 2);
    }
}
