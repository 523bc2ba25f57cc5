//! The Telegram sender: replies rendered to HTML parts, queued per chat, paced by
//! [`Pacer`] and delivered by a few worker threads, so that one chat's retries or slow calls
//! never hold up another chat. [`Schedule`] is the pure part (what may go next, what a
//! failure means for the part, when a whole reply is done with); [`spawn`] runs the dispatcher
//! and worker threads, and marks the messages a delivered reply answers in the journal.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, never, select, unbounded};

use super::Api;
use super::wire::{self, Failure};
use crate::adapters::Supervisor;
use crate::adapters::pacing::Pacer;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::event::{ChatRef, MessageRef, Outbound};
use crate::health::Probe;
use crate::journal::Journal;
use crate::render;

/// Attempts for one part that fails with 5xx or a network error before it is logged as lost.
pub const SEND_ATTEMPTS: u32 = 6;
/// 429 answers one part may wait out before further ones count as failed attempts.
pub const RATE_LIMIT_WAITS: u32 = 10;
/// A typing indicator asked for longer ago than this is pointless (Telegram shows one for
/// about 5 s and the core asks again every 4 s): it is dropped instead of sent late.
pub const TYPING_FRESH: Duration = Duration::from_secs(4);
/// Calls in flight at once: a chat has at most one, so this many chats progress in parallel.
const WORKERS: usize = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const TYPING_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long the dispatcher sleeps with nothing due (messages and results wake it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// Once the outbox closes (the service stops, the channel is removed), queued replies may
/// still start for this long; then only the calls in flight are awaited. What was not sent
/// stays in the journal, and is answered at the next start: better than a process exit in the
/// middle of a call, after which nobody knows whether the reply arrived.
pub const DRAIN_AFTER_CLOSE: Duration = Duration::from_millis(1500);

/// One message of a reply, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Telegram HTML when `html`, else plain text.
    pub text: String,
    pub html: bool,
    /// The reply this part belongs to (a 403 drops the rest of it).
    pub reply: u64,
    /// 1-based position in the reply, and the reply's number of parts.
    pub index: usize,
    pub of: usize,
    /// Failed attempts (5xx, network) so far.
    attempts: u32,
    /// 429 answers waited out so far.
    waits: u32,
    /// Buttons under this part: (label, callback data).
    buttons: Vec<(String, String)>,
    /// Remember the sent message's id under this key, for a later edit.
    key: Option<String>,
    /// This part replaces the text of the message sent under this key (a new message if
    /// that one is unknown).
    edit: Option<String>,
}

impl Part {
    fn new(text: String, reply: u64, index: usize, of: usize) -> Part {
        Part { text, html: true, reply, index, of, attempts: 0, waits: 0, buttons: Vec::new(), key: None, edit: None }
    }
}

/// One Bot API call for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Typing(ChatRef),
    Part(ChatRef, Part),
    /// Edit the message with this id (a part whose `edit` key is known).
    Edit(ChatRef, i64, Part),
    /// Answer a button press: (callback id, text).
    Ack(String, String),
}

/// Message ids remembered for edits; the oldest are forgotten past this.
const REMEMBERED_KEYS: usize = 512;

/// What became of a call, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    TypingShown,
    TypingFailed {
        chat: String,
        failure: Failure,
    },
    Delivered {
        chat: String,
        index: usize,
        of: usize,
        html: bool,
    },
    /// Telegram refused the HTML; the part goes again as plain text.
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
    RateLimited {
        chat: String,
        index: usize,
        of: usize,
        wait: Duration,
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
            Verdict::Delivered { chat, index, of, html } => {
                let how = if *html { "HTML" } else { "plain text" };
                (Level::Debug, format!("sent part {index}/{of} of a reply to chat {chat} as {how}"))
            }
            Verdict::PlainFallback { chat, index, of, failure } => (
                Level::Warn,
                format!("sendMessage to chat {chat}: {failure}; resending part {index}/{of} as plain text"),
            ),
            Verdict::Dropped { chat, index, of, failure } => (
                Level::Error,
                format!(
                    "sendMessage to chat {chat} failed, not retrying: {failure}; part {index}/{of} of the reply is lost"
                ),
            ),
            Verdict::Blocked { chat, index, of, dropped, failure } => (
                Level::Error,
                format!(
                    "sendMessage to chat {chat} failed: {failure}; the bot may not write there, so part {index}/{of} \
                     and the {dropped} after it are dropped"
                ),
            ),
            Verdict::RateLimited { chat, index, of, wait } => (
                Level::Warn,
                format!(
                    "sendMessage to chat {chat} rate limited (429): part {index}/{of} goes again in {} s",
                    wait.as_secs()
                ),
            ),
            Verdict::Retrying { chat, index, of, attempt, delay, failure } => (
                Level::Warn,
                format!(
                    "sendMessage to chat {chat} failed (attempt {attempt}/{SEND_ATTEMPTS}): {failure}; part {index}/{of} \
                     goes again in {} ms",
                    delay.as_millis()
                ),
            ),
            Verdict::Lost { chat, index, of, failure } => (
                Level::Error,
                format!(
                    "sendMessage to chat {chat} gave up after {SEND_ATTEMPTS} attempts: {failure}; part {index}/{of} \
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
    /// When "typing…" was last asked for and not yet sent.
    typing_since: Option<Instant>,
    /// A typing indicator of this chat is with a worker.
    typing_sending: bool,
    backoff: Backoff,
}

impl ChatQueue {
    fn new() -> ChatQueue {
        ChatQueue {
            parts: VecDeque::new(),
            not_before: None,
            sending: false,
            typing_since: None,
            typing_sending: false,
            backoff: Backoff::new(RETRY_BASE, RETRY_MAX),
        }
    }

    /// One call per chat at a time, so calls reach Telegram in the order they were decided
    /// (a typing indicator before the answer it announces).
    fn busy(&self) -> bool {
        self.sending || self.typing_sending
    }

    fn is_idle(&self) -> bool {
        self.parts.is_empty() && !self.sending && self.typing_since.is_none() && !self.typing_sending
    }

    /// The part at the front is done with (sent or given up): the next starts afresh.
    fn next_part(&mut self) {
        self.not_before = None;
        self.backoff.reset();
    }
}

/// How a reply ended, once every part of it is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Delivery {
    /// Every part reached the chat.
    Sent,
    /// Nothing to send (the text rendered to nothing), or Telegram refused it for good (bad
    /// request, the bot may not write there): trying again cannot help.
    Refused,
    /// A part was lost after every retry: the reply did not arrive.
    Lost,
}

/// A reply done with: the inbound messages it answers, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub answers: Vec<MessageRef>,
    pub delivery: Delivery,
}

