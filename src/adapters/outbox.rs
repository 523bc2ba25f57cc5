//! Shared delivery for every platform: replies rendered to platform pieces by a [`Courier`],
//! queued per chat, paced by [`Pacer`] with the platform's own [`PacingRules`], and delivered
//! by a few worker threads, so that one chat's retries or slow calls never hold up another
//! chat. [`Schedule`] is the pure part (what may go next, what a failure means for the piece,
//! when a whole reply is done with); [`spawn`] runs the worker threads, which share it under
//! a lock, and settle the messages a delivered reply answers in the journal.
//!
//! The outbox defines the [`Courier`] trait and knows no platform; each platform implements
//! it in its own folder (render, plain fallback, one call, pacing) and writes no queue or
//! retry loop of its own. A courier that uploads files ([`Courier::files`]) gets the
//! `[IMAGE: …]` / `[FILE: …]` markers of a reply taken out and checked here, and the files
//! queued after the text as [`Call::SendFile`] parts of the same reply.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

use crate::adapters::Supervisor;
use crate::adapters::contain::{Fingerprint, contain};
use crate::adapters::pacing::{ChatTimes, Pacer, PacingRules};
use crate::adapters::uploads::OutboundFiles;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::event::{ChatRef, MessageRef, Outbound};
use crate::health::Probe;
use crate::journal::Journal;
use crate::media::{self, FileKind};
use crate::vec_map::VecMap;

/// Attempts for one piece that fails with 5xx or a network error before it is logged as lost.
pub(crate) const SEND_ATTEMPTS: u32 = 6;
/// 429 answers one piece may wait out before further ones count as failed attempts.
pub(crate) const RATE_LIMIT_WAITS: u32 = 10;
/// A typing indicator asked for longer ago than this is pointless (platforms show one for
/// about 5 s and the core asks again every few seconds): it is dropped instead of sent late.
pub(crate) const TYPING_FRESH: Duration = Duration::from_secs(4);
/// Calls in flight at once: a chat has at most one, so this many chats progress in parallel.
const WORKERS: usize = 3;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long an idle worker sleeps with nothing due (a reply queued wakes it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Once the outbox closes (the service stops, the channel is removed), queued replies may
/// still start for this long; then only the calls in flight are awaited. What was not sent
/// stays in the journal, and is answered at the next start: better than a process exit in the
/// middle of a call, after which nobody knows whether the reply arrived.
pub(crate) const DRAIN_AFTER_CLOSE: Duration = Duration::from_millis(1500);
/// How often the schedule walks every chat to forget idle ones (see [`Schedule::tidy`]).
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Message ids remembered for edits; the oldest are forgotten past this.
const REMEMBERED_KEYS: usize = 512;
/// Delivered replies kept for the audit log between two calls' results at most.
const MAX_DELIVERED: usize = 1024;

/// One platform message's worth of a reply, as the courier rendered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    /// In the platform's markup (Telegram HTML, Markdown), as opposed to plain text.
    pub formatted: bool,
}

/// One platform call, for [`Courier::perform`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Show "typing…" in the chat.
    Typing(ChatRef),
    /// Send a new message, with buttons (label, callback data) under it when there are any.
    Send { chat: ChatRef, piece: Piece, buttons: Vec<(String, String)> },
    /// Replace the text of a message sent earlier (and remove its buttons).
    Edit { chat: ChatRef, message_id: String, piece: Piece },
    /// Answer a button press.
    Ack { callback_id: String, text: String },
    /// Upload a file the agent asked to send (`[IMAGE: …]`, `[FILE: …]`): `path` passed the
    /// courier's [`Courier::files`] check when queued; the courier reads it with
    /// [`OutboundFiles::read`], which checks it again.
    SendFile { chat: ChatRef, path: PathBuf, kind: FileKind, caption: Option<String> },
}

/// Why a platform call did not succeed, classified by what the caller does next. Each
/// platform maps its own answers (HTTP status, error codes) into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Another process holds the bot's connection (Telegram: 409). Retry slowly.
    Conflict(String),
    /// Too many calls to this chat: wait this long, then retry the same call.
    RateLimited(Duration),
    /// Too many calls from the whole bot (the platform said the limit is global): every
    /// chat waits this long.
    BotRateLimited(Duration),
    /// The credentials are wrong. Retrying will not help soon.
    Unauthorized(String),
    /// 5xx, timeouts, refused connections, malformed replies: retry with backoff.
    Transient(String),
    /// The platform refused the message's markup: resend it as plain text.
    BadMarkup(String),
    /// The bot was blocked by the user or removed from the chat: stop sending there.
    Blocked(String),
    /// The request itself is wrong (chat not found, text too long). Do not retry.
    Rejected(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Conflict(d) => write!(f, "conflict (409): {d}"),
            Failure::RateLimited(d) => write!(f, "rate limited (429): retry after {} s", d.as_secs()),
            Failure::BotRateLimited(d) => {
                write!(f, "rate limited (429) for the whole bot: retry after {} s", d.as_secs())
            }
            Failure::Unauthorized(d) => write!(f, "unauthorized: {d}; check the channel's token"),
            Failure::Transient(d) => write!(f, "{d}"),
            Failure::BadMarkup(d) => write!(f, "markup refused: {d}"),
            Failure::Blocked(d) => write!(f, "forbidden: {d}"),
            Failure::Rejected(d) => write!(f, "rejected: {d}"),
        }
    }
}

/// What a platform implements to use the outbox. `render`, `plain` and `pacing` are pure;
/// `perform` makes one call (with its own timeout) from a worker thread.
pub trait Courier: Send + Sync + 'static {
    /// A reply's Markdown formatted and split to the platform's message limit; empty when
    /// there is nothing to send.
    fn render(&self, markdown: &str) -> Vec<Piece>;
    /// The piece as plain text, after the platform refused its markup; `None` when it is
    /// plain already (then the piece is dropped).
    fn plain(&self, piece: &Piece) -> Option<Piece>;
    /// Make one call; `Some(id)` of the message a `Send` or `Edit` created.
    fn perform(&self, call: &Call) -> Result<Option<String>, Failure>;
    /// The platform's limits.
    fn pacing(&self) -> PacingRules;
    /// Which files the agent may send with `[IMAGE: …]` / `[FILE: …]` markers; `None` (the
    /// default) when the platform does not upload files: the markers then stay in the text.
    fn files(&self) -> Option<&OutboundFiles> {
        None
    }
}

/// One message of a reply, as it waits in its chat's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    piece: Piece,
    /// Buttons under this part: (label, callback data).
    buttons: Vec<(String, String)>,
    /// A file to upload instead of a text (`piece` is then its caption, possibly empty).
    file: Option<(PathBuf, FileKind)>,
    track: Track,
}

/// Where a part belongs and how it has fared so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Track {
    /// The reply this part belongs to (a block drops the rest of it); 0 for calls that are
    /// not parts (typing, button answers).
    reply: u64,
    /// 1-based position in the reply, and the reply's number of parts.
    index: usize,
    of: usize,
    /// Failed attempts (5xx, network) so far.
    attempts: u32,
    /// Rate limits waited out so far.
    waits: u32,
    /// Remember the sent message's id under this key, for a later edit.
    key: Option<String>,
    /// This part replaces the text of the message sent under this key (a new message if
    /// that one is unknown).
    edit: Option<String>,
}

impl Part {
    fn new(piece: Piece, reply: u64, index: usize, of: usize) -> Part {
        Part { piece, buttons: Vec::new(), file: None, track: Track { reply, index, of, ..Track::default() } }
    }
}

/// A call handed to a worker, and what the schedule needs back with its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    pub call: Call,
    track: Track,
}

/// What became of a call, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    TypingShown,
    TypingFailed {
        chat: String,
        failure: Failure,
    },
    Acked,
    AckFailed {
        failure: Failure,
    },
    Delivered {
        chat: String,
        index: usize,
        of: usize,
        formatted: bool,
    },
    /// The platform refused the markup; the part goes again as plain text.
    PlainFallback {
        chat: String,
        index: usize,
        of: usize,
        failure: Failure,
    },
    /// Refused for a reason a retry will not fix; the next part follows.
    Dropped {
        chat: String,
        index: usize,
        of: usize,
        failure: Failure,
    },
    /// The bot may not write to the chat; the rest of the reply (`dropped` parts) is dropped.
    Blocked {
        chat: String,
        index: usize,
        of: usize,
        dropped: usize,
        failure: Failure,
    },
    /// Rate limited: the part goes again after `wait` (the whole bot waits when `whole_bot`).
    RateLimited {
        chat: String,
        index: usize,
        of: usize,
        wait: Duration,
        whole_bot: bool,
    },
    Retrying {
        chat: String,
        index: usize,
        of: usize,
        attempt: u32,
        delay: Duration,
        failure: Failure,
    },
    /// Every attempt failed; the part is lost.
    Lost {
        chat: String,
        index: usize,
        of: usize,
        failure: Failure,
    },
}

impl Verdict {
    /// How loud, and the log line.
    pub fn log_line(&self) -> (log::Level, String) {
        use log::Level;
        match self {
            Verdict::TypingShown => (Level::Trace, "typing indicator shown".to_string()),
            Verdict::TypingFailed { chat, failure } => {
                (Level::Debug, format!("typing indicator for chat {chat} failed (not retried): {failure}"))
            }
            Verdict::Acked => (Level::Trace, "button press answered".to_string()),
            Verdict::AckFailed { failure } => {
                (Level::Debug, format!("answering a button press failed (not retried): {failure}"))
            }
            Verdict::Delivered { chat, index, of, formatted } => {
                let how = if *formatted { "formatted" } else { "plain text" };
                (Level::Debug, format!("sent part {index}/{of} of a reply to chat {chat} as {how}"))
            }
            Verdict::PlainFallback { chat, index, of, failure } => {
                (Level::Warn, format!("send to chat {chat}: {failure}; resending part {index}/{of} as plain text"))
            }
            Verdict::Dropped { chat, index, of, failure } => (
                Level::Error,
                format!("send to chat {chat} failed, not retrying: {failure}; part {index}/{of} of the reply is lost"),
            ),
            Verdict::Blocked { chat, index, of, dropped, failure } => (
                Level::Error,
                format!(
                    "send to chat {chat} failed: {failure}; the bot may not write there, so part {index}/{of} \
                     and the {dropped} after it are dropped"
                ),
            ),
            Verdict::RateLimited { chat, index, of, wait, whole_bot } => {
                let scope = if *whole_bot { " for the whole bot" } else { "" };
                (
                    Level::Warn,
                    format!(
                        "send to chat {chat} rate limited (429){scope}: part {index}/{of} goes again in {} s",
                        wait.as_secs()
                    ),
                )
            }
            Verdict::Retrying { chat, index, of, attempt, delay, failure } => (
                Level::Warn,
                format!(
                    "send to chat {chat} failed (attempt {attempt}/{SEND_ATTEMPTS}): {failure}; part {index}/{of} \
                     goes again in {} ms",
                    delay.as_millis()
                ),
            ),
            Verdict::Lost { chat, index, of, failure } => (
                Level::Error,
                format!(
                    "send to chat {chat} gave up after {SEND_ATTEMPTS} attempts: {failure}; part {index}/{of} \
                     of the reply is lost"
                ),
            ),
        }
    }
}

