//! The Discord sender thread: performs the core's [`Outbound`] actions over REST in order.
//! Replies are cut into 2000-character messages (Discord renders the agent's Markdown), the
//! first one replying to the message it answers; questions get buttons; edits change the
//! message sent for a key; button presses are acknowledged. Rate limits (per-route buckets,
//! 429 `retry_after`) are waited out, transient failures retried a few times with backoff.
//! Once every part of a reply was tried, the messages it answers are settled in the journal.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::inbound::SentIds;
use super::rest::Rest;
use super::wire::{self, RestFailure};
use crate::backoff::Backoff;
use crate::event::{ChatRef, MessageRef, Outbound};
use crate::health::Probe;
use crate::journal::Journal;
use crate::render::{Units, chunk_markdown};

/// Attempts of one call before it is given up.
const ATTEMPTS: u32 = 5;
/// Longest single wait for a rate limit (a longer one is waited in several attempts).
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Asking messages remembered for their later edit.
const MAX_KEYS: usize = 256;

pub struct Sender {
    pub channel: String,
    pub rest: Arc<Rest>,
    pub sent: Arc<SentIds>,
    pub journal: Option<Arc<Journal>>,
    pub probe: Probe,
    /// Key of an `Ask`/`Edit` → (Discord channel, message id).
    keys: HashMap<String, (String, String)>,
    key_order: VecDeque<String>,
}

impl Sender {
    pub fn new(
        channel: &str,
        rest: Arc<Rest>,
        sent: Arc<SentIds>,
        journal: Option<Arc<Journal>>,
        probe: Probe,
    ) -> Sender {
        Sender {
            channel: channel.to_string(),
            rest,
            sent,
            journal,
            probe,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
        }
    }

    /// Deliver until the outbox closes (what was queued is still delivered).
    pub fn run(mut self, outbox: &Receiver<Outbound>) {
        for out in outbox.iter() {
            self.perform(out);
        }
    }

    fn perform(&mut self, out: Outbound) {
        match out {
            Outbound::Text { chat, text, answers } => {
                let reply_to = answers.iter().find(|a| a.chat_id == chat.chat_id).map(|a| a.message_id.clone());
                self.post(&chat, &text, reply_to.as_deref(), &[]);
                self.settle(&answers);
            }
            Outbound::Typing { chat } => {
                // A late "typing…" is worse than none: one try.
                if let Err(e) = self.rest.typing(target(&chat)) {
                    log::debug!(target: self.channel.as_str(), "typing in {}: {e}", target(&chat));
                }
            }
            Outbound::Ask { chat, key, text, buttons } => {
                if let Some(id) = self.post(&chat, &text, None, &buttons) {
                    self.remember_key(key, target(&chat).to_string(), id);
                }
            }
            Outbound::Edit { chat, key, text } => {
                let text: String = text.chars().take(wire::MESSAGE_LIMIT).collect();
                match self.keys.get(&key).cloned() {
                    Some((channel_id, message_id)) => {
                        let body = wire::edit_message(&text);
                        let result =
                            self.with_retries("edit", || self.rest.edit_message(&channel_id, &message_id, &body));
                        if result.is_err() {
                            // Could not edit (deleted?): say it as a new message.
                            self.post(&chat, &text, None, &[]);
                        }
                    }
                    None => {
                        if let Some(id) = self.post(&chat, &text, None, &[]) {
                            self.remember_key(key, target(&chat).to_string(), id);
                        }
                    }
                }
            }
            Outbound::ButtonAck { callback_id, text, .. } => match wire::split_callback_id(&callback_id) {
                Some((id, token)) => {
                    // Discord shows "interaction failed" after 3 s: one quick try, no backoff.
                    if let Err(e) = self.rest.interaction_callback(id, token, &wire::interaction_callback(&text)) {
                        log::warn!(target: self.channel.as_str(), "acknowledging button press {id} failed: {e}");
                    }
                }
                None => log::warn!(target: self.channel.as_str(), "button press id {callback_id:?} is not Discord's"),
            },
            // Discord messages could be edited live, but the capability is off: no drafts come.
            Outbound::Draft { .. } => {}
        }
    }

    /// Post `text` in messages of at most 2000 characters; the first replies to `reply_to`,
    /// the last carries the buttons. Returns the id of the last message posted.
    fn post(
        &mut self,
        chat: &ChatRef,
        text: &str,
        reply_to: Option<&str>,
        buttons: &[(String, String)],
    ) -> Option<String> {
        // UTF-16 units are never fewer than characters: a chunk that fits by them fits Discord.
        let mut pieces = chunk_markdown(text, wire::MESSAGE_LIMIT, Units::Utf16);
        pieces.retain(|p| !p.trim().is_empty());
        if pieces.is_empty() {
            if buttons.is_empty() {
                return None;
            }
            pieces.push("…".to_string());
        }
        let last = pieces.len() - 1;
        let mut last_id = None;
        for (i, piece) in pieces.iter().enumerate() {
            let body = wire::create_message(
                piece,
                if i == 0 { reply_to } else { None },
                if i == last { buttons } else { &[] },
            );
            match self.with_retries("send", || self.rest.create_message(target(chat), &body)) {
                Ok(id) => {
                    self.sent.remember(&id);
                    self.probe.sent();
                    last_id = Some(id);
                }
                Err(e) => {
                    let line = format!("message to {} not delivered: {e}", target(chat));
                    log::warn!(target: self.channel.as_str(), "{line}");
                    self.probe.note_error(&line);
                }
            }
        }
        last_id
    }

    /// Run `call`, waiting out rate limits and retrying transient failures.
    fn with_retries<T>(&self, what: &str, mut call: impl FnMut() -> Result<T, RestFailure>) -> Result<T, RestFailure> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match call() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let wait = match &error {
                RestFailure::RateLimited(d) => (*d).min(MAX_WAIT),
                RestFailure::Transient(_) => backoff.next_delay(),
                RestFailure::Unauthorized(_) | RestFailure::Blocked(_) | RestFailure::Rejected(_) => return Err(error),
            };
            if attempt >= ATTEMPTS {
                return Err(error);
            }
            log::debug!(target: self.channel.as_str(), "{what}: {error}; again in {} ms", wait.as_millis());
            std::thread::sleep(wait);
        }
    }

    fn settle(&self, answers: &[MessageRef]) {
        if answers.is_empty() {
            return;
        }
        if let Some(journal) = &self.journal
            && let Err(e) = journal.settle(answers)
        {
            log::error!(target: self.channel.as_str(), "cannot mark answers in {}: {e}", journal.path().display());
        }
    }

    fn remember_key(&mut self, key: String, channel_id: String, message_id: String) {
        if !self.keys.contains_key(&key) {
            if self.key_order.len() >= MAX_KEYS
                && let Some(old) = self.key_order.pop_front()
            {
                self.keys.remove(&old);
            }
            self.key_order.push_back(key.clone());
        }
        self.keys.insert(key, (channel_id, message_id));
    }
}

/// The Discord channel a reply goes to: the thread when there is one (a thread is a channel).
fn target(chat: &ChatRef) -> &str {
    chat.thread_id.as_deref().unwrap_or(&chat.chat_id)
}