/// A reply (an [`Outbound::Text`]) with parts still to go.
#[derive(Debug)]
struct Tracked {
    answers: Vec<MessageRef>,
    parts_left: usize,
    worst: Delivery,
}

/// Per-chat queues and the pacer: decides which call goes next. Pure; time comes in as `now`.
#[derive(Debug)]
pub struct Schedule {
    /// Replies with parts still to go, by reply number.
    tracked: BTreeMap<u64, Tracked>,
    /// Replies done with, for [`Schedule::take_settled`].
    settled: Vec<Settled>,
    chats: BTreeMap<ChatRef, ChatQueue>,
    pacer: Pacer<ChatRef>,
    replies: u64,
    /// Message ids of keyed parts, for edits, oldest first.
    sent: VecDeque<(String, i64)>,
    /// Button presses to answer; they skip the chat queues.
    acks: VecDeque<(String, String)>,
    /// The chat served last, so the next part goes to the chat after it (round robin).
    last_served: Option<ChatRef>,
}

impl Schedule {
    pub fn new(pacer: Pacer<ChatRef>) -> Schedule {
        Schedule {
            tracked: BTreeMap::new(),
            settled: Vec::new(),
            chats: BTreeMap::new(),
            pacer,
            replies: 0,
            sent: VecDeque::new(),
            acks: VecDeque::new(),
            last_served: None,
        }
    }

    /// Queue what the core asked for; returns how many message parts were queued.
    pub fn push(&mut self, out: Outbound, now: Instant) -> usize {
        match out {
            Outbound::Text { chat, text, answers } => {
                let chunks = render::telegram_chunks(&text);
                if chunks.is_empty() {
                    self.settled.push(Settled { answers, delivery: Delivery::Refused });
                    return 0;
                }
                self.replies += 1;
                let reply = self.replies;
                let of = chunks.len();
                self.tracked.insert(reply, Tracked { answers, parts_left: of, worst: Delivery::Sent });
                let queue = self.chats.entry(chat).or_insert_with(ChatQueue::new);
                // The answer is here: "typing…" asked for before it is moot.
                queue.typing_since = None;
                for (i, text) in chunks.into_iter().enumerate() {
                    queue.parts.push_back(Part::new(text, reply, i + 1, of));
                }
                of
            }
            Outbound::Ask { chat, key, text, buttons } => {
                let chunks = render::telegram_chunks(&text);
                self.replies += 1;
                let (reply, of) = (self.replies, chunks.len());
                let queue = self.chats.entry(chat).or_insert_with(ChatQueue::new);
                for (i, text) in chunks.into_iter().enumerate() {
                    let mut part = Part::new(text, reply, i + 1, of);
                    if i + 1 == of {
                        // The buttons and the key go with the last part, the one people see last.
                        part.buttons = buttons.clone();
                        part.key = Some(key.clone());
                    }
                    queue.parts.push_back(part);
                }
                of
            }
            Outbound::Edit { chat, key, text } => {
                let html = render::telegram_html(&text);
                self.replies += 1;
                let mut part = Part::new(html, self.replies, 1, 1);
                part.edit = Some(key);
                self.chats.entry(chat).or_insert_with(ChatQueue::new).parts.push_back(part);
                1
            }
            Outbound::ButtonAck { callback_id, text, .. } => {
                self.acks.push_back((callback_id, text));
                0
            }
            Outbound::Typing { chat } => {
                self.chats.entry(chat).or_insert_with(ChatQueue::new).typing_since = Some(now);
                0
            }
            // No edits in place on Telegram yet: the final Text carries the answer.
            Outbound::Draft { .. } => 0,
        }
    }