/// The outbound state of one chat.
#[derive(Debug)]
struct ChatQueue {
    parts: VecDeque<Part>,
    /// A retried front part waits until then.
    not_before: Option<Instant>,
    /// A part of this chat is with a worker.
    sending: bool,
    /// When "typing…" was last asked for and not yet sent (stale after [`TYPING_FRESH`]).
    typing_since: Option<Instant>,
    /// A typing indicator of this chat is with a worker.
    typing_sending: bool,
    backoff: Backoff,
    /// The pacer's limits of this chat, kept here so that finding the next call or wake reads
    /// no map per chat (those lookups were a fifth of the daemon's instructions with ten
    /// chats waiting for their buckets, `bench/callgrind.sh`): set from the pacer when the
    /// queue is made and after each [`Pacer::record`] or [`Pacer::hold_chat`] of the chat.
    pace: ChatTimes,
}

impl ChatQueue {
    fn new(pace: ChatTimes) -> ChatQueue {
        ChatQueue {
            parts: VecDeque::new(),
            not_before: None,
            sending: false,
            typing_since: None,
            typing_sending: false,
            backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
            pace,
        }
    }

    /// One call per chat at a time, so calls reach the platform in the order they were
    /// decided (a typing indicator before the answer it announces).
    fn busy(&self) -> bool {
        self.sending || self.typing_sending
    }

    /// A typing indicator may go now, as far as the chat is concerned: asked for lately, and
    /// no call of the chat is out.
    fn wants_typing(&self, now: Instant) -> bool {
        self.typing_since.is_some_and(|since| now.saturating_duration_since(since) <= TYPING_FRESH) && !self.busy()
    }

    /// Nothing to send, nothing out, no typing asked for lately: the queue may go.
    fn is_idle(&self, now: Instant) -> bool {
        self.parts.is_empty() && !self.busy() && !self.wants_typing(now)
    }

    /// The part at the front is done with (sent or given up): the next starts afresh.
    fn next_part(&mut self) {
        self.not_before = None;
        self.backoff.reset();
    }
}

/// How a reply ended, once every part of it is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Delivery {
    /// Every part reached the chat.
    Sent,
    /// Nothing to send (the text rendered to nothing), or the platform refused it for good
    /// (bad request, the bot may not write there): trying again cannot help.
    Refused,
    /// A part was lost after every retry: the reply did not arrive.
    Lost,
}

/// A reply done with: the inbound messages it answers, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    pub answers: Vec<MessageRef>,
    pub delivery: Delivery,
}

/// A reply (an [`Outbound::Text`]) with parts still to go.
#[derive(Debug)]
struct Tracked {
    answers: Vec<MessageRef>,
    parts_left: usize,
    worst: Delivery,
    /// For the audit log's `answer.delivered`: where, how big, how many parts, since when.
    chat: ChatRef,
    bytes: usize,
    parts: usize,
    queued_at: Instant,
}

/// A reply whose every part was delivered (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub chat: ChatRef,
    pub bytes: usize,
    pub parts: usize,
    pub took: Duration,
}

/// What the core asked for, with its text (an answer's, a question's, an edit's) rendered
/// to the platform's pieces.
pub(crate) struct Rendered {
    out: Outbound,
    pieces: Vec<Piece>,
}

impl Rendered {
    pub fn new(courier: &dyn Courier, out: Outbound) -> Rendered {
        let pieces = match &out {
            Outbound::Text { text, .. } | Outbound::Ask { text, .. } | Outbound::Edit { text, .. } => {
                courier.render(text)
            }
            Outbound::Typing { .. } | Outbound::ButtonAck { .. } | Outbound::Draft { .. } => Vec::new(),
        };
        Rendered { out, pieces }
    }
}

/// Per-chat queues and the pacer: decides which call goes next. Pure (the courier is asked
/// only to render); time comes in as `now`.
pub(crate) struct Schedule {
    courier: Arc<dyn Courier>,
    /// Replies with parts still to go, by reply number.
    tracked: VecMap<u64, Tracked>,
    /// Replies done with, for [`Schedule::take_settled`].
    settled: Vec<Settled>,
    /// Replies delivered whole, for [`Schedule::take_delivered`] (bounded: taken every round).
    delivered: Vec<Delivered>,
    chats: VecMap<ChatRef, ChatQueue>,
    pacer: Pacer<ChatRef>,
    replies: u64,
    /// Message ids of keyed parts, for edits, oldest first.
    sent: VecDeque<(String, String)>,
    /// Button presses to answer (callback id, text); they skip the chat queues.
    acks: VecDeque<(String, String)>,
    /// The chat served last, so the next part goes to the chat after it (round robin).
    last_served: Option<ChatRef>,
    /// When [`Schedule::tidy`] walks the chats next.
    tidy_at: Option<Instant>,
}

impl Schedule {
    pub fn new(courier: Arc<dyn Courier>) -> Schedule {
        let pacer = Pacer::new(courier.pacing());
        Schedule {
            courier,
            tracked: VecMap::new(),
            settled: Vec::new(),
            delivered: Vec::new(),
            chats: VecMap::new(),
            pacer,
            replies: 0,
            sent: VecDeque::new(),
            acks: VecDeque::new(),
            last_served: None,
            tidy_at: None,
        }
    }

    /// Queue what the core asked for; returns how many message parts were queued.
    #[cfg(test)]
    pub fn push(&mut self, out: Outbound, now: Instant) -> usize {
        self.push_with_files(out, Vec::new(), now)
    }

    /// Queue what the core asked for, with files (already checked) to upload after an
    /// `Outbound::Text`'s text, as parts of the same reply; returns how many message parts
    /// were queued.
    pub fn push_with_files(&mut self, out: Outbound, files: Vec<(PathBuf, FileKind)>, now: Instant) -> usize {
        let rendered = Rendered::new(self.courier.as_ref(), out);
        self.push_rendered(rendered, files, now)
    }

    /// [`Schedule::push_with_files`] of a reply rendered beforehand (without the lock the
    /// schedule is under: a long answer takes a while).
    pub fn push_rendered(&mut self, rendered: Rendered, files: Vec<(PathBuf, FileKind)>, now: Instant) -> usize {
        let Rendered { out, pieces } = rendered;
        match out {
            Outbound::Text { chat, text, answers } => {
                if pieces.is_empty() && files.is_empty() {
                    self.settled.push(Settled { answers, delivery: Delivery::Refused });
                    return 0;
                }
                self.replies += 1;
                let reply = self.replies;
                let texts = pieces.len();
                let of = texts + files.len();
                let tracked = Tracked {
                    answers,
                    parts_left: of,
                    worst: Delivery::Sent,
                    chat: chat.clone(),
                    bytes: text.len(),
                    parts: of,
                    queued_at: now,
                };
                self.tracked.insert(reply, tracked);
                let queue = self.queue(chat);
                // The answer is here: "typing…" asked for before it is moot.
                queue.typing_since = None;
                for (i, piece) in pieces.into_iter().enumerate() {
                    queue.parts.push_back(Part::new(piece, reply, i + 1, of));
                }
                for (i, file) in files.into_iter().enumerate() {
                    let mut part = Part::new(Piece { text: String::new(), formatted: false }, reply, texts + i + 1, of);
                    part.file = Some(file);
                    queue.parts.push_back(part);
                }
                of
            }
            Outbound::Ask { chat, key, text: _, buttons } => {
                self.replies += 1;
                let (reply, of) = (self.replies, pieces.len());
                let queue = self.queue(chat);
                for (i, piece) in pieces.into_iter().enumerate() {
                    let mut part = Part::new(piece, reply, i + 1, of);
                    if i + 1 == of {
                        // The buttons and the key go with the last part, the one people see last.
                        part.buttons = buttons.clone();
                        part.track.key = Some(key.clone());
                    }
                    queue.parts.push_back(part);
                }
                of
            }
            Outbound::Edit { chat, key, text: _ } => {
                self.replies += 1;
                let (reply, of) = (self.replies, pieces.len());
                let queue = self.queue(chat);
                for (i, piece) in pieces.into_iter().enumerate() {
                    let mut part = Part::new(piece, reply, i + 1, of);
                    // The first part replaces the message; the rest (a long edit) follow it.
                    if i == 0 {
                        part.track.edit = Some(key.clone());
                    }
                    queue.parts.push_back(part);
                }
                of
            }
            Outbound::ButtonAck { callback_id, text, .. } => {
                self.acks.push_back((callback_id, text));
                0
            }
            Outbound::Typing { chat } => {
                self.queue(chat).typing_since = Some(now);
                0
            }
            // Drafts are for platforms that show them live; the final Text carries the answer.
            Outbound::Draft { .. } => 0,
        }
    }

    /// Count a part of `reply` done with, by its verdict; a reply whose last part is done
    /// with goes to [`Schedule::take_settled`].
    fn track(&mut self, reply: u64, verdict: &Verdict, now: Instant) {
        let Some(tracked) = self.tracked.get_mut(&reply) else { return };
        let (done, delivery) = match verdict {
            Verdict::Delivered { .. } => (1, Delivery::Sent),
            Verdict::Dropped { .. } => (1, Delivery::Refused),
            Verdict::Blocked { dropped, .. } => (1 + dropped, Delivery::Refused),
            Verdict::Lost { .. } => (1, Delivery::Lost),
            _ => (0, Delivery::Sent), // It goes again.
        };
        tracked.parts_left = tracked.parts_left.saturating_sub(done);
        tracked.worst = tracked.worst.max(delivery);
        if tracked.parts_left == 0
            && let Some(tracked) = self.tracked.remove(&reply)
        {
            if tracked.worst == Delivery::Sent && self.delivered.len() < MAX_DELIVERED {
                let took = now.saturating_duration_since(tracked.queued_at);
                self.delivered.push(Delivered { chat: tracked.chat, bytes: tracked.bytes, parts: tracked.parts, took });
            }
            self.settled.push(Settled { answers: tracked.answers, delivery: tracked.worst });
        }
    }

