//! The inbound journal: every message a channel takes from its platform is appended (and
//! fsynced) to `<home>/journal/<channel>.jsonl` before the platform's offset or ack moves past
//! it, and stays there until its answer is delivered. After a crash, `kill -9` or a power cut,
//! the messages still pending are processed once at start; a message the journal already
//! knows (the platform sending it again) is not processed twice.
//!
//! The file is append-only JSON lines: `{"m": <message>, "t": <sent at, unix ms>}` for a
//! message, `{"done": {"chat": …, "id": …}}` when it was answered. It is rewritten with only
//! the pending messages when answered lines pile up, so it stays small. A torn last line (power
//! cut mid-write) is skipped on load. [`Ledger`] is the pure content; [`Journal`] adds the file.
//!
//! Only the lines of new messages are fsynced: that is the no-loss guarantee. An answered mark
//! is written but not fsynced (one disk flush per message less): a power cut may lose the
//! last marks, and those messages are then answered again after the restart (at least once,
//! as for an answer accepted just before a crash), never lost. `kill -9` or a crash of tether
//! loses nothing written (the kernel has it). Compaction stays atomic and durable
//! ([`crate::store::write_atomic`]), so the pending messages are never only in a file being
//! replaced.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::event::{Attachment, AttachmentKind, InboundMessage, MessageRef};

/// Answered messages remembered after compaction, in memory and in the file, for
/// deduplication: a platform may send again what was answered (Telegram, the updates a crash
/// left unconfirmed; its offset file is written lazily), and it must not be answered twice.
const RECENT_DONE: usize = 1024;
/// Compact when the file holds this many lines more than the pending messages need: every 512
/// messages at two lines each. (At 256, the rewrite of 1,024 marks, two fsyncs and a rename
/// every 128 messages cost 5,700 instructions a message and, by `perf`, 1% of tether's CPU
/// time in the fsyncs alone under `bench/`; and a board's SD card the writes.)
const COMPACT_SLACK: usize = 1024;

/// One journaled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub message: InboundMessage,
    /// When the person sent it (the platform's date), else when it was journaled; unix ms.
    pub sent_at_ms: u64,
}

/// The journal's content: pending messages in arrival order, and which were answered.
#[derive(Debug, Default)]
pub struct Ledger {
    pending: BTreeMap<u64, JournalEntry>,
    index: HashMap<MessageRef, u64>,
    done: HashSet<MessageRef>,
    done_order: VecDeque<MessageRef>,
    next_seq: u64,
    /// Lines the file holds (valid or not).
    lines: usize,
}