    /// Count a part of `reply` done with, by its verdict; a reply whose last part is done
    /// with goes to [`Schedule::take_settled`].
    fn track(&mut self, reply: u64, verdict: &Verdict) {
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
            self.settled.push(Settled { answers: tracked.answers, delivery: tracked.worst });
        }
    }

    /// Replies done with since the last call.
    pub fn take_settled(&mut self) -> Vec<Settled> {
        std::mem::take(&mut self.settled)
    }

    /// Nothing queued and nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty() && self.acks.is_empty()
    }

    /// The next call that may go at `now`, if any; its chat counts as busy until
    /// [`Schedule::finish`] gets the result.
    pub fn next_job(&mut self, now: Instant) -> Option<Job> {
        self.pacer.forget_idle(now);
        for queue in self.chats.values_mut() {
            if queue.typing_since.is_some_and(|since| now.saturating_duration_since(since) > TYPING_FRESH) {
                queue.typing_since = None;
            }
        }
        self.chats.retain(|_, q| !q.is_idle());
        if self.pacer.bot_ready_at(now) > now {
            return None;
        }
        // A pressed button spins until answered: answers go before anything else.
        if let Some((callback_id, text)) = self.acks.pop_front() {
            self.pacer.record_bot(now);
            return Some(Job::Ack(callback_id, text));
        }
        // Typing first: cheap, useful only now, and not held back by the chat's gap or queue.
        let typing = self.chats.iter_mut().find(|(_, q)| q.typing_since.is_some() && !q.busy());
        if let Some((chat, queue)) = typing {
            queue.typing_since = None;
            queue.typing_sending = true;
            self.pacer.record_bot(now);
            return Some(Job::Typing(chat.clone()));
        }
        let chat = self.next_ready_chat(now)?;
        let queue = self.chats.get_mut(&chat)?;
        let part = queue.parts.pop_front()?;
        queue.sending = true;
        self.pacer.record(chat.clone(), now);
        self.last_served = Some(chat.clone());
        let edit_id = part.edit.as_ref().and_then(|key| self.sent.iter().find(|(k, _)| k == key).map(|(_, id)| *id));
        Some(match edit_id {
            Some(message_id) => Job::Edit(chat, message_id, part),
            None => Job::Part(chat, part),
        })
    }

    /// The first chat after the one served last whose front part may go now.
    fn next_ready_chat(&self, now: Instant) -> Option<ChatRef> {
        let ready = |(chat, q): &(&ChatRef, &ChatQueue)| {
            !q.busy()
                && !q.parts.is_empty()
                && q.not_before.is_none_or(|t| t <= now)
                && self.pacer.ready_at(chat, now) <= now
        };
        let after = self
            .last_served
            .as_ref()
            .map(|last| self.chats.range::<ChatRef, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded)));
        after.into_iter().flatten().chain(self.chats.iter()).find(ready).map(|(chat, _)| chat.clone())
    }

    /// When a call that cannot go now may go (a retry's delay, a chat's gap, the bot's
    /// budget); `None` when nothing waits but the results of calls in flight.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let bot = self.pacer.bot_ready_at(now);
        let acks = (!self.acks.is_empty()).then_some(bot);
        let chats = self
            .chats
            .iter()
            .filter_map(|(chat, q)| {
                let typing = (q.typing_since.is_some() && !q.busy()).then_some(bot);
                let part = (!q.busy() && !q.parts.is_empty())
                    .then(|| q.not_before.unwrap_or(now).max(self.pacer.ready_at(chat, now)));
                typing.into_iter().chain(part).min()
            })
            .min();
        acks.into_iter().chain(chats).min()
    }

    /// Take the result of a call handed out by [`Schedule::next_job`]: requeue the part for a
    /// retry, a plain-text resend or not at all, and say what happened.
    pub fn finish(&mut self, job: Job, result: Result<Option<i64>, Failure>, now: Instant) -> Verdict {
        match job {
            Job::Ack(..) => match result {
                Ok(_) => Verdict::TypingShown,
                Err(failure) => Verdict::TypingFailed { chat: "(button answer)".into(), failure },
            },
            Job::Edit(chat, _, part) => {
                // Editing to the same text is no failure.
                let result = match result {
                    Err(Failure::Rejected(d)) if d.contains("message is not modified") => Ok(None),
                    other => other,
                };
                self.finish(Job::Part(chat, part), result, now)
            }
            Job::Typing(chat) => {
                if let Some(queue) = self.chats.get_mut(&chat) {
                    queue.typing_sending = false;
                }
                self.chats.retain(|_, q| !q.is_idle());
                match result {
                    Ok(_) => Verdict::TypingShown,
                    Err(failure) => Verdict::TypingFailed { chat: chat.chat_id, failure },
                }
            }
            Job::Part(chat, part) => {
                let chat_id = chat.chat_id.clone();
                if let (Some(key), Ok(Some(message_id))) = (&part.key, &result) {
                    self.sent.push_back((key.clone(), *message_id));
                    if self.sent.len() > REMEMBERED_KEYS {
                        self.sent.pop_front();
                    }
                }
                let queue = self.chats.entry(chat).or_insert_with(ChatQueue::new);
                queue.sending = false;
                let reply = part.reply;
                let verdict = settle(queue, part, result.map(drop), now, chat_id);
                self.chats.retain(|_, q| !q.is_idle());
                self.track(reply, &verdict);
                verdict
            }
        }
    }
}

