//! The files of Telegram messages: `getFile`, then the download (bounded in size and time),
//! saved under `<home>/media/<channel>/<chat>/` (0700, files 0600, sanitized names), and the
//! sweep that deletes them after `mediaRetention`.
//!
//! The poll thread fetches a batch's files after decoding and before the journal and the
//! offset move: a crash meanwhile loses nothing (Telegram sends the update again), and a
//! message is journaled with its files' paths, so a replay after a restart finds them. The
//! batch has a time budget ([`BATCH_BUDGET`]): a file that cannot be fetched in time (or at
//! all, or is over `maxMediaBytes`) is named in the message's text instead, and the message
//! still goes on. Only senders the channel's sender policy lets in get files downloaded.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use serde_json::json;

use super::{Api, pause, wire};
use crate::adapters::uploads::{self, Keeper};
use crate::event::{Attachment, AttachmentKind, ChatRef, InboundMessage};
use crate::media::{self, MediaLimits};

/// Time the poll thread may spend fetching the files of one batch of updates.
pub(super) const BATCH_BUDGET: Duration = Duration::from_secs(90);
/// `getFile` is a small call.
const GET_FILE_TIMEOUT: Duration = Duration::from_secs(20);
/// One download at most this long (and never past the batch budget)...
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// ...and with a small `maxMediaBytes`, this long plus a second per 256 KiB allowed.
const DOWNLOAD_BASE: Duration = Duration::from_secs(5);
/// A notice to the sender (a file too big) is best effort and short.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the poll thread needs to fetch files.
pub(super) struct Fetch {
    pub api: Api,
    /// `<home>/media/<channel>`.
    pub dir: std::path::PathBuf,
    pub limits: MediaLimits,
    pub keeper: Keeper,
}

impl Fetch {
    /// Fetch the files of `message` into its attachments; a file not fetched is named in the
    /// text. `None` when nothing is left to hand on (a file-only message whose file was
    /// refused and the sender told so).
    pub fn attach(
        &self,
        mut message: InboundMessage,
        files: Vec<wire::RemoteFile>,
        budget: Instant,
    ) -> Option<InboundMessage> {
        if files.is_empty() {
            return Some(message);
        }
        if !self.keeper.may_store_message(&message) {
            // The gates will not let this message in: nothing of it is downloaded.
            log::debug!(target: self.api.channel.as_str(), "files of {} not fetched: sender not let in", message.sender_id);
            if message.text.trim().is_empty() {
                message.text = "[a file]".to_string();
            }
            return Some(message);
        }
        let mut notes = Vec::new();
        let mut told = false;
        for file in files {
            let label = format!("{} \"{}\"", kind_word(file.kind), media::safe_file_name(&file.file_name, "file"));
            match self.fetch(&message, &file, budget) {
                Ok(attachment) => message.attachments.push(attachment),
                Err(Refused::TooBig(size)) => {
                    let why = format!(
                        "{} is over this channel's limit of {} (maxMediaBytes)",
                        size.map_or_else(|| "it".to_string(), media::size_text),
                        media::size_text(self.limits.max_bytes)
                    );
                    log::info!(target: self.api.channel.as_str(), "{label} of {} not fetched: {why}", message.sender_id);
                    told |= self.tell(&message, &format!("Your {label} was not received: {why}."));
                    notes.push(format!("[The user's {label} was not received: {why}.]"));
                }
                Err(Refused::Failed(why)) => {
                    log::warn!(target: self.api.channel.as_str(), "{label} of {} not fetched: {why}", message.sender_id);
                    notes.push(format!("[The user's {label} could not be downloaded: {why}.]"));
                }
            }
        }
        if told && message.text.trim().is_empty() && message.attachments.is_empty() {
            return None;
        }
        if !notes.is_empty() {
            let text = message.text.trim();
            message.text = if text.is_empty() { notes.join("\n") } else { format!("{text}\n\n{}", notes.join("\n")) };
        }
        Some(message)
    }