impl Ledger {
    /// Rebuild from the file's text; also returns how many lines could not be read.
    pub fn load(text: &str) -> (Ledger, usize) {
        let mut ledger = Ledger::default();
        let mut skipped = 0;
        let mut count = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            count += 1;
            let Ok(value) = serde_json::from_slice::<Value>(line.as_bytes()) else {
                skipped += 1;
                continue;
            };
            if let Some(done) = value.get("done") {
                match reference_from_json(done) {
                    Some(r) => {
                        if ledger.settle(&r).is_none() {
                            // Kept by a compaction: its message line is gone.
                            ledger.remember_done(r);
                        }
                    }
                    None => skipped += 1,
                }
            } else if let Some(entry) = entry_from_json(&value) {
                ledger.add(entry);
            } else {
                skipped += 1;
            }
        }
        ledger.lines = count;
        ledger.forget_old_done();
        (ledger, skipped)
    }

    fn remember_done(&mut self, r: MessageRef) {
        if self.done.insert(r.clone()) {
            self.done_order.push_back(r);
        }
    }

    fn forget_old_done(&mut self) {
        while self.done_order.len() > RECENT_DONE {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
    }

    /// Whether the message is pending or was answered (recently).
    pub fn knows(&self, r: &MessageRef) -> bool {
        self.index.contains_key(r) || self.done.contains(r)
    }

    /// Add a message; true when it is new (its [`message_line`] is to be appended: the ledger
    /// counts it as written), false when it is already known (or has no id, so it cannot be
    /// journaled).
    pub fn add(&mut self, entry: JournalEntry) -> bool {
        let Some(r) = entry.message.reference() else { return false };
        if self.knows(&r) {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.insert(r, seq);
        self.pending.insert(seq, entry);
        self.lines += 1;
        true
    }

    /// Undo [`Ledger::add`] whose line could not be written.
    fn forget(&mut self, r: &MessageRef) {
        if let Some(seq) = self.index.remove(r) {
            self.pending.remove(&seq);
            self.lines = self.lines.saturating_sub(1);
        }
    }

    /// Mark a message answered; returns the line to append, or `None` when it was not pending.
    pub fn settle(&mut self, r: &MessageRef) -> Option<String> {
        // The index's own key goes on to `done`: one copy less.
        let (key, seq) = self.index.remove_entry(r)?;
        self.pending.remove(&seq);
        self.done_order.push_back(key.clone());
        self.done.insert(key);
        self.lines += 1;
        Some(done_line(r))
    }

    /// Pending messages, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &JournalEntry> {
        self.pending.values()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn get(&self, r: &MessageRef) -> Option<&JournalEntry> {
        self.index.get(r).and_then(|seq| self.pending.get(seq))
    }

    pub fn needs_compaction(&self) -> bool {
        self.lines >= self.pending.len() + self.done_order.len().min(RECENT_DONE) + COMPACT_SLACK
    }

    /// The text of a compacted file: the pending messages, then the marks of the most recent
    /// answered ones (so that after a restart they are still known, and not answered again);
    /// the ledger now counts its lines.
    pub fn compacted(&mut self) -> String {
        self.forget_old_done();
        let mut text = String::new();
        for entry in self.pending.values() {
            text.push_str(&message_line(entry));
            text.push('\n');
        }
        for r in &self.done_order {
            text.push_str(&done_line(r));
            text.push('\n');
        }
        self.lines = self.pending.len() + self.done_order.len();
        text
    }
}

/// One channel's journal file, shared by its poll thread (appends), its sender thread (marks
/// answers delivered) and the daemon (replay, status).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    channel: String,
    inner: Mutex<Inner>,
    /// What was pending when the file was opened: left by an earlier run, to be processed
    /// once (see [`Journal::take_recovered`]).
    recovered: Mutex<Vec<JournalEntry>>,
    /// How a batch waits for the disk: [`File::sync_data`]; tests slow it down or fail it.
    sync_data: fn(&File) -> io::Result<()>,
}

#[derive(Debug)]
struct Inner {
    ledger: Ledger,
    /// Shared so that [`Journal::record`] can wait for the disk without holding the lock: a
    /// slow card's fsync (tens of ms on an SD card) must not stall the daemon and the sender
    /// threads, which mark answers in the same journal.
    file: Arc<File>,
    /// Bytes in the file: a failed append is cut back to this, so no torn line stays behind.
    len: u64,
    /// Appends that waited for the disk (tests check which ones do).
    fsyncs: u64,
}