/// What a part's result means for its chat's queue.
fn settle(queue: &mut ChatQueue, mut part: Part, result: Result<(), Failure>, now: Instant, chat: String) -> Verdict {
    let (index, of) = (part.index, part.of);
    let failure = match result {
        Ok(()) => {
            queue.next_part();
            return Verdict::Delivered { chat, index, of, html: part.html };
        }
        Err(failure) => failure,
    };
    match failure {
        Failure::BadMarkup(_) if part.html => {
            part.text = render::strip_tags(&part.text);
            part.html = false;
            queue.parts.push_front(part);
            Verdict::PlainFallback { chat, index, of, failure }
        }
        Failure::Blocked(_) => {
            let before = queue.parts.len();
            queue.parts.retain(|p| p.reply != part.reply);
            queue.next_part();
            Verdict::Blocked { chat, index, of, dropped: before - queue.parts.len(), failure }
        }
        Failure::RateLimited(wait) if part.waits < RATE_LIMIT_WAITS => {
            part.waits += 1;
            queue.not_before = Some(now + wait);
            queue.parts.push_front(part);
            Verdict::RateLimited { chat, index, of, wait }
        }
        Failure::RateLimited(_) | Failure::Transient(_) | Failure::Conflict(_) => {
            part.attempts += 1;
            if part.attempts >= SEND_ATTEMPTS {
                queue.next_part();
                return Verdict::Lost { chat, index, of, failure };
            }
            let mut delay = queue.backoff.next_delay();
            if let Failure::RateLimited(wait) = failure {
                delay = delay.max(wait);
            }
            queue.not_before = Some(now + delay);
            let attempt = part.attempts;
            queue.parts.push_front(part);
            Verdict::Retrying { chat, index, of, attempt, delay, failure }
        }
        Failure::BadMarkup(_) | Failure::Rejected(_) | Failure::Unauthorized(_) => {
            queue.next_part();
            Verdict::Dropped { chat, index, of, failure }
        }
    }
}

/// What the dispatcher does with replies done with; `done` is dropped when it ends.
pub(super) struct Settle {
    pub journal: Arc<Journal>,
    pub probe: Probe,
    /// Never sent on: dropped when the dispatcher ends, which is the signal.
    #[allow(dead_code)]
    pub done: Sender<()>,
}

impl Settle {
    /// Mark what a reply answered in the journal, unless it was lost (then the messages stay
    /// for the next start); count delivered replies.
    fn apply(&self, channel: &str, settled: Vec<Settled>) {
        for Settled { answers, delivery } in settled {
            if delivery == Delivery::Sent {
                self.probe.sent();
            }
            if delivery == Delivery::Lost {
                if !answers.is_empty() {
                    log::warn!(target: channel, "a reply answering {} message(s) was lost; they stay in the journal and are answered again at the next start", answers.len());
                }
                continue;
            }
            if let Err(e) = self.journal.settle(&answers) {
                log::error!(target: channel, "cannot mark answers in {}: {e}", self.journal.path().display());
            }
        }
    }
}

/// Start the dispatcher and its workers for one bot; they end when `outbox` closes and the
/// queued replies are delivered or given up.
pub(super) fn spawn(
    api: &Api,
    outbox: Receiver<Outbound>,
    settle: Settle,
    supervisor: &Supervisor,
) -> Result<(), Error> {
    let (jobs_tx, jobs_rx) = unbounded::<Job>();
    let (done_tx, done_rx) = unbounded::<(Job, Result<Option<i64>, Failure>)>();
    for i in 0..WORKERS {
        let (api, jobs, done) = (api.clone(), jobs_rx.clone(), done_tx.clone());
        supervisor.spawn(format!("tg-send-{}-{i}", api.channel), move || work(&api, &jobs, &done))?;
    }
    let channel = api.channel.clone();
    supervisor.spawn(format!("tg-send-{channel}"), move || dispatch(&channel, &outbox, &jobs_tx, &done_rx, &settle))
}