    /// The replies delivered whole since the last call.
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.delivered)
    }

    /// Replies done with since the last call.
    pub fn take_settled(&mut self) -> Vec<Settled> {
        std::mem::take(&mut self.settled)
    }

    /// Nothing queued and nothing in flight.
    pub fn is_empty(&self, now: Instant) -> bool {
        self.acks.is_empty() && self.chats.values().all(|queue| queue.is_idle(now))
    }

    /// Forget the queues left idle (their typing gone stale: the others go as soon as they
    /// are done with) and the pacer's idle chats, so memory follows the chats active lately.
    /// A walk over every chat, so once per [`TIDY_EVERY`]: on every turn of every worker, with
    /// 50 chats queued behind the bot's budget, the walks took 9% of the daemon's instructions
    /// (`bench/callgrind.sh 2 6 50`). What stays a while longer changes no decision.
    fn tidy(&mut self, now: Instant) {
        if self.tidy_at.is_some_and(|at| now < at) {
            return;
        }
        self.tidy_at = Some(later(now, TIDY_EVERY));
        self.pacer.forget_idle(now);
        self.chats.retain(|_, queue| !queue.is_idle(now));
    }

    /// `chat`'s queue, made (with the pacer's limits of the chat) if it has none.
    fn queue(&mut self, chat: ChatRef) -> &mut ChatQueue {
        queue_in(&mut self.chats, &self.pacer, chat)
    }

    /// Drop `chat`'s queue if it is idle now.
    fn forget_if_idle(&mut self, chat: &ChatRef, now: Instant) {
        if self.chats.get(chat).is_some_and(|queue| queue.is_idle(now)) {
            self.chats.remove(chat);
        }
    }

    /// The next call that may go at `now`, if any; its chat counts as busy until
    /// [`Schedule::finish`] gets the result.
    pub fn next_job(&mut self, now: Instant) -> Option<Job> {
        self.tidy(now);
        let bot = self.pacer.bot_ready_at(now);
        if bot > now {
            return None;
        }
        // A pressed button spins until answered: answers go before anything else.
        if let Some((callback_id, text)) = self.acks.pop_front() {
            self.pacer.record_bot(now);
            return Some(Job { call: Call::Ack { callback_id, text }, track: Track::default() });
        }
        // An answer that may go goes before "typing…": when the bot's budget is short (many
        // chats at once), an indicator sent first would take a text's place, and the answer
        // it announces, often there a moment later, makes it moot. Typing is not held back by
        // the chat's bucket or queue.
        let Some(chat) = self.next_ready_chat(now, bot) else {
            let (chat, queue) =
                self.chats.iter_mut().find(|(_, q)| q.wants_typing(now) && q.pace.action_ready_at(now, bot) <= now)?;
            queue.typing_since = None;
            queue.typing_sending = true;
            let chat = chat.clone();
            self.pacer.record_bot(now);
            return Some(Job { call: Call::Typing(chat), track: Track::default() });
        };
        self.pacer.record(chat.clone(), now);
        let pace = self.pacer.chat_times(&chat);
        let queue = self.chats.get_mut(&chat)?;
        let part = queue.parts.pop_front()?;
        queue.sending = true;
        queue.pace = pace;
        self.last_served = Some(chat.clone());
        let Part { piece, buttons, file, track } = part;
        let edit_id =
            track.edit.as_ref().and_then(|key| self.sent.iter().find(|(k, _)| k == key).map(|(_, id)| id.clone()));
        let call = match (file, edit_id) {
            (Some((path, kind)), _) => {
                let caption = (!piece.text.is_empty()).then_some(piece.text);
                Call::SendFile { chat, path, kind, caption }
            }
            (None, Some(message_id)) => Call::Edit { chat, message_id, piece },
            (None, None) => Call::Send { chat, piece, buttons },
        };
        Some(Job { call, track })
    }

    /// The first chat after the one served last whose front part may go now.
    fn next_ready_chat(&self, now: Instant, bot: Instant) -> Option<ChatRef> {
        let ready = |(_, q): &(&ChatRef, &ChatQueue)| {
            !q.busy()
                && !q.parts.is_empty()
                && q.not_before.is_none_or(|t| t <= now)
                && q.pace.message_ready_at(now, bot) <= now
        };
        let after = self.last_served.as_ref().map(|last| self.chats.iter_after(last));
        after.into_iter().flatten().chain(self.chats.iter()).find(ready).map(|(chat, _)| chat.clone())
    }

    /// When a call that cannot go now may go (a retry's delay, a chat's bucket or hold, the
    /// bot's budget); `None` when nothing waits but the results of calls in flight.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let bot = self.pacer.bot_ready_at(now);
        let mut wake = (!self.acks.is_empty()).then_some(bot);
        for q in self.chats.values() {
            // No call goes before the bot's budget allows: once a chat waits only for that,
            // no other can be earlier.
            if wake == Some(bot) {
                break;
            }
            let typing = q.wants_typing(now).then(|| q.pace.action_ready_at(now, bot));
            let part = (!q.busy() && !q.parts.is_empty())
                .then(|| q.not_before.unwrap_or(now).max(q.pace.message_ready_at(now, bot)));
            wake = wake.into_iter().chain(typing).chain(part).min();
        }
        wake
    }

    /// Take the result of a call handed out by [`Schedule::next_job`]: requeue the part for a
    /// retry, a plain-text resend or not at all, and say what happened.
    pub fn finish(&mut self, job: Job, result: Result<Option<String>, Failure>, now: Instant) -> Verdict {
        // A rate limit slows the chat (or the bot) exactly as long as asked, whatever the call.
        let chat = match &job.call {
            Call::Typing(chat) | Call::Send { chat, .. } | Call::Edit { chat, .. } | Call::SendFile { chat, .. } => {
                Some(chat)
            }
            Call::Ack { .. } => None,
        };
        match (&result, chat) {
            (Err(Failure::RateLimited(wait)), Some(chat)) => {
                self.pacer.hold_chat(chat.clone(), later(now, *wait));
                // A queue made later reads the pacer itself.
                if let Some(queue) = self.chats.get_mut(chat) {
                    queue.pace = self.pacer.chat_times(chat);
                }
            }
            (Err(Failure::BotRateLimited(wait)), _) => self.pacer.hold_bot(later(now, *wait)),
            _ => {}
        }
        let Job { call, track } = job;
        match call {
            Call::Ack { .. } => match result {
                Ok(_) => Verdict::Acked,
                Err(failure) => Verdict::AckFailed { failure },
            },
            Call::Typing(chat) => {
                if let Some(queue) = self.chats.get_mut(&chat) {
                    queue.typing_sending = false;
                }
                self.forget_if_idle(&chat, now);
                match result {
                    Ok(_) => Verdict::TypingShown,
                    Err(failure) => Verdict::TypingFailed { chat: chat.chat_id, failure },
                }
            }
            Call::Send { chat, piece, buttons } => {
                self.finish_part(chat, Part { piece, buttons, file: None, track }, result, now)
            }
            // An edit that must go again is retried as the same edit (its key still resolves).
            Call::Edit { chat, piece, .. } => {
                self.finish_part(chat, Part { piece, buttons: Vec::new(), file: None, track }, result, now)
            }
            Call::SendFile { chat, path, kind, caption } => {
                let piece = Piece { text: caption.unwrap_or_default(), formatted: false };
                self.finish_part(
                    chat,
                    Part { piece, buttons: Vec::new(), file: Some((path, kind)), track },
                    result,
                    now,
                )
            }
        }
    }

    fn finish_part(
        &mut self,
        chat: ChatRef,
        part: Part,
        result: Result<Option<String>, Failure>,
        now: Instant,
    ) -> Verdict {
        let chat_id = chat.chat_id.clone();
        if let (Some(key), Ok(Some(message_id))) = (&part.track.key, &result) {
            self.sent.push_back((key.clone(), message_id.clone()));
            if self.sent.len() > REMEMBERED_KEYS {
                self.sent.pop_front();
            }
        }
        let queue = self.chats.get_or_insert_cloned(&chat, |chat| ChatQueue::new(self.pacer.chat_times(chat)));
        queue.sending = false;
        let reply = part.track.reply;
        let verdict = settle(queue, part, result.map(drop), now, chat_id, self.courier.as_ref());
        self.forget_if_idle(&chat, now);
        self.track(reply, &verdict, now);
        verdict
    }

    /// The parts queued for `chat`, front first (for tests).
    #[cfg(test)]
    fn queued(&self, chat: &ChatRef) -> Vec<&Piece> {
        self.chats.get(chat).map(|q| q.parts.iter().map(|p| &p.piece).collect()).unwrap_or_default()
    }
}

/// [`Schedule::queue`], for a caller that holds other parts of the schedule meanwhile.
fn queue_in<'a>(chats: &'a mut VecMap<ChatRef, ChatQueue>, pacer: &Pacer<ChatRef>, chat: ChatRef) -> &'a mut ChatQueue {
    chats.get_or_insert_with(chat, |chat| ChatQueue::new(pacer.chat_times(chat)))
}

/// `now + wait`, or far enough when that cannot be represented.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).or_else(|| now.checked_add(Duration::from_secs(3600))).unwrap_or(now)
}

/// What a part's result means for its chat's queue.
fn settle(
    queue: &mut ChatQueue,
    mut part: Part,
    result: Result<(), Failure>,
    now: Instant,
    chat: String,
    courier: &dyn Courier,
) -> Verdict {
    let (index, of) = (part.track.index, part.track.of);
    let failure = match result {
        Ok(()) => {
            queue.next_part();
            return Verdict::Delivered { chat, index, of, formatted: part.piece.formatted };
        }
        Err(failure) => failure,
    };
    match failure {
        Failure::BadMarkup(_) => match courier.plain(&part.piece) {
            Some(plain) => {
                part.piece = plain;
                queue.parts.push_front(part);
                Verdict::PlainFallback { chat, index, of, failure }
            }
            // Plain text refused as well: dropped, not resent forever.
            None => {
                queue.next_part();
                Verdict::Dropped { chat, index, of, failure }
            }
        },
        Failure::Blocked(_) => {
            let before = queue.parts.len();
            queue.parts.retain(|p| p.track.reply != part.track.reply);
            queue.next_part();
            Verdict::Blocked { chat, index, of, dropped: before - queue.parts.len(), failure }
        }
        // The pacer holds the chat (or the bot) for `wait`: the part goes first after it.
        Failure::RateLimited(wait) | Failure::BotRateLimited(wait) if part.track.waits < RATE_LIMIT_WAITS => {
            part.track.waits += 1;
            queue.parts.push_front(part);
            let whole_bot = matches!(failure, Failure::BotRateLimited(_));
            Verdict::RateLimited { chat, index, of, wait, whole_bot }
        }
        Failure::RateLimited(_) | Failure::BotRateLimited(_) | Failure::Transient(_) | Failure::Conflict(_) => {
            part.track.attempts += 1;
            if part.track.attempts >= SEND_ATTEMPTS {
                queue.next_part();
                return Verdict::Lost { chat, index, of, failure };
            }
            let mut delay = queue.backoff.next_delay();
            if let Failure::RateLimited(wait) | Failure::BotRateLimited(wait) = failure {
                delay = delay.max(wait);
            }
            queue.not_before = Some(later(now, delay));
            let attempt = part.track.attempts;
            queue.parts.push_front(part);
            Verdict::Retrying { chat, index, of, attempt, delay, failure }
        }
        Failure::Rejected(_) | Failure::Unauthorized(_) => {
            queue.next_part();
            Verdict::Dropped { chat, index, of, failure }
        }
    }
}

/// What the workers settle replies against, and where they report.
pub struct Settle {
    /// The channel's name: the log target and the threads' names.
    pub channel: String,
    /// The channel's journal, when its platform journals inbound messages.
    pub journal: Option<Arc<Journal>>,
    pub probe: Probe,
}

impl Settle {
    /// Mark what a reply answered in the journal, unless it was lost (then the messages stay
    /// for the next start); count delivered replies.
    fn apply(&self, settled: Vec<Settled>) {
        let channel = self.channel.as_str();
        for Settled { answers, delivery } in settled {
            if delivery == Delivery::Sent {
                self.probe.sent();
            }
            let Some(journal) = &self.journal else { continue };
            if delivery == Delivery::Lost {
                if !answers.is_empty() {
                    log::warn!(target: channel, "a reply answering {} message(s) was lost; they stay in the journal and are answered again at the next start", answers.len());
                }
                continue;
            }
            if let Err(e) = journal.settle(&answers) {
                log::error!(target: channel, "cannot mark answers in {}: {e}", journal.path().display());
            }
        }
    }
}

/// A started outbox: where the core's replies go in, and the signal that it has drained.
pub struct Outbox {
    pub intake: Intake,
    /// Disconnects when the last worker has ended, after the intake was dropped.
    pub drained: Receiver<()>,
}

/// Start the worker threads of one channel's delivery, through the channel's supervisor.
/// Dropping the returned [`Intake`] closes the outbox: the workers end once the queued
/// replies are delivered or given up (or [`DRAIN_AFTER_CLOSE`] has passed), and
/// [`Outbox::drained`] disconnects then.
pub fn spawn(courier: Arc<dyn Courier>, settle: Settle, supervisor: &Supervisor) -> Result<Outbox, Error> {
    let files = courier.files().cloned();
    let shared = Arc::new(Shared {
        state: Mutex::new(Desk {
            schedule: Schedule::new(courier.clone()),
            open: true,
            drain_until: None,
            busy: 0,
            waiting: [None; WORKERS],
            incoming: VecDeque::new(),
            taking_in: false,
        }),
        courier,
        files,
        settle,
        woken: Condvar::new(),
    });
    // Made first: should a worker fail to start, dropping it closes the outbox for the others.
    let intake = Intake(shared.clone());
    let (drained_tx, drained) = bounded::<()>(0);
    for worker in 0..WORKERS {
        let (shared, drained_tx) = (shared.clone(), drained_tx.clone());
        supervisor.spawn(format!("send-{}-{worker}", shared.settle.channel), move || {
            // Dropped when the last worker ends, panics included: that is the signal.
            let _drained = drained_tx;
            work(&shared, worker);
        })?;
    }
    Ok(Outbox { intake, drained })
}