    fn fetch(&self, message: &InboundMessage, file: &wire::RemoteFile, budget: Instant) -> Result<Attachment, Refused> {
        let max = self.limits.max_bytes;
        if file.size.is_some_and(|size| size > max) {
            return Err(Refused::TooBig(file.size));
        }
        let left = budget.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refused::Failed("no time left for it in this batch of messages".into()));
        }
        let result = self
            .api
            .call("getFile", &wire::get_file(&file.file_id), GET_FILE_TIMEOUT.min(left))
            .map_err(|f| Refused::Failed(format!("getFile failed: {f}")))?;
        if result.get("file_size").and_then(serde_json::Value::as_u64).is_some_and(|size| size > max) {
            return Err(Refused::TooBig(result.get("file_size").and_then(serde_json::Value::as_u64)));
        }
        let path =
            wire::file_path(&result).ok_or_else(|| Refused::Failed("getFile gave no usable file_path".into()))?;
        let left = budget.saturating_duration_since(Instant::now());
        let bytes = self
            .api
            .download(&path, max + 1, download_timeout(max).min(left).max(Duration::from_secs(1)))
            .map_err(|e| {
                if e.contains("limit") || e.contains("too large") { Refused::TooBig(None) } else { Refused::Failed(e) }
            })?;
        if bytes.len() as u64 > max {
            return Err(Refused::TooBig(Some(bytes.len() as u64)));
        }
        let chat_dir = media::safe_file_name(&message.chat_id, "chat");
        let dir = uploads::private_dir(&self.dir, &chat_dir)
            .map_err(|e| Refused::Failed(format!("cannot use {}: {e}", self.dir.display())))?;
        let id = message.message_id.as_deref().unwrap_or("0");
        let name = format!("{}-{}", media::safe_file_name(id, "0"), media::safe_file_name(&file.file_name, "file"));
        let saved = uploads::write_new_file(&dir, &name, &bytes)
            .map_err(|e| Refused::Failed(format!("cannot save it under {}: {e}", dir.display())))?;
        // What the bytes are decides whether it is an image (never the name or the claim).
        let (kind, mime_type) = match media::sniff_image(&bytes) {
            Some(mime) => (AttachmentKind::Image, mime.to_string()),
            None if file.kind == AttachmentKind::Image => (AttachmentKind::File, file.mime_type.clone()),
            None => (file.kind, file.mime_type.clone()),
        };
        Ok(Attachment { kind, path: saved, file_name: file.file_name.clone(), mime_type })
    }

    /// Tell the sender, where that is not noise: in a DM, or in a group when they addressed
    /// the bot. Returns whether it was said.
    fn tell(&self, message: &InboundMessage, text: &str) -> bool {
        if message.is_group && !message.is_mentioned && !message.is_reply_to_bot {
            return false;
        }
        let chat = ChatRef {
            channel: message.channel.clone(),
            chat_id: message.chat_id.clone(),
            thread_id: message.thread_id.clone(),
        };
        let mut body = wire::send_message(&chat, text);
        if let Some(id) = message.message_id.as_deref().and_then(|id| id.parse::<i64>().ok()) {
            body["reply_parameters"] = json!({"message_id": id, "allow_sending_without_reply": true});
        }
        match self.api.call("sendMessage", &body, NOTICE_TIMEOUT) {
            Ok(_) => true,
            Err(f) => {
                log::warn!(target: self.api.channel.as_str(), "could not tell chat {} about a refused file: {f}", message.chat_id);
                false
            }
        }
    }
}

/// How long one download of at most `max_bytes` may take: a slow link gets about 256 KiB/s.
fn download_timeout(max_bytes: u64) -> Duration {
    (DOWNLOAD_BASE + Duration::from_secs(max_bytes / (256 * 1024))).min(DOWNLOAD_TIMEOUT)
}

enum Refused {
    /// Over `maxMediaBytes` (the size when known).
    TooBig(Option<u64>),
    Failed(String),
}

fn kind_word(kind: AttachmentKind) -> &'static str {
    match kind {
        AttachmentKind::Image => "photo",
        AttachmentKind::File => "file",
        AttachmentKind::Audio => "audio",
        AttachmentKind::Video => "video",
    }
}

/// Delete received files older than `retention`, now and then, until asked to stop.
pub(super) fn sweep_loop(dir: &Path, retention: Duration, stop: &Receiver<()>, channel: &str) {
    // Often enough that a file outlives its retention by at most a quarter of it.
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let removed = uploads::sweep(dir, retention, SystemTime::now());
        if removed > 0 {
            log::info!(target: channel, "removed {removed} received file(s) older than {} s (mediaRetention)", retention.as_secs());
        }
        if pause(stop, every) {
            return;
        }
    }
}