/// A worker: one call at a time, its result back to the dispatcher.
fn work(api: &Api, jobs: &Receiver<Job>, done: &Sender<(Job, Result<Option<i64>, Failure>)>) {
    let message_id = |result: serde_json::Value| result.get("message_id").and_then(serde_json::Value::as_i64);
    for job in jobs {
        let result = match &job {
            Job::Typing(chat) => api.call("sendChatAction", &wire::send_typing(chat), TYPING_TIMEOUT).map(|_| None),
            Job::Ack(callback_id, text) => {
                api.call("answerCallbackQuery", &wire::answer_callback(callback_id, text), TYPING_TIMEOUT).map(|_| None)
            }
            Job::Part(chat, part) => {
                let body =
                    if part.html { wire::send_html(chat, &part.text) } else { wire::send_message(chat, &part.text) };
                api.call("sendMessage", &wire::with_buttons(body, &part.buttons), CALL_TIMEOUT).map(message_id)
            }
            Job::Edit(chat, id, part) => {
                api.call("editMessageText", &wire::edit_html(chat, *id, &part.text), CALL_TIMEOUT).map(message_id)
            }
        };
        if done.send((job, result)).is_err() {
            return;
        }
    }
}

enum Wakeup {
    Queued(Outbound),
    OutboxClosed,
    Done(Job, Result<Option<i64>, Failure>),
    WorkersGone,
    Tick,
}