impl Journal {
    /// Open (creating `<home>/journal/`) and load the journal of `channel`, compacting it.
    pub fn open(home: &Path, channel: &str) -> Result<Journal, Error> {
        let dir = home.join("journal");
        crate::store::ensure_private_dir(&dir)?;
        let path = dir.join(format!("{channel}.jsonl"));
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(Error::File { path, action: "read", source }),
        };
        let (mut ledger, skipped) = Ledger::load(&text);
        if skipped > 0 {
            log::warn!(target: channel, "journal {}: skipped {skipped} unreadable line(s) (a write cut short?)", path.display());
        }
        if ledger.pending_count() > 0 {
            log::info!(target: channel, "journal: {} message(s) not yet answered", ledger.pending_count());
        }
        let compacted = ledger.compacted();
        crate::store::write_atomic(&path, compacted.as_bytes())?;
        let file = open_append(&path).map_err(|source| Error::File { path: path.clone(), action: "open", source })?;
        let len = compacted.len() as u64;
        let recovered = Mutex::new(ledger.pending().cloned().collect());
        Ok(Journal {
            path,
            channel: channel.to_string(),
            inner: Mutex::new(Inner { ledger, file: Arc::new(file), len, fsyncs: 0 }),
            recovered,
            sync_data: File::sync_data,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Journal a batch (one write, one fsync); returns the messages that were new, in order.
    /// On error nothing of the batch is kept: the caller must not move its offset. The fsync
    /// runs without the lock (see [`Inner::file`]); the batch's messages are passed on only
    /// after it, so no answer can be marked before its message is on disk.
    pub fn record(&self, entries: Vec<JournalEntry>) -> io::Result<Vec<InboundMessage>> {
        // Lines and copies are made before the lock is taken: they are most of the work, and
        // the sender threads marking answers wait for the lock (under bench's 50 users they
        // did, about once every two messages).
        let prepared: Vec<(JournalEntry, InboundMessage, String)> = entries
            .into_iter()
            .map(|entry| {
                let line = message_line(&entry);
                let message = entry.message.clone();
                (entry, message, line)
            })
            .collect();
        let mut inner = self.lock();
        let mut text = String::new();
        let mut fresh = Vec::new();
        for (entry, message, line) in prepared {
            if inner.ledger.add(entry) {
                text.push_str(&line);
                text.push('\n');
                fresh.push(message);
            } else if message.reference().is_none() {
                fresh.push(message); // No id: cannot be journaled, pass it on.
            } else {
                log::debug!(target: self.channel.as_str(), "message {:?} in {} is already journaled; skipped", message.message_id, message.chat_id);
            }
        }
        if text.is_empty() {
            return Ok(fresh);
        }
        let start = inner.len;
        let written = append(&mut inner, text.as_bytes());
        let file = Arc::clone(&inner.file);
        inner.fsyncs += u64::from(written.is_ok());
        let end = inner.len;
        drop(inner);
        let result = written.and_then(|()| (self.sync_data)(&file));
        if let Err(e) = result {
            let mut inner = self.lock();
            // Cut the batch off unless more was appended since (an answered mark: then the
            // lines stay, and the platform's retry is journaled again; a reload skips the
            // repeat). The same file: a compaction since has rewritten it from the ledger.
            if inner.len == end && Arc::ptr_eq(&inner.file, &file) {
                let _ = inner.file.set_len(start);
                inner.len = start;
            }
            // Forget them again, so that the platform's retry is taken as new. `fresh` holds
            // the messages added, and those without an id (which the ledger never holds).
            for r in fresh.iter().filter_map(InboundMessage::reference) {
                inner.ledger.forget(&r);
            }
            return Err(e);
        }
        Ok(fresh)
    }

    /// Mark messages answered (written, not fsynced: see the module doc), and compact the
    /// file when it has grown.
    pub fn settle(&self, refs: &[MessageRef]) -> io::Result<()> {
        let mut inner = self.lock();
        let mut text = String::new();
        for r in refs {
            if let Some(line) = inner.ledger.settle(r) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        if text.is_empty() {
            return Ok(());
        }
        append(&mut inner, text.as_bytes())?;
        if inner.ledger.needs_compaction() {
            let compacted = inner.ledger.compacted();
            crate::store::write_atomic(&self.path, compacted.as_bytes())
                .map_err(|e| io::Error::other(e.to_string()))?;
            inner.file = Arc::new(open_append(&self.path)?);
            inner.len = compacted.len() as u64;
        }
        Ok(())
    }

    /// Pending messages, oldest first.
    pub fn pending(&self) -> Vec<JournalEntry> {
        self.lock().ledger.pending().cloned().collect()
    }

    /// The messages an earlier run left unanswered, oldest first, once: later calls return
    /// nothing. Not [`Journal::pending`], which also has what this run's poller took since
    /// (and has already passed on).
    pub fn take_recovered(&self) -> Vec<JournalEntry> {
        std::mem::take(&mut *self.recovered.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn pending_count(&self) -> usize {
        self.lock().ledger.pending_count()
    }

    /// When a pending message was sent (unix ms).
    pub fn sent_at(&self, r: &MessageRef) -> Option<u64> {
        self.lock().ledger.get(r).map(|e| e.sent_at_ms)
    }
}

/// Whether a message sent at `sent_at_ms` is too old for a turn at `now_ms` (unix ms). A clock
/// that went backwards makes nothing stale.
pub fn is_stale(sent_at_ms: u64, now_ms: u64, max_age: Duration) -> bool {
    now_ms.saturating_sub(sent_at_ms) > max_age.as_millis() as u64
}

/// The one notice a message too old for a turn gets instead of an answer.
pub fn stale_notice(text: &str, age_ms: u64, max_age: Duration) -> String {
    const SHOWN: usize = 60;
    let mut quoted: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(SHOWN).collect();
    if text.chars().count() > SHOWN {
        quoted.push('…');
    }
    format!(
        "Your message \"{quoted}\" reached me {} after you sent it (tether was not running), which is more than \
         {} (maxBacklogAge), so it was not passed to the agent. Send it again if it still matters.",
        crate::health::format_duration(age_ms / 1000),
        crate::health::format_duration(max_age.as_secs())
    )
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// Append (the caller fsyncs when it must); on failure cut the file back so no partial line
/// remains.
fn append(inner: &mut Inner, bytes: &[u8]) -> io::Result<()> {
    match (&*inner.file).write_all(bytes) {
        Ok(()) => {
            inner.len += bytes.len() as u64;
            Ok(())
        }
        Err(e) => {
            let _ = inner.file.set_len(inner.len);
            Err(e)
        }
    }
}

/// A message's line, `{"m": <message>, "t": <sent at>}`, written straight from the message
/// (one per message on the hot path: building a `serde_json::Value` tree first cost twice the
/// instructions). The fields are in the order `json!` wrote them (sorted: no
/// `preserve_order`), so the lines are the same as before (a test compares the two).
fn message_line(entry: &JournalEntry) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        m: Fields<'a>,
        t: u64,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Fields<'a> {
        attachments: Vec<AttachmentFields<'a>>,
        channel: &'a str,
        chat_id: &'a str,
        is_group: bool,
        is_mentioned: bool,
        is_reply_to_bot: bool,
        message_id: &'a Option<String>,
        quoted_text: &'a Option<String>,
        sender_id: &'a str,
        sender_name: &'a str,
        text: &'a str,
        thread_id: &'a Option<String>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct AttachmentFields<'a> {
        file_name: &'a str,
        kind: &'static str,
        mime_type: &'a str,
        path: std::borrow::Cow<'a, str>,
    }
    let m = &entry.message;
    let line = Line {
        m: Fields {
            attachments: m
                .attachments
                .iter()
                .map(|a| AttachmentFields {
                    file_name: &a.file_name,
                    kind: kind_name(a.kind),
                    mime_type: &a.mime_type,
                    path: a.path.to_string_lossy(),
                })
                .collect(),
            channel: &m.channel,
            chat_id: &m.chat_id,
            is_group: m.is_group,
            is_mentioned: m.is_mentioned,
            is_reply_to_bot: m.is_reply_to_bot,
            message_id: &m.message_id,
            quoted_text: &m.quoted_text,
            sender_id: &m.sender_id,
            sender_name: &m.sender_name,
            text: &m.text,
            thread_id: &m.thread_id,
        },
        t: entry.sent_at_ms,
    };
    // Cannot fail (string keys only); the Value tree stays as the fallback all the same.
    // Room for the fields' names and the usual ids besides the texts.
    let size = 256 + m.text.len() + m.sender_name.len() + m.quoted_text.as_ref().map_or(0, String::len);
    crate::store::json_text(&line, size)
        .unwrap_or_else(|| json!({"m": message_to_json(m), "t": entry.sent_at_ms}).to_string())
}

/// An answered mark's line, `{"done": {"chat": …, "id": …}}`.
fn done_line(r: &MessageRef) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        done: Done<'a>,
    }
    #[derive(Serialize)]
    struct Done<'a> {
        chat: &'a str,
        id: &'a str,
    }
    let line = Line { done: Done { chat: &r.chat_id, id: &r.message_id } };
    serde_json::to_string(&line)
        .unwrap_or_else(|_| json!({"done": {"chat": r.chat_id, "id": r.message_id}}).to_string())
}

fn message_to_json(m: &InboundMessage) -> Value {
    json!({
        "channel": m.channel,
        "senderId": m.sender_id,
        "senderName": m.sender_name,
        "chatId": m.chat_id,
        "threadId": m.thread_id,
        "messageId": m.message_id,
        "isGroup": m.is_group,
        "isMentioned": m.is_mentioned,
        "isReplyToBot": m.is_reply_to_bot,
        "text": m.text,
        "quotedText": m.quoted_text,
        "attachments": m.attachments.iter().map(|a| json!({
            "kind": kind_name(a.kind),
            "path": a.path.to_string_lossy(),
            "fileName": a.file_name,
            "mimeType": a.mime_type,
        })).collect::<Vec<_>>(),
    })
}

fn kind_name(kind: AttachmentKind) -> &'static str {
    match kind {
        AttachmentKind::Image => "image",
        AttachmentKind::File => "file",
        AttachmentKind::Audio => "audio",
        AttachmentKind::Video => "video",
    }
}

fn entry_from_json(value: &Value) -> Option<JournalEntry> {
    let m = value.get("m")?;
    let text = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
    let flag = |key: &str| m.get(key).and_then(Value::as_bool).unwrap_or(false);
    let attachments = m
        .get("attachments")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|a| {
                    let kind = match a.get("kind")?.as_str()? {
                        "image" => AttachmentKind::Image,
                        "audio" => AttachmentKind::Audio,
                        "video" => AttachmentKind::Video,
                        _ => AttachmentKind::File,
                    };
                    Some(Attachment {
                        kind,
                        path: PathBuf::from(a.get("path")?.as_str()?),
                        file_name: a.get("fileName")?.as_str()?.to_string(),
                        mime_type: a.get("mimeType")?.as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let message = InboundMessage {
        channel: text("channel")?,
        sender_id: text("senderId")?,
        sender_name: text("senderName").unwrap_or_default(),
        chat_id: text("chatId")?,
        thread_id: text("threadId"),
        message_id: Some(text("messageId")?),
        is_group: flag("isGroup"),
        is_mentioned: flag("isMentioned"),
        is_reply_to_bot: flag("isReplyToBot"),
        text: text("text").unwrap_or_default(),
        quoted_text: text("quotedText"),
        attachments,
        sent_at_ms: None,
        // Trust is never read back from disk (and webhook events are not journaled).
        webhook: None,
    };
    Some(JournalEntry { message, sent_at_ms: value.get("t").and_then(Value::as_u64).unwrap_or(0) })
}

fn reference_from_json(value: &Value) -> Option<MessageRef> {
    Some(MessageRef {
        chat_id: value.get("chat")?.as_str()?.to_string(),
        message_id: value.get("id")?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(chat: &str, id: &str, text: &str) -> JournalEntry {
        JournalEntry {
            message: InboundMessage {
                channel: "phone".into(),
                sender_id: "111".into(),
                sender_name: "Ada L".into(),
                chat_id: chat.into(),
                message_id: Some(id.into()),
                is_mentioned: true,
                text: text.into(),
                ..Default::default()
            },
            sent_at_ms: 1_700_000_000_000,
        }
    }

    fn r(chat: &str, id: &str) -> MessageRef {
        MessageRef { chat_id: chat.into(), message_id: id.into() }
    }

    /// An empty directory of this process for a journal test named `name`.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn pending_texts(ledger: &Ledger) -> Vec<String> {
        ledger.pending().map(|e| e.message.text.clone()).collect()
    }

    /// Apply (op, chat, id) steps; return the file text they produce.
    fn run(ledger: &mut Ledger, steps: &[(&str, &str, &str)]) -> String {
        let mut text = String::new();
        for (op, chat, id) in steps {
            let line = match *op {
                "add" => {
                    let entry = msg(chat, id, &format!("{chat}/{id}"));
                    let line = message_line(&entry);
                    ledger.add(entry).then_some(line)
                }
                "done" => ledger.settle(&r(chat, id)),
                _ => unreachable!(),
            };
            if let Some(line) = line {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    }

    #[test]
    fn replay_keeps_unanswered_messages_in_arrival_order() {
        type Steps = Vec<(&'static str, &'static str, &'static str)>;
        let cases: Vec<(Steps, Vec<&str>)> = vec![
            (vec![], vec![]),
            (vec![("add", "1", "10")], vec!["1/10"]),
            (vec![("add", "1", "10"), ("done", "1", "10")], vec![]),
            (vec![("add", "2", "5"), ("add", "1", "9"), ("add", "2", "6")], vec!["2/5", "1/9", "2/6"]),
            (vec![("add", "2", "5"), ("add", "1", "9"), ("done", "2", "5")], vec!["1/9"]),
            // The same id in another chat is another message.
            (vec![("add", "1", "7"), ("add", "2", "7"), ("done", "1", "7")], vec!["2/7"]),
            // Settling an unknown message writes nothing and changes nothing.
            (vec![("done", "9", "9"), ("add", "1", "1")], vec!["1/1"]),
        ];
        for (steps, expected) in cases {
            let mut ledger = Ledger::default();
            let text = run(&mut ledger, &steps);
            assert_eq!(pending_texts(&ledger), expected, "{steps:?}");
            let (replayed, skipped) = Ledger::load(&text);
            assert_eq!(skipped, 0);
            assert_eq!(pending_texts(&replayed), expected, "replayed {steps:?}");
        }
    }

    #[test]
    fn a_known_message_is_not_journaled_twice() {
        let mut ledger = Ledger::default();
        assert!(ledger.add(msg("1", "10", "a")));
        // The platform sends it again (offset not yet moved): pending → skipped.
        assert!(!ledger.add(msg("1", "10", "a again")));
        assert!(ledger.settle(&r("1", "10")).is_some());
        // Answered → still skipped, even after compaction.
        assert!(!ledger.add(msg("1", "10", "a again")));
        ledger.compacted();
        assert!(!ledger.add(msg("1", "10", "a again")));
        assert!(ledger.settle(&r("1", "10")).is_none(), "answered twice");
        // A message without an id cannot be journaled.
        let mut no_id = msg("1", "11", "x");
        no_id.message.message_id = None;
        assert!(!ledger.add(no_id));
        assert_eq!(ledger.pending_count(), 0);
    }

    #[test]
    fn replay_dedups_answers_across_restarts() {
        let mut ledger = Ledger::default();
        let text = run(&mut ledger, &[("add", "1", "10"), ("done", "1", "10"), ("add", "1", "11")]);
        let (mut replayed, _) = Ledger::load(&text);
        assert!(!replayed.add(msg("1", "10", "again")));
        assert!(!replayed.add(msg("1", "11", "again")));
        assert!(replayed.add(msg("1", "12", "new")));
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let mut ledger = Ledger::default();
        let mut text = run(&mut ledger, &[("add", "1", "10"), ("add", "1", "11")]);
        text.push_str("{\"done\": {\"chat\": \"1\"}}\n{\"x\": 1}\nnot json\n{\"m\": {\"chatId\": \"1\", \"mess");
        let (replayed, skipped) = Ledger::load(&text);
        assert_eq!(skipped, 4);
        assert_eq!(pending_texts(&replayed), vec!["1/10", "1/11"]);
    }

    #[test]
    fn compaction_keeps_only_pending_and_is_due_when_answers_pile_up() {
        let mut ledger = Ledger::default();
        let ids: Vec<String> = (0..COMPACT_SLACK).map(|i| i.to_string()).collect();
        let mut steps = vec![("add", "1", "first")];
        for id in &ids {
            steps.push(("add", "1", id.as_str()));
            steps.push(("done", "1", id.as_str()));
        }
        let half = steps.len() / 2;
        run(&mut ledger, &steps[..half]);
        assert!(!ledger.needs_compaction());
        run(&mut ledger, &steps[half..]);
        assert!(ledger.needs_compaction());
        ledger.settle(&r("1", "first"));
        run(&mut ledger, &[("add", "1", "last")]);
        let text = ledger.compacted();
        assert!(!ledger.needs_compaction());
        // The pending message, and the marks of the most recent answered ones.
        let marks = (COMPACT_SLACK + 1).min(RECENT_DONE);
        assert_eq!(text.lines().count(), 1 + marks);
        let (replayed, skipped) = Ledger::load(&text);
        assert_eq!(skipped, 0);
        assert_eq!(pending_texts(&replayed), vec!["1/last"]);
        let latest = (COMPACT_SLACK - 1).to_string();
        assert!(replayed.knows(&r("1", "first")) && replayed.knows(&r("1", &latest)));
        assert_eq!(replayed.knows(&r("1", "0")), COMPACT_SLACK < RECENT_DONE, "the oldest mark");
    }

    #[test]
    fn compacted_files_keep_only_the_most_recent_answered_marks() {
        let mut ledger = Ledger::default();
        let total = RECENT_DONE + 3 * COMPACT_SLACK;
        let mut longest = 0;
        for i in 0..total {
            let id = i.to_string();
            run(&mut ledger, &[("add", "1", id.as_str()), ("done", "1", id.as_str())]);
            if ledger.needs_compaction() {
                let text = ledger.compacted();
                longest = longest.max(text.lines().count());
            }
        }
        assert_eq!(longest, RECENT_DONE, "the file is bounded by the answered marks it keeps");
        let text = ledger.compacted();
        let (replayed, _) = Ledger::load(&text);
        assert!(replayed.knows(&r("1", &(total - 1).to_string())));
        assert!(replayed.knows(&r("1", &(total - RECENT_DONE).to_string())));
        assert!(!replayed.knows(&r("1", &(total - RECENT_DONE - 1).to_string())));
    }

    #[test]
    fn a_message_round_trips_through_its_line() {
        let mut entry = msg("-100", "55", "hello\nworld \u{1F600}");
        entry.message.thread_id = Some("9".into());
        entry.message.is_group = true;
        entry.message.is_reply_to_bot = true;
        entry.message.quoted_text = Some("earlier".into());
        entry.message.attachments = vec![Attachment {
            kind: AttachmentKind::Image,
            path: PathBuf::from("/h/media/a.jpg"),
            file_name: "a.jpg".into(),
            mime_type: "image/jpeg".into(),
        }];
        let line = message_line(&entry);
        assert!(!line.contains('\n'));
        let (replayed, _) = Ledger::load(&line);
        assert_eq!(replayed.pending().cloned().collect::<Vec<_>>(), vec![entry]);
    }

    #[test]
    fn staleness_and_its_notice() {
        let day = Duration::from_secs(86_400);
        let cases = [(0, 0, false), (0, 86_400_000, false), (0, 86_400_001, true), (5_000, 1_000, false)];
        for (sent, now, stale) in cases {
            assert_eq!(is_stale(sent, now, day), stale, "{sent} {now}");
        }
        let notice = stale_notice("please   deploy\nthe site", 2 * 86_400_000 + 3_600_000, day);
        assert_eq!(
            notice,
            "Your message \"please deploy the site\" reached me 2d 1h 0m after you sent it (tether was not running), \
             which is more than 1d 0h 0m (maxBacklogAge), so it was not passed to the agent. Send it again if it still matters."
        );
        assert!(stale_notice(&"x".repeat(100), 0, day).contains(&format!("\"{}…\"", "x".repeat(60))));
    }

    #[test]
    fn journal_file_survives_reopen_and_stays_small() {
        let dir = fresh_dir("file");
        let journal = Journal::open(&dir, "phone").unwrap();
        let fresh = journal.record(vec![msg("1", "1", "a"), msg("1", "2", "b"), msg("1", "1", "a")]).unwrap();
        assert_eq!(fresh.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
        journal.settle(&[r("1", "1")]).unwrap();
        drop(journal);
        // As after kill -9: reopen, "b" is pending, "a" is known.
        let journal = Journal::open(&dir, "phone").unwrap();
        assert_eq!(journal.pending().iter().map(|e| e.message.text.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert!(journal.record(vec![msg("1", "2", "b")]).unwrap().is_empty());
        // What this run's poller takes is pending too, but it is not recovered: it was passed on.
        assert_eq!(journal.record(vec![msg("1", "3", "c")]).unwrap().len(), 1);
        let recovered = journal.take_recovered();
        assert_eq!(recovered.iter().map(|e| e.message.text.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert!(journal.take_recovered().is_empty(), "recovered once");
        journal.settle(&[r("1", "3")]).unwrap();
        for i in 10..(10 + 3 * COMPACT_SLACK) {
            let id = i.to_string();
            journal.record(vec![msg("1", &id, "x")]).unwrap();
            journal.settle(&[r("1", &id)]).unwrap();
        }
        let lines = std::fs::read_to_string(journal.path()).unwrap().lines().count();
        assert!(lines <= RECENT_DONE + COMPACT_SLACK + 2, "{lines} lines");
        assert_eq!(journal.pending_count(), 1);
        // After compactions and a restart (as after a crash), what was answered is still known:
        // a platform that sends it again does not get it answered twice.
        drop(journal);
        let journal = Journal::open(&dir, "phone").unwrap();
        let last = 10 + 3 * COMPACT_SLACK - 1;
        let again = vec![msg("1", &last.to_string(), "x"), msg("1", &(last - 1).to_string(), "x")];
        assert!(journal.record(again).unwrap().is_empty());
        assert_eq!(journal.pending_count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_are_written_as_the_value_tree_wrote_them() {
        let mut full = msg("-100", "7", "a \"quoted\" text\nwith ünïcode");
        full.message.thread_id = Some("12".into());
        full.message.quoted_text = Some("earlier".into());
        full.message.is_group = true;
        full.message.is_reply_to_bot = true;
        full.message.attachments = vec![Attachment {
            kind: AttachmentKind::Audio,
            path: PathBuf::from("/media/phone/voice.ogg"),
            file_name: "voice.ogg".into(),
            mime_type: "audio/ogg".into(),
        }];
        for entry in [msg("1", "10", "plain"), full] {
            let tree = json!({"m": message_to_json(&entry.message), "t": entry.sent_at_ms}).to_string();
            assert_eq!(message_line(&entry), tree);
            let (ledger, skipped) = Ledger::load(&message_line(&entry));
            assert_eq!((skipped, ledger.pending().cloned().collect::<Vec<_>>()), (0, vec![entry]));
        }
        let done = r("-100", "7");
        assert_eq!(done_line(&done), json!({"done": {"chat": "-100", "id": "7"}}).to_string());
    }

    #[test]
    fn new_messages_are_fsynced_answered_marks_only_written() {
        let dir = fresh_dir("sync");
        let journal = Journal::open(&dir, "phone").unwrap();
        let fsyncs = || journal.lock().fsyncs;
        journal.record(vec![msg("1", "1", "a"), msg("1", "2", "b")]).unwrap();
        assert_eq!(fsyncs(), 1, "one fsync per batch of new messages");
        journal.record(vec![msg("1", "1", "a")]).unwrap();
        assert_eq!(fsyncs(), 1, "nothing new: nothing written");
        journal.settle(&[r("1", "1"), r("1", "2")]).unwrap();
        assert_eq!(fsyncs(), 1, "an answered mark is not fsynced");
        // But it is written: a reopen (as after kill -9) knows both were answered.
        drop(journal);
        let journal = Journal::open(&dir, "phone").unwrap();
        assert_eq!(journal.pending_count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A journal in a fresh directory named for the test, holding one message, "a".
    fn journal_holding_a(name: &str) -> (PathBuf, Journal) {
        let dir = fresh_dir(name);
        let journal = Journal::open(&dir, "phone").unwrap();
        journal.record(vec![msg("1", "1", "a")]).unwrap();
        (dir, journal)
    }

    /// The texts still pending when `dir`'s journal is opened again, as after a restart.
    fn pending_after_reopen(dir: &Path) -> Vec<String> {
        pending_texts(&Journal::open(dir, "phone").unwrap().lock().ledger)
    }

    #[test]
    fn answers_are_marked_while_a_batch_waits_for_the_disk() {
        use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
        use std::time::Instant;
        let (dir, mut journal) = journal_holding_a("slow");
        // A card slow to flush: the flush ends when the test says so (or after 5 s).
        static FLUSH: AtomicU8 = AtomicU8::new(0); // 1: begun, 2: may end, 3: ended
        journal.sync_data = |file| {
            FLUSH.store(1, SeqCst);
            let began = Instant::now();
            while FLUSH.load(SeqCst) != 2 && began.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            FLUSH.store(3, SeqCst);
            file.sync_data()
        };
        let journal = Arc::new(journal);
        let recorder = {
            let journal = journal.clone();
            std::thread::spawn(move || journal.record(vec![msg("1", "2", "b")]).map(|fresh| fresh.len()))
        };
        let began = Instant::now();
        while FLUSH.load(SeqCst) != 1 {
            assert!(began.elapsed() < Duration::from_secs(5), "the batch was never flushed");
            std::thread::yield_now();
        }
        journal.settle(&[r("1", "1")]).unwrap();
        assert_eq!(journal.pending_count(), 1);
        assert_eq!(FLUSH.swap(2, SeqCst), 1, "marking an answer waited for the flush to end");
        assert_eq!(recorder.join().unwrap().unwrap(), 1);
        assert_eq!(pending_after_reopen(&dir), ["b"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_fsync_keeps_nothing_of_its_batch() {
        let (dir, mut journal) = journal_holding_a("eio");
        journal.sync_data = |_| Err(io::Error::other("EIO"));
        assert!(journal.record(vec![msg("1", "2", "b")]).is_err());
        assert_eq!(journal.pending_count(), 1, "the failed batch is forgotten");
        let size = std::fs::metadata(journal.path()).unwrap().len();
        journal.sync_data = File::sync_data;
        // The platform sends it again: it is new, journaled once.
        assert_eq!(journal.record(vec![msg("1", "2", "b")]).unwrap().len(), 1);
        assert!(std::fs::metadata(journal.path()).unwrap().len() > size);
        drop(journal);
        assert_eq!(pending_after_reopen(&dir), ["a", "b"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