/// Where the core's replies to one channel go in. A short reply naming no files is queued
/// by the thread that sends it (the daemon's), and wakes a waiting worker only when it is
/// due before one wakes anyway: a reply reaches the platform with one thread woken, the one
/// that makes the call. (A worker listening on a channel for replies cost a second wake-up
/// for each, to hand the listening on while it made the call: about two of the 17 context
/// switches per Telegram message under `bench`'s 50 users.) A long one, or one naming files,
/// is put on the desk for a worker to take in: rendering a whole answer and checking files
/// are work the daemon's thread must not wait for. Dropping it closes the outbox.
pub struct Intake(Arc<Shared>);

/// The longest text the daemon's thread renders itself (about two Telegram messages' worth,
/// tens of microseconds).
const QUEUED_AT_ONCE_MAX: usize = 8 * 1024;

impl Intake {
    /// Queue a reply (or a typing indicator) from the core.
    pub fn send(&self, out: Outbound) {
        let shared = &self.0;
        let mut desk = shared.desk();
        // Only with nothing before it waiting to be taken in, so one chat's replies keep
        // their order.
        if desk.incoming.is_empty() && !desk.taking_in && quick_to_queue(&out) {
            let chat = replied_chat(&out);
            let now = Instant::now();
            // Rendering reads the agent's text: a renderer's panic costs this reply (its
            // messages stay unanswered in the journal), never the daemon's thread. It panics
            // before the schedule changes.
            let parts = contain(reply_fingerprint(&out), || desk.schedule.push_with_files(out, Vec::new(), now));
            let wake = desk.must_wake_a_worker(now);
            drop(desk);
            // Woken after the unlock: a worker woken under the lock would block on it at once,
            // and the unlock would have to wake it a second time.
            if wake {
                shared.woken.notify_one();
            }
            match parts {
                Some(parts) => log_queued(&shared.settle.channel, chat, parts),
                None => log_unrenderable(&shared.settle.channel),
            }
            return;
        }
        desk.incoming.push_back(out);
        // A worker taking replies in now takes this one too, after the ones before it; with
        // none waiting, one back from its call finds it.
        let wake = !desk.taking_in && desk.waiting.iter().any(Option::is_some);
        drop(desk);
        if wake {
            shared.woken.notify_one();
        }
    }
}

/// Whether a reply is quick to render and names no files to check.
fn quick_to_queue(out: &Outbound) -> bool {
    match out {
        Outbound::Text { text, .. } => text.len() <= QUEUED_AT_ONCE_MAX && !crate::media::may_hold_markers(text),
        Outbound::Ask { text, .. } | Outbound::Edit { text, .. } => text.len() <= QUEUED_AT_ONCE_MAX,
        Outbound::Typing { .. } | Outbound::ButtonAck { .. } | Outbound::Draft { .. } => true,
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        let shared = &self.0;
        let mut desk = shared.desk();
        if desk.open {
            desk.open = false;
            desk.drain_until = Some(Instant::now() + DRAIN_AFTER_CLOSE);
        }
        drop(desk);
        shared.woken.notify_all();
    }
}

/// What the workers of one channel and its [`Intake`] share.
struct Shared {
    state: Mutex<Desk>,
    courier: Arc<dyn Courier>,
    files: Option<OutboundFiles>,
    settle: Settle,
    /// Idle workers wait here, on [`Shared::state`]'s lock, for a call to become due: it
    /// parks at once, where a crossbeam wait first yields the CPU up to four times.
    woken: Condvar,
}

/// The schedule and the workers' common state, under one lock held only between calls.
struct Desk {
    schedule: Schedule,
    /// False once the intake was dropped (the channel stops).
    open: bool,
    /// Set when the outbox closed: queued replies may start until then.
    drain_until: Option<Instant>,
    /// Workers performing a call now.
    busy: usize,
    /// When each waiting worker wakes at the latest (`None`: not waiting). A call due sooner
    /// wakes one of them; one due later wakes no one, and a worker's own call that sets a
    /// retry is its own to wait for.
    waiting: [Option<Instant>; WORKERS],
    /// Replies from the core not yet rendered, oldest first.
    incoming: VecDeque<Outbound>,
    /// A worker is taking [`Desk::incoming`] in: one at a time, so that one chat's replies
    /// keep their order.
    taking_in: bool,
}

impl Shared {
    fn desk(&self) -> MutexGuard<'_, Desk> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a worker does next, decided with the desk locked.
enum Turn {
    Perform(Job),
    Wait(Duration),
    End,
}

impl Desk {
    fn turn(&mut self, now: Instant) -> Turn {
        let draining = self.drain_until.is_none_or(|until| now < until);
        if draining && let Some(job) = self.schedule.next_job(now) {
            self.busy += 1;
            return Turn::Perform(job);
        }
        let taken_in = self.incoming.is_empty() && !self.taking_in;
        if !self.open && self.busy == 0 && taken_in && (self.schedule.is_empty(now) || !draining) {
            return Turn::End;
        }
        Turn::Wait(self.wait(now))
    }

    /// How long an idle worker may wait before a call is due (or the drain ends), unless
    /// woken sooner.
    fn wait(&self, now: Instant) -> Duration {
        let wait = match self.schedule.next_wake(now) {
            Some(at) => at.saturating_duration_since(now).clamp(Duration::from_millis(1), IDLE_WAIT),
            None => IDLE_WAIT,
        };
        self.drain_until
            .map_or(wait, |until| wait.min(until.saturating_duration_since(now)).max(Duration::from_millis(1)))
    }

    /// Whether a waiting worker must be woken: a call is due before any of them would wake.
    fn must_wake_a_worker(&self, now: Instant) -> bool {
        let Some(soonest) = self.waiting.iter().flatten().min() else { return false };
        self.schedule.next_wake(now).is_some_and(|due| due < *soonest)
    }
}

/// Counts a worker as busy while it performs a call; a call that panics still frees it, so
/// that the others can end.
struct Performing<'a>(&'a Shared);

impl Drop for Performing<'_> {
    fn drop(&mut self) {
        self.0.desk().busy -= 1;
    }
}

/// A worker: takes the next due call, performs it, settles its result, and waits on the
/// desk's condition variable when nothing is due, until the soonest time a call is, or a
/// reply queued or another worker's turn wakes it.
fn work(shared: &Shared, worker: usize) {
    let channel = shared.settle.channel.as_str();
    let mut desk = shared.desk();
    loop {
        if !desk.taking_in && !desk.incoming.is_empty() {
            desk = take_in(shared, desk);
            continue;
        }
        let now = Instant::now();
        let job = match desk.turn(now) {
            Turn::Perform(job) => job,
            Turn::Wait(wait) => {
                // One waiting worker keeps the clock; the others wait to be woken.
                let until = later(now, wait);
                let wait = if desk.waiting.iter().flatten().any(|w| *w <= until) { IDLE_WAIT } else { wait };
                desk.waiting[worker] = Some(later(now, wait));
                desk = match shared.woken.wait_timeout(desk, wait) {
                    Ok((desk, _)) => desk,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                desk.waiting[worker] = None;
                continue;
            }
            Turn::End => {
                drop(desk);
                // The others may be waiting for the clock: they end as well now.
                shared.woken.notify_all();
                return;
            }
        };
        // Off to make a call: a further call due before the waiting workers wake goes to one.
        let wake = desk.must_wake_a_worker(now);
        drop(desk);
        if wake {
            shared.woken.notify_one();
        }
        let result = {
            let _performing = Performing(shared);
            shared.courier.perform(&job.call)
        };
        let (verdict, settled, delivered) = {
            let mut desk = shared.desk();
            let verdict = desk.schedule.finish(job, result, Instant::now());
            (verdict, desk.schedule.take_settled(), desk.schedule.take_delivered())
        };
        let (level, line) = verdict.log_line();
        log::log!(target: channel, level, "{line}");
        if level <= log::Level::Warn {
            shared.settle.probe.note_error(&line);
        }
        shared.settle.apply(settled);
        record_delivered(delivered);
        desk = shared.desk();
    }
}

/// Take in the replies on the desk, in order, with the desk unlocked but for queueing each.
/// Rendering reads the agent's text: a renderer's panic costs that reply (its messages stay
/// unanswered in the journal), not the worker or the replies after it.
fn take_in<'a>(shared: &'a Shared, mut desk: MutexGuard<'a, Desk>) -> MutexGuard<'a, Desk> {
    desk.taking_in = true;
    let incoming = std::mem::take(&mut desk.incoming);
    drop(desk);
    let taking_in = TakingIn(shared);
    for out in incoming {
        if contain(reply_fingerprint(&out), || queue(shared, out)).is_none() {
            log_unrenderable(&shared.settle.channel);
        }
    }
    drop(taking_in);
    shared.desk()
}

/// What names a reply for [`contain`]: its channel and text (a typing action has none, and a
/// tag of its own). A reply the renderer panicked on is skipped when the same answer comes
/// again after a restart (its messages stay in the journal and are prompted again).
fn reply_fingerprint(out: &Outbound) -> Fingerprint {
    let (kind, text): (&[u8], &str) = match out {
        Outbound::Text { text, .. }
        | Outbound::Draft { text, .. }
        | Outbound::Ask { text, .. }
        | Outbound::Edit { text, .. }
        | Outbound::ButtonAck { text, .. } => (b"text", text),
        Outbound::Typing { .. } => (b"typing", ""),
    };
    Fingerprint::of(&[out.channel().as_bytes(), text.as_bytes(), kind])
}

/// Marks the replies taken in, whatever happened while taking them in: with the mark left
/// set, no worker would take a reply in again.
struct TakingIn<'a>(&'a Shared);

impl Drop for TakingIn<'_> {
    fn drop(&mut self) {
        self.0.desk().taking_in = false;
    }
}

/// Queue a reply (or a typing indicator) from the core, with the files it names checked.
fn queue(shared: &Shared, out: Outbound) {
    let channel = shared.settle.channel.as_str();
    let chat = replied_chat(&out);
    let (out, attached) = match &shared.files {
        Some(files) => take_files(out, files, channel),
        None => (out, Vec::new()),
    };
    // Rendered before the desk is locked: the daemon's thread and the other workers wait
    // for that lock, and a long answer takes a while.
    let rendered = Rendered::new(shared.courier.as_ref(), out);
    let parts = shared.desk().schedule.push_rendered(rendered, attached, Instant::now());
    log_queued(channel, chat, parts);
}

/// The chat an answer goes to (not a typing indicator's, a question's or an edit's).
fn replied_chat(out: &Outbound) -> Option<String> {
    match out {
        Outbound::Text { chat, .. } => Some(chat.chat_id.clone()),
        _ => None,
    }
}

fn log_queued(channel: &str, chat: Option<String>, parts: usize) {
    if let Some(chat) = chat {
        if parts == 0 {
            log::warn!(target: channel, "an empty reply to chat {chat} was not sent");
        } else {
            log::debug!(target: channel, "reply to chat {chat} queued as {parts} message(s)");
        }
    }
}