/// The dispatcher: hands ready calls to idle workers, queues new replies, settles results.
fn dispatch(
    channel: &str,
    outbox: &Receiver<Outbound>,
    jobs: &Sender<Job>,
    done: &Receiver<(Job, Result<Option<i64>, Failure>)>,
    settle: &Settle,
) {
    let mut schedule = Schedule::new(Pacer::telegram());
    let mut idle = WORKERS;
    let closed = never();
    let mut open = true;
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let draining = drain_until.is_none_or(|until| now < until);
        while idle > 0 && draining {
            let Some(job) = schedule.next_job(now) else { break };
            if jobs.send(job).is_err() {
                return;
            }
            idle -= 1;
        }
        if !open && idle == WORKERS && (schedule.is_empty() || !draining) {
            if !schedule.is_empty() {
                log::info!(target: channel, "stopping with replies not sent; their messages are answered at the next start");
            }
            return;
        }
        // With every worker busy only a result can free one: wait for it, not for the clock.
        let wait = match schedule.next_wake(now) {
            Some(at) if idle > 0 => at.saturating_duration_since(now).clamp(Duration::from_millis(1), IDLE_WAIT),
            _ => IDLE_WAIT,
        };
        let wait = drain_until
            .map_or(wait, |until| wait.min(until.saturating_duration_since(now)).max(Duration::from_millis(1)));
        let inbox = if open { outbox } else { &closed };
        let wakeup = select! {
            recv(inbox) -> msg => msg.map_or(Wakeup::OutboxClosed, Wakeup::Queued),
            recv(done) -> msg => msg.map_or(Wakeup::WorkersGone, |(job, result)| Wakeup::Done(job, result)),
            default(wait) => Wakeup::Tick,
        };
        match wakeup {
            Wakeup::Queued(out) => {
                let chat = match &out {
                    Outbound::Text { chat, .. } => Some(chat.chat_id.clone()),
                    _ => None,
                };
                let parts = schedule.push(out, Instant::now());
                if let Some(chat) = chat {
                    if parts == 0 {
                        log::warn!(target: channel, "an empty reply to chat {chat} was not sent");
                    } else {
                        log::debug!(target: channel, "reply to chat {chat} queued as {parts} message(s)");
                    }
                }
            }
            Wakeup::OutboxClosed => {
                open = false;
                drain_until = Some(Instant::now() + DRAIN_AFTER_CLOSE);
            }
            Wakeup::WorkersGone => {
                log::error!(target: channel, "every Telegram sender thread is gone; replies are no longer sent");
                return;
            }
            Wakeup::Done(job, result) => {
                idle += 1;
                let (level, line) = schedule.finish(job, result, Instant::now()).log_line();
                log::log!(target: channel, level, "{line}");
                if level <= log::Level::Warn {
                    settle.probe.note_error(&line);
                }
            }
            Wakeup::Tick => {}
        }
        settle.apply(channel, schedule.take_settled());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::pacing::TELEGRAM_CHAT_GAP;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn chat(id: &str) -> ChatRef {
        ChatRef { channel: "tg".into(), chat_id: id.into(), thread_id: None }
    }

    fn text(to: &str, markdown: &str) -> Outbound {
        Outbound::Text { chat: chat(to), text: markdown.into(), answers: vec![] }
    }

    fn typing(to: &str) -> Outbound {
        Outbound::Typing { chat: chat(to) }
    }

    /// Markdown that renders to exactly three parts.
    fn three_parts() -> String {
        ["first", "second", "third"].map(|w| format!("**{w}** {}", "x".repeat(3500))).join("\n\n")
    }

    fn transient() -> Failure {
        Failure::Transient("HTTP 502: Bad Gateway".into())
    }

    fn bad_markup() -> Failure {
        Failure::BadMarkup("HTTP 400: Bad Request: can't parse entities: Unsupported start tag".into())
    }

    /// The chat and visible text of a part job; "typing" for a typing job.
    fn describe(job: &Job) -> (String, String) {
        match job {
            Job::Typing(c) => (c.chat_id.clone(), "typing".into()),
            Job::Part(c, p) => (c.chat_id.clone(), render::strip_tags(&p.text).chars().take(12).collect()),
            Job::Edit(c, id, p) => (c.chat_id.clone(), format!("edit {id}: {}", render::strip_tags(&p.text))),
            Job::Ack(id, text) => (id.clone(), format!("ack: {text}")),
        }
    }

    #[test]
    fn questions_carry_buttons_and_their_edit_replaces_the_sent_message() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::telegram());
        let buttons = vec![("✅ Allow".to_string(), "perm:1:once".to_string())];
        let ask = Outbound::Ask { chat: chat("1"), key: "perm:1".into(), text: "Permission needed".into(), buttons };
        assert_eq!(s.push(ask, t0), 1);
        let job = s.next_job(t0).unwrap();
        let Job::Part(_, part) = &job else { panic!("{job:?}") };
        assert_eq!(part.buttons.len(), 1);
        s.finish(job, Ok(Some(77)), t0);
        // A button press is answered before anything else, without waiting for the chat's gap.
        s.push(Outbound::ButtonAck { channel: "tg".into(), callback_id: "cb".into(), text: "ok".into() }, t0);
        s.push(Outbound::Edit { chat: chat("1"), key: "perm:1".into(), text: "approved".into() }, t0);
        let ack = s.next_job(t0).unwrap();
        assert_eq!(describe(&ack), ("cb".to_string(), "ack: ok".to_string()));
        s.finish(ack, Ok(None), t0);
        let later = t0 + TELEGRAM_CHAT_GAP;
        let edit = s.next_job(later).unwrap();
        assert_eq!(describe(&edit), ("1".to_string(), "edit 77: approved".to_string()));
        // "not modified" is no failure.
        let verdict =
            s.finish(edit, Err(Failure::Rejected("HTTP 400: Bad Request: message is not modified".into())), later);
        assert!(matches!(verdict, Verdict::Delivered { .. }), "{verdict:?}");
        // An edit of a message never sent goes as a new message.
        s.push(Outbound::Edit { chat: chat("1"), key: "perm:9".into(), text: "late".into() }, later);
        let job = s.next_job(later + TELEGRAM_CHAT_GAP).unwrap();
        assert!(matches!(job, Job::Part(..)), "{job:?}");
    }

    /// Send every part of whatever is queued at `t`, answering each with `result`.
    fn drain(s: &mut Schedule, t: &mut Instant, result: impl Fn() -> Result<Option<i64>, Failure>) {
        for _ in 0..100 {
            *t += Duration::from_secs(40);
            match s.next_job(*t) {
                Some(job) => {
                    s.finish(job, result(), *t);
                }
                None if s.is_empty() => break,
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
        let mut s = Schedule::new(Pacer::telegram());
        // Three parts: settled only after the third, as delivered.
        assert_eq!(s.push(reply("1", &three_parts(), &["a", "b"]), t), 3);
        let job = s.next_job(t).unwrap();
        s.finish(job, Ok(None), t);
        assert!(s.take_settled().is_empty(), "one part of three is not the reply");
        drain(&mut s, &mut t, || Ok(None));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["a", "b"]), delivery: Delivery::Sent }]);
        // Lost after every retry: the messages stay unanswered.
        s.push(reply("1", "short", &["c"]), t);
        drain(&mut s, &mut t, || Err(transient()));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["c"]), delivery: Delivery::Lost }]);
        // Blocked on the first of three parts: the rest is dropped, the reply is done with.
        s.push(reply("1", &three_parts(), &["d"]), t);
        drain(&mut s, &mut t, || Err(Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into())));
        assert_eq!(s.take_settled(), vec![Settled { answers: refs(&["d"]), delivery: Delivery::Refused }]);
        // Refused HTML goes again as plain text: still one reply, delivered.
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
    fn parts_go_in_order_one_gap_apart() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::telegram());
        assert_eq!(s.push(text("1", &three_parts()), t0), 3);
        let job = s.next_job(t0).unwrap();
        assert_eq!(describe(&job).1, "first xxxxxx");
        let Job::Part(_, part) = &job else { panic!() };
        assert!(part.html && part.text.starts_with("<b>first</b>"), "{}", &part.text[..20]);
        // The chat waits for the result before its next part.
        assert_eq!(s.next_job(t0), None);
        assert_eq!(s.next_wake(t0), None);
        let verdict = s.finish(job, Ok(None), t0 + ms(100));
        assert_eq!(verdict, Verdict::Delivered { chat: "1".into(), index: 1, of: 3, html: true });
        // Then the gap.
        assert_eq!(s.next_job(t0 + ms(100)), None);
        assert_eq!(s.next_wake(t0 + ms(100)), Some(t0 + TELEGRAM_CHAT_GAP));
        let job = s.next_job(t0 + TELEGRAM_CHAT_GAP).unwrap();
        assert_eq!(describe(&job).1, "second xxxxx");
        s.finish(job, Ok(None), t0 + ms(1001));
        let job = s.next_job(t0 + ms(2000)).unwrap();
        assert_eq!(describe(&job).1, "third xxxxxx");
        s.finish(job, Ok(None), t0 + ms(2001));
        assert!(s.is_empty());
        assert_eq!(s.next_wake(t0 + ms(2001)), None);
    }

    #[test]
    fn a_failing_chat_does_not_hold_up_another() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::telegram());
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
        // Chat 2's next reply waits only for its own gap; chat 1 for its retry and gap.
        assert_eq!(s.next_wake(t0 + ms(20)), Some(t0 + TELEGRAM_CHAT_GAP));
        let job = s.next_job(t0 + TELEGRAM_CHAT_GAP).unwrap();
        let other = s.next_job(t0 + TELEGRAM_CHAT_GAP).unwrap();
        let mut chats = [describe(&job), describe(&other)];
        chats.sort();
        assert_eq!(chats, [("1".into(), "to one".into()), ("2".into(), "two again".into())]);
    }

    #[test]
    fn failures_decide_what_happens_to_the_part() {
        // (failure on part 1 of 3, expected verdict kind, what is queued after, is the front html)
        let cases: Vec<(Failure, &str, Vec<&str>, bool)> = vec![
            (bad_markup(), "PlainFallback", vec!["first xxxxxx", "second xxxxx", "third xxxxxx"], false),
            (transient(), "Retrying", vec!["first xxxxxx", "second xxxxx", "third xxxxxx"], true),
            (Failure::Conflict("x".into()), "Retrying", vec!["first xxxxxx", "second xxxxx", "third xxxxxx"], true),
            (
                Failure::RateLimited(Duration::from_secs(3)),
                "RateLimited",
                vec!["first xxxxxx", "second xxxxx", "third xxxxxx"],
                true,
            ),
            (
                Failure::Rejected("HTTP 400: message is too long".into()),
                "Dropped",
                vec!["second xxxxx", "third xxxxxx"],
                true,
            ),
            (Failure::Unauthorized("HTTP 401".into()), "Dropped", vec!["second xxxxx", "third xxxxxx"], true),
            (
                Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into()),
                "Blocked",
                vec!["later"],
                true,
            ),
        ];
        for (failure, kind, queued, front_html) in cases {
            let t0 = Instant::now();
            let mut s = Schedule::new(Pacer::telegram());
            s.push(text("1", &three_parts()), t0);
            s.push(text("1", "later"), t0);
            let job = s.next_job(t0).unwrap();
            let verdict = s.finish(job, Err(failure.clone()), t0);
            assert!(format!("{verdict:?}").starts_with(kind), "{failure:?}: {verdict:?}");
            let queue = &s.chats[&chat("1")];
            let texts: Vec<String> =
                queue.parts.iter().map(|p| render::strip_tags(&p.text).chars().take(12).collect()).collect();
            let mut expected = queued.clone();
            if kind != "Blocked" {
                expected.push("later");
            }
            assert_eq!(texts, expected, "{failure:?}");
            assert_eq!(queue.parts[0].html, front_html, "{failure:?}");
        }
    }

    #[test]
    fn plain_fallback_strips_tags_and_goes_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::new(ms(0), 30, ms(1000)));
        s.push(text("1", "**a** < b & `c`"), t0);
        let job = s.next_job(t0).unwrap();
        let Job::Part(_, part) = &job else { panic!() };
        assert_eq!(part.text, "<b>a</b> &lt; b &amp; <code>c</code>");
        s.finish(job, Err(bad_markup()), t0);
        let job = s.next_job(t0).unwrap();
        let Job::Part(_, part) = &job else { panic!() };
        assert_eq!((part.text.as_str(), part.html), ("a < b & c", false));
        // Plain text refused as well: dropped, not resent forever.
        let verdict = s.finish(job, Err(bad_markup()), t0);
        assert!(matches!(verdict, Verdict::Dropped { index: 1, of: 1, .. }), "{verdict:?}");
        assert!(s.is_empty());
    }

    #[test]
    fn transient_failures_are_retried_then_the_part_is_lost() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::new(ms(0), 30, ms(1)));
        s.push(text("1", &three_parts()), t0);
        let mut now = t0;
        let mut last_delay = Duration::ZERO;
        for attempt in 1..SEND_ATTEMPTS {
            let job = s.next_job(now).unwrap();
            assert_eq!(describe(&job).1, "first xxxxxx");
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
        assert_eq!(describe(&job).1, "second xxxxx");
        let Verdict::Retrying { attempt: 1, delay, .. } = s.finish(job, Err(transient()), now) else { panic!() };
        assert!(delay <= RETRY_BASE);
    }

    #[test]
    fn rate_limits_are_waited_out_without_counting_up_to_a_cap() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::new(ms(0), 30, ms(1)));
        s.push(text("1", "hi"), t0);
        let mut now = t0;
        for _ in 0..RATE_LIMIT_WAITS {
            let job = s.next_job(now).unwrap();
            let verdict = s.finish(job, Err(Failure::RateLimited(Duration::from_secs(7))), now);
            assert!(matches!(verdict, Verdict::RateLimited { wait, .. } if wait == Duration::from_secs(7)));
            assert_eq!(s.next_job(now + ms(6999)), None);
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
        assert_eq!(s.finish(job, Ok(None), now), Verdict::Delivered { chat: "1".into(), index: 1, of: 1, html: true });
    }

    #[test]
    fn typing_is_not_held_back_and_goes_stale() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::telegram());
        s.push(typing("1"), t0);
        s.push(text("1", &three_parts()), t0);
        // A reply cancels the typing asked for before it.
        let part = s.next_job(t0).unwrap();
        assert_eq!(describe(&part).1, "first xxxxxx");
        // A new turn in the same chat while the long reply is still going out: typing waits
        // only for the call in flight (one call per chat keeps their order), not for the gap
        // or the rest of the reply.
        s.push(typing("1"), t0 + ms(10));
        assert_eq!(s.next_job(t0 + ms(10)), None);
        s.finish(part, Ok(None), t0 + ms(20));
        let job = s.next_job(t0 + ms(20)).unwrap();
        assert_eq!(job, Job::Typing(chat("1")));
        // While it is in flight, nothing else goes to that chat; the latest request wins.
        s.push(typing("1"), t0 + ms(30));
        assert_eq!(s.next_job(t0 + TELEGRAM_CHAT_GAP), None);
        assert_eq!(s.finish(job, Ok(None), t0 + TELEGRAM_CHAT_GAP), Verdict::TypingShown);
        assert_eq!(s.next_job(t0 + TELEGRAM_CHAT_GAP), Some(Job::Typing(chat("1"))));
        let verdict = s.finish(Job::Typing(chat("1")), Err(transient()), t0 + TELEGRAM_CHAT_GAP);
        assert!(matches!(verdict, Verdict::TypingFailed { .. }), "not retried: {verdict:?}");
        // Typing asked for more than TYPING_FRESH ago is dropped, not sent late.
        s.push(typing("2"), t0 + ms(50));
        let late = t0 + ms(50) + TYPING_FRESH + ms(1);
        let mut sent = Vec::new();
        while let Some(job) = s.next_job(late) {
            sent.push(describe(&job));
        }
        assert_eq!(sent, vec![("1".to_string(), "second xxxxx".to_string())]);
        // Another chat's typing is not held back by chat 1's call in flight.
        s.push(typing("3"), late);
        assert_eq!(s.next_job(late), Some(Job::Typing(chat("3"))));
    }

    #[test]
    fn drafts_and_empty_replies_queue_nothing() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Pacer::telegram());
        assert_eq!(s.push(Outbound::Draft { chat: chat("1"), text: "so far".into() }, t0), 0);
        assert_eq!(s.push(text("1", "  \n "), t0), 0);
        assert!(s.is_empty());
        assert_eq!(s.next_job(t0), None);
    }

    #[test]
    fn chats_take_turns() {
        let t0 = Instant::now();
        // No gap per chat, three sends per second for the bot.
        let mut s = Schedule::new(Pacer::new(ms(0), 3, ms(1000)));
        for to in ["a", "b", "c", "d"] {
            s.push(text(to, &format!("{to} one")), t0);
            s.push(text(to, &format!("{to} two")), t0);
        }
        let mut order = Vec::new();
        let mut now = t0;
        while !s.is_empty() {
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
                "sendMessage to chat 111 failed (attempt 1/6): HTTP 502: Bad Gateway; part 1/2 goes again in 480 ms",
            ),
            (
                Verdict::Lost { chat: "111".into(), index: 2, of: 2, failure: f() },
                log::Level::Error,
                "sendMessage to chat 111 gave up after 6 attempts: HTTP 502: Bad Gateway; part 2/2 of the reply is lost",
            ),
            (
                Verdict::PlainFallback { chat: "5".into(), index: 1, of: 1, failure: bad_markup() },
                log::Level::Warn,
                "sendMessage to chat 5: HTML refused: HTTP 400: Bad Request: can't parse entities: Unsupported start \
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
                "sendMessage to chat 5 failed: forbidden: HTTP 403: Forbidden: bot was blocked by the user; the bot \
                 may not write there, so part 1/3 and the 2 after it are dropped",
            ),
            (
                Verdict::RateLimited { chat: "5".into(), index: 2, of: 3, wait: Duration::from_secs(4) },
                log::Level::Warn,
                "sendMessage to chat 5 rate limited (429): part 2/3 goes again in 4 s",
            ),
        ];
        for (verdict, level, line) in cases {
            assert_eq!(verdict.log_line(), (level, line.to_string()));
        }
    }
}