fn log_unrenderable(channel: &str) {
    log::error!(target: channel, "a reply could not be rendered and is dropped (a bug: please report it)");
}

fn record_delivered(delivered: Vec<Delivered>) {
    for d in delivered {
        crate::audit_writer::record(crate::audit::AuditEvent::AnswerDelivered {
            channel: d.chat.channel,
            chat: d.chat.chat_id,
            bytes: d.bytes,
            parts: d.parts,
            duration_ms: u64::try_from(d.took.as_millis()).unwrap_or(u64::MAX),
        });
    }
}

/// The `[IMAGE: …]` / `[FILE: …]` markers of a reply: each file that passes the check
/// becomes an upload after the text; a refused one is named at the end of the text, with
/// the reason ("not sent: /etc/passwd is outside the allowed directories").
fn take_files(out: Outbound, files: &OutboundFiles, channel: &str) -> (Outbound, Vec<(PathBuf, FileKind)>) {
    let Outbound::Text { chat, text, answers } = out else { return (out, Vec::new()) };
    let (mut text, markers) = media::take_markers_owned(text);
    let mut attached = Vec::new();
    for marker in markers {
        match files.check(&marker.path) {
            Ok((path, _)) => attached.push((path, marker.kind)),
            Err(why) => {
                log::warn!(target: channel, "a file the agent asked to send to chat {} was refused: {why}", chat.chat_id);
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&format!("(not sent: {why})"));
            }
        }
    }
    (Outbound::Text { chat, text, answers }, attached)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::adapters::ThreadEnd;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Telegram's numbers: a burst of 4, one a second after it, 30 a second for the bot.
    const BURST_OF_4: PacingRules = PacingRules {
        chat_burst: 4,
        chat_refill: Duration::from_secs(1),
        bot_limit: 30,
        bot_window: Duration::from_secs(1),
    };

    /// A platform in a dozen lines: a part per paragraph, `**` as its markup, and every call
    /// recorded with the moment it was made.
    struct FakeCourier {
        rules: PacingRules,
        calls: Mutex<Vec<(Instant, Call)>>,
    }

    impl Courier for FakeCourier {
        fn render(&self, markdown: &str) -> Vec<Piece> {
            let paragraphs = markdown.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
            paragraphs.map(|p| Piece { text: p.to_string(), formatted: true }).collect()
        }
        fn plain(&self, piece: &Piece) -> Option<Piece> {
            piece.formatted.then(|| Piece { text: piece.text.replace("**", ""), formatted: false })
        }
        fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
            let mut calls = self.calls.lock().unwrap();
            calls.push((Instant::now(), call.clone()));
            Ok(Some(calls.len().to_string()))
        }
        fn pacing(&self) -> PacingRules {
            self.rules
        }
    }

    fn courier(rules: PacingRules) -> Arc<FakeCourier> {
        Arc::new(FakeCourier { rules, calls: Mutex::new(Vec::new()) })
    }

    fn schedule(rules: PacingRules) -> Schedule {
        Schedule::new(courier(rules))
    }

    fn chat(id: &str) -> ChatRef {
        ChatRef { channel: "fake".into(), chat_id: id.into(), thread_id: None }
    }

    fn text(to: &str, markdown: &str) -> Outbound {
        Outbound::Text { chat: chat(to), text: markdown.into(), answers: vec![] }
    }

    fn typing(to: &str) -> Outbound {
        Outbound::Typing { chat: chat(to) }
    }

    /// Markdown that renders to exactly three parts.
    const THREE_PARTS: &str = "**first**\n\n**second**\n\n**third**";

    fn transient() -> Failure {
        Failure::Transient("HTTP 502: Bad Gateway".into())
    }

    fn bad_markup() -> Failure {
        Failure::BadMarkup("HTTP 400: Bad Request: can't parse entities: Unsupported start tag".into())
    }

    /// The chat and visible text of a job.
    fn describe(job: &Job) -> (String, String) {
        match &job.call {
            Call::Typing(c) => (c.chat_id.clone(), "typing".into()),
            Call::Send { chat, piece, .. } => (chat.chat_id.clone(), piece.text.replace("**", "")),
            Call::Edit { chat, message_id, piece } => {
                (chat.chat_id.clone(), format!("edit {message_id}: {}", piece.text.replace("**", "")))
            }
            Call::Ack { callback_id, text } => (callback_id.clone(), format!("ack: {text}")),
            Call::SendFile { chat, path, kind, .. } => (chat.chat_id.clone(), format!("{kind:?} {}", path.display())),
        }
    }

    /// Files go after the reply's text, as parts of it: the reply settles once they are
    /// done with, and a file that fails for good does not hold the rest.
    #[test]
    fn files_follow_the_text_as_parts_of_the_reply() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        let answers = vec![MessageRef { chat_id: "1".into(), message_id: "9".into() }];
        let reply = Outbound::Text { chat: chat("1"), text: "**here**".into(), answers: answers.clone() };
        let files = vec![(PathBuf::from("/w/a.png"), FileKind::Image), (PathBuf::from("/w/b.txt"), FileKind::Document)];
        assert_eq!(s.push_with_files(reply, files, t0), 3);
        let first = s.next_job(t0).unwrap();
        assert_eq!(describe(&first).1, "here");
        s.finish(first, Ok(Some("1".into())), t0);
        let second = s.next_job(t0).unwrap();
        assert_eq!(describe(&second).1, "Image /w/a.png");
        let verdict = s.finish(second, Err(Failure::Rejected("too big".into())), t0);
        assert!(matches!(verdict, Verdict::Dropped { index: 2, of: 3, .. }), "{verdict:?}");
        assert!(s.take_settled().is_empty(), "settled before the last part");
        let third = s.next_job(t0).unwrap();
        assert_eq!(describe(&third).1, "Document /w/b.txt");
        s.finish(third, Ok(Some("3".into())), t0);
        assert_eq!(s.take_settled(), vec![Settled { answers, delivery: Delivery::Refused }]);
        // Only files, no text: still a reply.
        let bare = Outbound::Text { chat: chat("1"), text: String::new(), answers: vec![] };
        assert_eq!(s.push_with_files(bare, vec![(PathBuf::from("/w/c.gif"), FileKind::Image)], t0), 1);
    }

    /// Every job that may go at `now`, each answered at once with `Ok(None)`, in order.
    fn send_all(s: &mut Schedule, now: Instant) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some(job) = s.next_job(now) {
            sent.push(describe(&job).1);
            s.finish(job, Ok(None), now);
        }
        sent
    }

    #[test]
    fn questions_carry_buttons_and_their_edit_replaces_the_sent_message() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        let buttons = vec![("✅ Allow".to_string(), "perm:1:once".to_string())];
        let ask = Outbound::Ask { chat: chat("1"), key: "perm:1".into(), text: "Permission\n\nneeded".into(), buttons };
        assert_eq!(s.push(ask, t0), 2);
        // The buttons go with the last part, the one people see last.
        let job = s.next_job(t0).unwrap();
        let Call::Send { buttons, .. } = &job.call else { panic!("{job:?}") };
        assert!(buttons.is_empty());
        s.finish(job, Ok(Some("76".into())), t0);
        let job = s.next_job(t0).unwrap();
        let Call::Send { buttons, .. } = &job.call else { panic!("{job:?}") };
        assert_eq!(buttons.len(), 1);
        s.finish(job, Ok(Some("77".into())), t0);
        // A button press is answered before anything else.
        s.push(Outbound::ButtonAck { channel: "fake".into(), callback_id: "cb".into(), text: "ok".into() }, t0);
        s.push(Outbound::Edit { chat: chat("1"), key: "perm:1".into(), text: "approved".into() }, t0);
        let ack = s.next_job(t0).unwrap();
        assert_eq!(describe(&ack), ("cb".to_string(), "ack: ok".to_string()));
        assert_eq!(s.finish(ack, Ok(None), t0), Verdict::Acked);
        let edit = s.next_job(t0).unwrap();
        assert_eq!(describe(&edit), ("1".to_string(), "edit 77: approved".to_string()));
        // A retried edit is still the same edit.
        let verdict = s.finish(edit, Err(transient()), t0);
        assert!(matches!(verdict, Verdict::Retrying { .. }), "{verdict:?}");
        let edit = s.next_job(t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(describe(&edit), ("1".to_string(), "edit 77: approved".to_string()));
        let verdict = s.finish(edit, Ok(None), t0);
        assert!(matches!(verdict, Verdict::Delivered { .. }), "{verdict:?}");
        // An edit of a message never sent goes as a new message.
        let later = t0 + Duration::from_secs(10);
        s.push(Outbound::Edit { chat: chat("1"), key: "perm:9".into(), text: "late".into() }, later);
        let job = s.next_job(later).unwrap();
        assert!(matches!(job.call, Call::Send { .. }), "{job:?}");
    }

    #[test]
    fn remembered_message_ids_are_bounded() {
        let mut now = Instant::now();
        let mut s = schedule(PacingRules::UNLIMITED);
        for n in 0..REMEMBERED_KEYS + 10 {
            s.push(Outbound::Ask { chat: chat("1"), key: format!("k{n}"), text: "q".into(), buttons: vec![] }, now);
            let job = s.next_job(now).unwrap();
            s.finish(job, Ok(Some(format!("id{n}"))), now);
            now += ms(1);
        }
        assert_eq!(s.sent.len(), REMEMBERED_KEYS);
        s.push(Outbound::Edit { chat: chat("1"), key: "k0".into(), text: "forgotten".into() }, now);
        s.push(Outbound::Edit { chat: chat("1"), key: "k520".into(), text: "known".into() }, now);
        assert_eq!(send_all(&mut s, now), ["forgotten", "edit id520: known"]);
    }

    /// No queue and no button answer left: a chat done with is forgotten at once.
    fn nothing_left(s: &Schedule) -> bool {
        s.chats.is_empty() && s.acks.is_empty()
    }

    /// Send every part of whatever is queued at `t`, answering each with `result`.
    fn drain(s: &mut Schedule, t: &mut Instant, result: impl Fn() -> Result<Option<String>, Failure>) {
        for _ in 0..100 {
            *t += Duration::from_secs(40);
            match s.next_job(*t) {
                Some(job) => {
                    s.finish(job, result(), *t);
                }
                None if s.is_empty(*t) => break,
                None => {}
            }
        }
    }

    #[test]
    fn a_reply_is_settled_once_every_part_is_done_with() {
        let refs = |ids: &[&str]| {
            ids.iter().map(|id| MessageRef { chat_id: "1".into(), message_id: id.to_string() }).collect::<Vec<_>>()
        };
        let reply = |to: &str, markdown: &str, ids: &[&str]| Outbound::Text {
            chat: chat(to),
            text: markdown.into(),
            answers: refs(ids),
        };
        let mut t = Instant::now();
        let mut s = schedule(BURST_OF_4);
        // Three parts: settled only after the third, as delivered.
        assert_eq!(s.push(reply("1", THREE_PARTS, &["a", "b"]), t), 3);
        let job = s.next_job(t).unwrap();
        s.finish(job, Ok(None), t);
        assert!(s.take_settled().is_empty(), "one part of three is not the reply");
        assert!(s.take_delivered().is_empty());
        drain(&mut s, &mut t, || Ok(None));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["a", "b"]), delivery: Delivery::Sent }]);
        // The audit log's record: the whole reply, its parts, from queued to the last part.
        // (`drain` finished the last two parts 40 s and 80 s after t0.)
        let took = Duration::from_secs(80);
        let delivered = Delivered { chat: chat("1"), bytes: THREE_PARTS.len(), parts: 3, took };
        assert_eq!(s.take_delivered(), vec![delivered]);
        // Lost after every retry: the messages stay unanswered.
        s.push(reply("1", "short", &["c"]), t);
        drain(&mut s, &mut t, || Err(transient()));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["c"]), delivery: Delivery::Lost }]);
        assert!(s.take_delivered().is_empty(), "a lost reply was not delivered");
        // Blocked on the first of three parts: the rest is dropped, the reply is done with.
        s.push(reply("1", THREE_PARTS, &["d"]), t);
        drain(&mut s, &mut t, || Err(Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into())));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["d"]), delivery: Delivery::Refused }]);
        // Refused markup goes again as plain text: still one reply, delivered.
        s.push(reply("1", "**bold**", &["e"]), t);
        let job = s.next_job(t + Duration::from_secs(40)).unwrap();
        s.finish(job, Err(bad_markup()), t);
        assert!(s.take_settled().is_empty());
        drain(&mut s, &mut t, || Ok(None));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["e"]), delivery: Delivery::Sent }]);
        // Nothing to send: settled at once.
        assert_eq!(s.push(reply("1", "   ", &["f"]), t), 0);
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["f"]), delivery: Delivery::Refused }]);
    }

    #[test]
    fn the_parts_of_one_long_answer_go_out_at_once() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        assert_eq!(s.push(text("1", THREE_PARTS), t0), 3);
        let job = s.next_job(t0).unwrap();
        assert_eq!(describe(&job).1, "first");
        // The chat waits for the result before its next part (the parts stay in order)...
        assert_eq!(s.next_job(t0), None);
        assert_eq!(s.next_wake(t0), None);
        let verdict = s.finish(job, Ok(None), t0 + ms(40));
        assert_eq!(verdict, Verdict::Delivered { chat: "1".into(), index: 1, of: 3, formatted: true });
        // ... and no longer: no gap between the parts.
        assert_eq!(s.next_wake(t0 + ms(40)), Some(t0 + ms(40)));
        let job = s.next_job(t0 + ms(40)).unwrap();
        assert_eq!(describe(&job).1, "second");
        s.finish(job, Ok(None), t0 + ms(80));
        let job = s.next_job(t0 + ms(80)).unwrap();
        assert_eq!(describe(&job).1, "third");
        s.finish(job, Ok(None), t0 + ms(120));
        assert!(nothing_left(&s));
        assert_eq!(s.next_wake(t0 + ms(120)), None);
    }

    #[test]
    fn a_burst_beyond_the_bucket_waits_for_the_refill() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        for n in 1..=6 {
            s.push(text("1", &format!("answer {n}")), t0);
        }
        s.push(text("2", "other chat"), t0);
        let mut sent = send_all(&mut s, t0);
        sent.sort();
        assert_eq!(sent, ["answer 1", "answer 2", "answer 3", "answer 4", "other chat"]);
        // The bucket of chat 1 is empty: one more per second.
        assert_eq!(s.next_wake(t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(send_all(&mut s, t0 + ms(999)), Vec::<String>::new());
        assert_eq!(send_all(&mut s, t0 + ms(1000)), ["answer 5"]);
        assert_eq!(send_all(&mut s, t0 + ms(1500)), Vec::<String>::new());
        assert_eq!(send_all(&mut s, t0 + ms(2000)), ["answer 6"]);
        assert!(nothing_left(&s));
    }

    #[test]
    fn a_fast_answer_right_after_typing_goes_out_at_once() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        // Typing, repeated as a long turn would, takes nothing from the chat's bucket.
        for n in 0..6 {
            let at = t0 + ms(n * 4);
            s.push(typing("1"), at);
            assert_eq!(send_all(&mut s, at), ["typing"]);
        }
        s.push(text("1", THREE_PARTS), t0 + ms(30));
        s.push(text("1", "and one more"), t0 + ms(30));
        assert_eq!(send_all(&mut s, t0 + ms(30)), ["first", "second", "third", "and one more"]);
    }

    #[test]
    fn a_failing_chat_does_not_hold_up_another() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(text("1", "to one"), t0);
        s.push(text("2", "to two"), t0);
        let one = s.next_job(t0).unwrap();
        let two = s.next_job(t0).unwrap();
        assert_eq!((describe(&one).0, describe(&two).0), ("1".into(), "2".into()));
        let Verdict::Retrying { attempt: 1, delay, .. } = s.finish(one, Err(transient()), t0 + ms(10)) else {
            panic!()
        };
        assert!(delay <= RETRY_BASE && delay >= RETRY_BASE * 3 / 4, "{delay:?}");
        s.push(text("2", "two again"), t0 + ms(20));
        s.finish(two, Ok(None), t0 + ms(20));
        // Chat 2's next reply goes at once; chat 1 waits for its retry.
        assert_eq!(send_all(&mut s, t0 + ms(20)), ["two again"]);
        assert_eq!(s.next_wake(t0 + ms(20)), Some(t0 + ms(10) + delay));
        assert_eq!(send_all(&mut s, t0 + ms(10) + delay), ["to one"]);
    }

    #[test]
    fn failures_decide_what_happens_to_the_part() {
        // (failure on part 1 of 3, expected verdict kind, what is queued after, is the front formatted)
        let cases: Vec<(Failure, &str, Vec<&str>, bool)> = vec![
            (bad_markup(), "PlainFallback", vec!["first", "**second**", "**third**"], false),
            (transient(), "Retrying", vec!["**first**", "**second**", "**third**"], true),
            (Failure::Conflict("x".into()), "Retrying", vec!["**first**", "**second**", "**third**"], true),
            (Failure::RateLimited(ms(3000)), "RateLimited", vec!["**first**", "**second**", "**third**"], true),
            (Failure::BotRateLimited(ms(3000)), "RateLimited", vec!["**first**", "**second**", "**third**"], true),
            (
                Failure::Rejected("HTTP 400: message is too long".into()),
                "Dropped",
                vec!["**second**", "**third**"],
                true,
            ),
            (Failure::Unauthorized("HTTP 401".into()), "Dropped", vec!["**second**", "**third**"], true),
            (
                Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into()),
                "Blocked",
                vec!["later"],
                true,
            ),
        ];
        for (failure, kind, queued, front_formatted) in cases {
            let t0 = Instant::now();
            let mut s = schedule(BURST_OF_4);
            s.push(text("1", THREE_PARTS), t0);
            s.push(text("1", "later"), t0);
            let job = s.next_job(t0).unwrap();
            let verdict = s.finish(job, Err(failure.clone()), t0);
            assert!(format!("{verdict:?}").starts_with(kind), "{failure:?}: {verdict:?}");
            let pieces = s.queued(&chat("1"));
            let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
            let mut expected = queued.clone();
            if kind != "Blocked" {
                expected.push("later");
            }
            assert_eq!(texts, expected, "{failure:?}");
            assert_eq!(pieces[0].formatted, front_formatted, "{failure:?}");
        }
    }

    #[test]
    fn plain_fallback_goes_once() {
        let t0 = Instant::now();
        let mut s = schedule(PacingRules::UNLIMITED);
        s.push(text("1", "**a** b"), t0);
        let job = s.next_job(t0).unwrap();
        s.finish(job, Err(bad_markup()), t0);
        let job = s.next_job(t0).unwrap();
        let Call::Send { piece, .. } = &job.call else { panic!() };
        assert_eq!(piece, &Piece { text: "a b".into(), formatted: false });
        // Plain text refused as well: dropped, not resent forever.
        let verdict = s.finish(job, Err(bad_markup()), t0);
        assert!(matches!(verdict, Verdict::Dropped { index: 1, of: 1, .. }), "{verdict:?}");
        assert!(nothing_left(&s));
    }

    #[test]
    fn transient_failures_are_retried_then_the_part_is_lost() {
        let t0 = Instant::now();
        let mut s = schedule(PacingRules::UNLIMITED);
        s.push(text("1", THREE_PARTS), t0);
        let mut now = t0;
        let mut last_delay = Duration::ZERO;
        for attempt in 1..SEND_ATTEMPTS {
            let job = s.next_job(now).unwrap();
            assert_eq!(describe(&job).1, "first");
            let Verdict::Retrying { attempt: a, delay, .. } = s.finish(job, Err(transient()), now) else { panic!() };
            assert_eq!(a, attempt);
            assert!(delay > last_delay * 5 / 4, "backoff grows: {delay:?} after {last_delay:?}");
            last_delay = delay;
            assert_eq!(s.next_job(now + delay - ms(1)), None, "not before the delay");
            assert_eq!(s.next_wake(now), Some(now + delay));
            now += delay;
        }
        let job = s.next_job(now).unwrap();
        let verdict = s.finish(job, Err(transient()), now);
        assert!(matches!(verdict, Verdict::Lost { index: 1, of: 3, .. }), "{verdict:?}");
        // The next part goes at once, with a fresh count.
        let job = s.next_job(now).unwrap();
        assert_eq!(describe(&job).1, "second");
        let Verdict::Retrying { attempt: 1, delay, .. } = s.finish(job, Err(transient()), now) else { panic!() };
        assert!(delay <= RETRY_BASE);
    }

    #[test]
    fn rate_limits_are_waited_out_without_counting_up_to_a_cap() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(text("1", "hi"), t0);
        let mut now = t0;
        for _ in 0..RATE_LIMIT_WAITS {
            let job = s.next_job(now).unwrap();
            let verdict = s.finish(job, Err(Failure::RateLimited(Duration::from_secs(7))), now);
            assert!(matches!(verdict, Verdict::RateLimited { wait, .. } if wait == Duration::from_secs(7)));
            assert_eq!(s.next_job(now + ms(6999)), None);
            assert_eq!(s.next_wake(now), Some(now + Duration::from_secs(7)));
            now += Duration::from_secs(7);
        }
        // Past the cap, a 429 counts as a failed attempt, and still waits `retry_after`.
        let job = s.next_job(now).unwrap();
        let verdict = s.finish(job, Err(Failure::RateLimited(Duration::from_secs(7))), now);
        assert!(
            matches!(verdict, Verdict::Retrying { attempt: 1, delay, .. } if delay == Duration::from_secs(7)),
            "{verdict:?}"
        );
        let job = s.next_job(now + Duration::from_secs(7)).unwrap();
        let verdict = s.finish(job, Ok(None), now);
        assert_eq!(verdict, Verdict::Delivered { chat: "1".into(), index: 1, of: 1, formatted: true });
    }

    #[test]
    fn retry_after_slows_that_chat_exactly_as_asked_and_no_other() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(text("1", THREE_PARTS), t0);
        s.push(text("2", "to two"), t0);
        let one = s.next_job(t0).unwrap();
        assert_eq!(describe(&one).1, "first");
        s.finish(one, Err(Failure::RateLimited(Duration::from_secs(3))), t0 + ms(10));
        // Chat 2 is not held; chat 1 is, typing included, for exactly 3 s.
        s.push(typing("1"), t0 + ms(20));
        assert_eq!(send_all(&mut s, t0 + ms(20)), ["to two"]);
        assert_eq!(s.next_wake(t0 + ms(20)), Some(t0 + ms(3010)));
        assert_eq!(send_all(&mut s, t0 + ms(3009)), Vec::<String>::new());
        // Then the rest of the answer goes at once, and the typing asked for 3 s ago (still
        // fresh) after it.
        assert_eq!(send_all(&mut s, t0 + ms(3010)), ["first", "second", "third", "typing"]);
    }

    #[test]
    fn a_limit_for_the_whole_bot_holds_every_chat() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(text("1", "to one"), t0);
        let one = s.next_job(t0).unwrap();
        s.push(text("2", "to two"), t0);
        s.push(Outbound::ButtonAck { channel: "fake".into(), callback_id: "cb".into(), text: "ok".into() }, t0);
        let verdict = s.finish(one, Err(Failure::BotRateLimited(Duration::from_secs(2))), t0 + ms(10));
        assert!(matches!(verdict, Verdict::RateLimited { whole_bot: true, .. }), "{verdict:?}");
        assert_eq!(send_all(&mut s, t0 + ms(2009)), Vec::<String>::new());
        assert_eq!(s.next_wake(t0 + ms(20)), Some(t0 + ms(2010)));
        let mut sent = send_all(&mut s, t0 + ms(2010));
        sent.sort();
        assert_eq!(sent, ["ack: ok", "to one", "to two"]);
    }

    /// When the bot's budget is short, an answer that may go takes the slot before another
    /// chat's "typing…", which would take a text's place.
    #[test]
    fn an_answer_goes_before_another_chats_typing() {
        let t0 = Instant::now();
        let one_a_second = PacingRules { chat_burst: 4, chat_refill: ms(1000), bot_limit: 1, bot_window: ms(1000) };
        let mut s = schedule(one_a_second);
        s.push(typing("1"), t0);
        s.push(text("2", "to two"), t0);
        assert_eq!(send_all(&mut s, t0), ["to two"]);
        // The typing goes with the next slot, still fresh.
        assert_eq!(s.next_wake(t0), Some(t0 + ms(1000)));
        assert_eq!(send_all(&mut s, t0 + ms(1000)), ["typing"]);
    }

    #[test]
    fn typing_is_not_held_back_and_goes_stale() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(typing("1"), t0);
        s.push(text("1", THREE_PARTS), t0);
        // A reply cancels the typing asked for before it.
        let part = s.next_job(t0).unwrap();
        assert_eq!(describe(&part).1, "first");
        // A new turn in the same chat while the long reply is still going out: typing waits
        // for the call in flight (one call per chat keeps their order) and for the parts that
        // may go now (a message sent ends an indicator shown before it), not for the bucket.
        s.push(typing("1"), t0 + ms(10));
        assert_eq!(s.next_job(t0 + ms(10)), None);
        s.finish(part, Ok(None), t0 + ms(20));
        assert_eq!(send_all(&mut s, t0 + ms(20)), ["second", "third", "typing"]);
        s.push(typing("1"), t0 + ms(20));
        let job = s.next_job(t0 + ms(20)).unwrap();
        assert_eq!(job.call, Call::Typing(chat("1")));
        // While it is in flight, nothing else goes to that chat; the latest request wins.
        s.push(typing("1"), t0 + ms(30));
        assert_eq!(s.next_job(t0 + ms(30)), None);
        assert_eq!(s.finish(job, Ok(None), t0 + ms(40)), Verdict::TypingShown);
        let job = s.next_job(t0 + ms(40)).unwrap();
        assert_eq!(job.call, Call::Typing(chat("1")));
        let verdict = s.finish(job, Err(transient()), t0 + ms(50));
        assert!(matches!(verdict, Verdict::TypingFailed { .. }), "not retried: {verdict:?}");
        // Typing asked for more than TYPING_FRESH ago is dropped, not sent late.
        s.push(typing("2"), t0 + ms(50));
        let late = t0 + ms(50) + TYPING_FRESH + ms(1);
        let mut sent = Vec::new();
        while let Some(job) = s.next_job(late) {
            sent.push(describe(&job));
            s.finish(job, Ok(None), late);
        }
        assert_eq!(sent, Vec::<(String, String)>::new());
        // Another chat's typing is not held back by chat 1's call in flight.
        s.push(text("1", "more"), late);
        let busy = s.next_job(late).unwrap();
        s.push(typing("3"), late);
        assert_eq!(s.next_job(late).map(|j| j.call), Some(Call::Typing(chat("3"))));
        s.finish(busy, Ok(None), late);
    }

    #[test]
    fn a_chat_left_with_stale_typing_wakes_no_one_and_is_forgotten_within_a_tidy() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        s.push(typing("1"), t0);
        s.push(typing("2"), t0);
        let job = s.next_job(t0).unwrap();
        s.finish(job, Ok(None), t0);
        // Chat 1's typing went and its queue with it; chat 2's waits for the bot's budget.
        assert_eq!(s.chats.keys().map(|c| c.chat_id.as_str()).collect::<Vec<_>>(), ["2"]);
        s.pacer.hold_bot(t0 + TYPING_FRESH + ms(100));
        let stale = t0 + TYPING_FRESH + ms(1);
        // Stale: no worker is woken for it (one would wake, find nothing, and wake again).
        assert_eq!(s.next_wake(stale), None);
        assert!(s.is_empty(stale));
        // Kept until the walk that forgets it, at most TIDY_EVERY after the last one.
        let walk = t0 + TIDY_EVERY.max(TYPING_FRESH + ms(200));
        assert_eq!(s.next_job(walk), None);
        assert!(nothing_left(&s));
    }

    #[test]
    fn drafts_and_empty_replies_queue_nothing() {
        let t0 = Instant::now();
        let mut s = schedule(BURST_OF_4);
        assert_eq!(s.push(Outbound::Draft { chat: chat("1"), text: "so far".into() }, t0), 0);
        assert_eq!(s.push(text("1", "  \n "), t0), 0);
        assert!(nothing_left(&s));
        assert_eq!(s.next_job(t0), None);
    }

    /// [`Schedule::next_wake`] as it was before it stopped at the bot's budget: every chat asked.
    fn next_wake_asking_every_chat(s: &Schedule, now: Instant) -> Option<Instant> {
        let acks = (!s.acks.is_empty()).then(|| s.pacer.bot_ready_at(now));
        let chats = s.chats.iter().filter_map(|(chat, q)| {
            let typing = q.wants_typing(now).then(|| s.pacer.action_ready_at(chat, now));
            let part = (!q.busy() && !q.parts.is_empty())
                .then(|| q.not_before.unwrap_or(now).max(s.pacer.ready_at(chat, now)));
            typing.into_iter().chain(part).min()
        });
        acks.into_iter().chain(chats).min()
    }

    /// (when each waiting worker wakes, what is queued, whether one must be woken now)
    #[test]
    fn a_waiting_worker_is_woken_only_for_a_call_due_before_any_waiting_worker_wakes() {
        let t0 = Instant::now();
        let one_a_300ms = PacingRules { chat_burst: 1, chat_refill: ms(300), bot_limit: 30, bot_window: ms(1000) };
        // Queued: nothing; "typing…" (due now); a second part that the chat's bucket holds
        // until 300 ms.
        let queued = |what: &str| {
            let mut s = schedule(one_a_300ms);
            match what {
                "typing" => {
                    s.push(typing("1"), t0);
                }
                "held" => {
                    s.push(text("1", "one"), t0);
                    s.push(text("1", "two"), t0);
                    assert_eq!(send_all(&mut s, t0), ["one"]);
                    assert_eq!(s.next_wake(t0), Some(t0 + ms(300)));
                }
                _ => {}
            }
            s
        };
        let minute = Some(t0 + IDLE_WAIT);
        let cases = [
            ([None, None, None], "typing", false), // All busy: the first one free takes it.
            ([minute, None, None], "nothing", false),
            ([minute, None, None], "typing", true),
            ([minute, minute, None], "held", true),
            ([Some(t0 + ms(200)), minute, None], "held", false), // One wakes before it is due.
            ([Some(t0 + ms(300)), None, None], "held", false),
            ([Some(t0 + ms(301)), None, None], "held", true),
        ];
        for (waiting, what, wake) in cases {
            let desk = Desk {
                schedule: queued(what),
                open: true,
                drain_until: None,
                busy: 0,
                waiting,
                incoming: VecDeque::new(),
                taking_in: false,
            };
            assert_eq!(desk.must_wake_a_worker(t0), wake, "waiting until {waiting:?}, queued {what}");
        }
    }

    #[test]
    fn the_next_wake_is_the_earliest_of_every_chat_also_behind_the_bots_budget() {
        let t0 = Instant::now();
        let rules = PacingRules { chat_burst: 2, chat_refill: ms(1000), bot_limit: 5, bot_window: ms(1000) };
        let mut s = schedule(rules);
        for (i, to) in ["a", "b", "c", "d", "e", "f", "g"].into_iter().enumerate() {
            if i % 2 == 0 {
                s.push(typing(to), t0);
            }
            for n in 0..=(i % 3) {
                s.push(text(to, &format!("{to} {n}")), t0);
            }
        }
        let mut now = t0;
        let mut steps = 0;
        while !s.is_empty(now) && steps < 100 {
            steps += 1;
            let mut batch = Vec::new();
            while let Some(job) = s.next_job(now) {
                batch.push(job);
            }
            // Some finish at once, the rest a little later: chats busy, waiting and held.
            let later: Vec<Job> = batch.split_off(batch.len() / 2);
            for job in batch {
                s.finish(job, Ok(None), now);
            }
            assert_eq!(s.next_wake(now), next_wake_asking_every_chat(&s, now), "step {steps}");
            for job in later {
                s.finish(job, Ok(None), now + ms(5));
            }
            let wake = s.next_wake(now + ms(5));
            assert_eq!(wake, next_wake_asking_every_chat(&s, now + ms(5)), "step {steps}");
            now = wake.unwrap_or(now + ms(5)).max(now + ms(5));
        }
        assert!(nothing_left(&s), "all sent in {steps} steps");
    }

    #[test]
    fn chats_take_turns() {
        let t0 = Instant::now();
        // No per-chat limit, three calls per second for the bot.
        let rules = PacingRules { chat_burst: 1, chat_refill: Duration::ZERO, bot_limit: 3, bot_window: ms(1000) };
        let mut s = schedule(rules);
        for to in ["a", "b", "c", "d"] {
            s.push(text(to, &format!("{to} one")), t0);
            s.push(text(to, &format!("{to} two")), t0);
        }
        let mut order = Vec::new();
        let mut now = t0;
        while !s.is_empty(now) {
            let mut batch = Vec::new();
            while let Some(job) = s.next_job(now) {
                batch.push(job);
            }
            assert!(batch.len() <= 3, "bot budget: {batch:?}");
            for job in batch {
                order.push(describe(&job).1);
                s.finish(job, Ok(None), now);
            }
            now = s.next_wake(now).unwrap_or(now);
        }
        assert_eq!(order, ["a one", "b one", "c one", "d one", "a two", "b two", "c two", "d two"]);
        assert!(now >= t0 + ms(2000), "eight sends at three a second take over two seconds");
    }

    #[test]
    fn log_lines() {
        let f = transient;
        let cases = vec![
            (
                Verdict::Retrying { chat: "111".into(), index: 1, of: 2, attempt: 1, delay: ms(480), failure: f() },
                log::Level::Warn,
                "send to chat 111 failed (attempt 1/6): HTTP 502: Bad Gateway; part 1/2 goes again in 480 ms",
            ),
            (
                Verdict::Lost { chat: "111".into(), index: 2, of: 2, failure: f() },
                log::Level::Error,
                "send to chat 111 gave up after 6 attempts: HTTP 502: Bad Gateway; part 2/2 of the reply is lost",
            ),
            (
                Verdict::PlainFallback { chat: "5".into(), index: 1, of: 1, failure: bad_markup() },
                log::Level::Warn,
                "send to chat 5: markup refused: HTTP 400: Bad Request: can't parse entities: Unsupported start \
                 tag; resending part 1/1 as plain text",
            ),
            (
                Verdict::Blocked {
                    chat: "5".into(),
                    index: 1,
                    of: 3,
                    dropped: 2,
                    failure: Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into()),
                },
                log::Level::Error,
                "send to chat 5 failed: forbidden: HTTP 403: Forbidden: bot was blocked by the user; the bot \
                 may not write there, so part 1/3 and the 2 after it are dropped",
            ),
            (
                Verdict::RateLimited {
                    chat: "5".into(),
                    index: 2,
                    of: 3,
                    wait: Duration::from_secs(4),
                    whole_bot: false,
                },
                log::Level::Warn,
                "send to chat 5 rate limited (429): part 2/3 goes again in 4 s",
            ),
            (
                Verdict::RateLimited {
                    chat: "5".into(),
                    index: 2,
                    of: 3,
                    wait: Duration::from_secs(4),
                    whole_bot: true,
                },
                log::Level::Warn,
                "send to chat 5 rate limited (429) for the whole bot: part 2/3 goes again in 4 s",
            ),
        ];
        for (verdict, level, line) in cases {
            assert_eq!(verdict.log_line(), (level, line.to_string()));
        }
    }

    /// The threads end to end with the fake platform: a three-part answer goes out in order
    /// with no gaps, the probe counts it, and the outbox drains and ends when closed.
    #[test]
    fn a_fake_platform_gets_its_replies_through_the_threads() {
        let fake = courier(BURST_OF_4);
        let probe = Probe::new("fake", false);
        let settle = Settle { channel: "fake".into(), journal: None, probe: probe.clone() };
        let (supervisor, _ended) = Supervisor::new();
        let Outbox { intake, drained } = spawn(fake.clone(), settle, &supervisor).unwrap();
        let answers = vec![MessageRef { chat_id: "1".into(), message_id: "9".into() }];
        intake.send(typing("1"));
        intake.send(Outbound::Text { chat: chat("1"), text: THREE_PARTS.into(), answers });
        close_and_drain(intake, drained);
        let calls = fake.calls.lock().unwrap().clone();
        let texts: Vec<String> = calls
            .iter()
            .filter_map(|(_, call)| match call {
                Call::Send { piece, .. } => Some(piece.text.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["**first**", "**second**", "**third**"]);
        let span = calls.last().unwrap().0 - calls[0].0;
        assert!(span < ms(500), "the parts went out {span:?} apart from first to last");
        assert_eq!(probe.with(|h, _| h.messages_out), 1, "one reply delivered");
    }

    /// A courier for the thread tests: a text ending in ", slow" waits for `release`, the
    /// first text ending in ", limited" is rate limited for [`LIMITED_FOR`], a call to chat
    /// "boom" panics, a text ending in ", unrenderable" panics its renderer, one ending in
    /// ", slow to render" is rendered once `release` is sent, every other call is recorded as
    /// made.
    struct GatedCourier {
        release: Receiver<()>,
        sent: Mutex<Vec<String>>,
        pacing: PacingRules,
        limited: std::sync::atomic::AtomicBool,
    }

    const LIMITED_FOR: Duration = Duration::from_millis(300);

    impl Courier for GatedCourier {
        fn render(&self, markdown: &str) -> Vec<Piece> {
            assert!(!markdown.ends_with(", unrenderable"), "a renderer bug");
            if markdown.ends_with(", slow to render") {
                let _ = self.release.recv_timeout(Duration::from_secs(10));
            }
            vec![Piece { text: markdown.to_string(), formatted: false }]
        }
        fn plain(&self, _: &Piece) -> Option<Piece> {
            None
        }
        fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
            let Call::Send { chat, piece, .. } = call else { return Ok(None) };
            if piece.text.ends_with(", slow") {
                let _ = self.release.recv_timeout(Duration::from_secs(10));
            }
            if chat.chat_id == "boom" {
                panic!("a courier bug");
            }
            if piece.text.ends_with(", limited") && !self.limited.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(Failure::RateLimited(LIMITED_FOR));
            }
            self.sent.lock().unwrap().push(piece.text.clone());
            Ok(None)
        }
        fn pacing(&self) -> PacingRules {
            self.pacing
        }
    }

    fn gated() -> (Arc<GatedCourier>, crossbeam_channel::Sender<()>) {
        gated_with(BURST_OF_4)
    }

    fn gated_with(pacing: PacingRules) -> (Arc<GatedCourier>, crossbeam_channel::Sender<()>) {
        let (release_tx, release) = crossbeam_channel::bounded(1);
        (
            Arc::new(GatedCourier { release, sent: Mutex::new(Vec::new()), pacing, limited: Default::default() }),
            release_tx,
        )
    }

    fn start(courier: Arc<GatedCourier>) -> (Intake, Receiver<()>, Receiver<ThreadEnd>) {
        let settle = Settle { channel: "fake".into(), journal: None, probe: Probe::new("fake", false) };
        let (supervisor, ended) = Supervisor::new();
        let Outbox { intake, drained } = spawn(courier, settle, &supervisor).unwrap();
        (intake, drained, ended)
    }

    /// Closes the outbox and waits at most 20 s for its workers to end.
    fn close_and_drain(intake: Intake, drained: Receiver<()>) {
        drop(intake);
        let ended = drained.recv_timeout(Duration::from_secs(20));
        assert_eq!(ended, Err(crossbeam_channel::RecvTimeoutError::Disconnected), "the outbox did not drain");
    }

    /// Waits at most 10 s for `sent` to hold `text`.
    fn wait_sent(courier: &GatedCourier, text: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if courier.sent.lock().unwrap().iter().any(|t| t == text) {
                return true;
            }
            std::thread::sleep(ms(5));
        }
        false
    }

    /// Three workers take replies from the core's queue; one chat's replies still go out in
    /// the order the core sent them (a worker that took a reply and was put aside before it
    /// queued it let the next reply, taken by another worker, overtake it).
    #[test]
    fn one_chats_replies_keep_the_order_they_were_sent_in() {
        const REPLIES: usize = 3000;
        let (courier, _release) = gated_with(PacingRules::UNLIMITED);
        let (intake, drained, _ended) = start(courier.clone());
        // Every seventh is long: a worker takes it in, while the short ones are queued at once
        // by the caller.
        let reply = |n: usize| match n % 7 {
            0 => format!("reply {n} {}", "x".repeat(QUEUED_AT_ONCE_MAX)),
            _ => format!("reply {n}"),
        };
        for n in 0..REPLIES {
            intake.send(text("one", &reply(n)));
            if n % 3 == 0 {
                std::thread::yield_now(); // Let the workers wait for the queue now and then.
            }
        }
        close_and_drain(intake, drained);
        let sent = courier.sent.lock().unwrap().clone();
        let expected: Vec<String> = (0..REPLIES).map(reply).collect();
        let first_wrong = sent.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            first_wrong,
            None,
            "out of order from there: {:?}",
            first_wrong.map(|i| sent[i..(i + 3).min(sent.len())].iter().map(|t| t.get(..12)).collect::<Vec<_>>())
        );
        assert_eq!(sent.len(), REPLIES);
    }

    /// A rate-limited call goes again when asked, though the other workers sleep for a minute
    /// with nothing else due: the worker that made the call keeps that time itself.
    #[test]
    fn a_rate_limited_call_goes_again_when_asked_while_the_others_sleep() {
        let (courier, _release) = gated();
        let (intake, drained, _ended) = start(courier.clone());
        // Settled: every worker waits, for a minute.
        intake.send(text("other", "first"));
        assert!(wait_sent(&courier, "first"));
        std::thread::sleep(ms(100));
        let queued = Instant::now();
        intake.send(text("limited", "once more, limited"));
        assert!(wait_sent(&courier, "once more, limited"), "never sent again");
        let took = queued.elapsed();
        assert!(took >= LIMITED_FOR, "sent again after {took:?}, before the {LIMITED_FOR:?} asked");
        assert!(took < ms(900), "sent again after {took:?}, {LIMITED_FOR:?} asked");
        close_and_drain(intake, drained);
    }

    #[test]
    fn a_slow_call_holds_up_its_chat_only() {
        let (courier, release) = gated();
        let (intake, drained, _ended) = start(courier.clone());
        intake.send(text("slow", "first, slow"));
        intake.send(text("slow", "second, after it"));
        intake.send(text("fast", "meanwhile"));
        assert!(wait_sent(&courier, "meanwhile"), "another chat's reply waited for the slow call");
        assert!(!courier.sent.lock().unwrap().iter().any(|t| t == "second, after it"), "went before the slow part");
        release.send(()).unwrap();
        assert!(wait_sent(&courier, "second, after it"));
        close_and_drain(intake, drained);
        let sent = courier.sent.lock().unwrap().clone();
        assert_eq!(sent, ["meanwhile", "first, slow", "second, after it"]);
    }

    /// A call that panics ends its worker (the supervisor hears of it and restarts the
    /// channel), but does not keep the others from delivering and then ending.
    #[test]
    fn a_call_that_panics_does_not_keep_the_others_from_ending() {
        let (courier, _release) = gated();
        let (intake, drained, ended) = start(courier.clone());
        intake.send(text("boom", "never sent"));
        let end = ended.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(end.panicked, "{end:?}");
        intake.send(text("calm", "still sent"));
        assert!(wait_sent(&courier, "still sent"));
        close_and_drain(intake, drained);
    }

    /// A worker renders a long answer with the desk unlocked: meanwhile the daemon's thread
    /// hands over the next reply without waiting for it.
    #[test]
    fn a_long_answer_being_rendered_keeps_no_one_waiting_to_queue() {
        let (courier, release) = gated();
        let (intake, drained, _ended) = start(courier.clone());
        let long = format!("{}, slow to render", "x".repeat(QUEUED_AT_ONCE_MAX));
        intake.send(text("one", &long));
        std::thread::sleep(ms(100)); // A worker is rendering it now.
        let (handed_over_tx, handed_over) = crossbeam_channel::bounded(1);
        let sender = std::thread::spawn(move || {
            intake.send(text("two", "meanwhile"));
            let _ = handed_over_tx.send(());
            intake
        });
        let waited = handed_over.recv_timeout(Duration::from_secs(2));
        release.send(()).unwrap();
        assert_eq!(waited, Ok(()), "queueing waited for another reply's rendering");
        assert!(wait_sent(&courier, "meanwhile"));
        close_and_drain(sender.join().unwrap(), drained);
        assert_eq!(courier.sent.lock().unwrap().len(), 2, "both replies went");
    }

    /// Rendering reads the agent's text: a renderer that panics costs that reply only, on the
    /// caller's thread (a short reply) as on the worker that took it in (a long one), not
    /// that thread or the replies after it.
    #[test]
    fn a_reply_whose_rendering_panics_is_dropped_and_the_next_goes_out() {
        let (courier, _release) = gated();
        let (intake, drained, ended) = start(courier.clone());
        let long = format!("{}, unrenderable", "x".repeat(QUEUED_AT_ONCE_MAX));
        for (unrenderable, next) in
            [("short, unrenderable", "after the short one"), (long.as_str(), "after the long one")]
        {
            let contained = crate::adapters::contained_panics();
            intake.send(text("one", unrenderable));
            intake.send(text("one", next));
            assert!(wait_sent(&courier, next), "{next}: not sent");
            assert!(crate::adapters::contained_panics() > contained, "{next}: the panic was not contained");
        }
        close_and_drain(intake, drained);
        assert_eq!(*courier.sent.lock().unwrap(), ["after the short one", "after the long one"]);
        let ends: Vec<ThreadEnd> = ended.try_iter().collect();
        assert!(ends.iter().all(|end| !end.panicked), "a worker died: {ends:?}");
    }
}
