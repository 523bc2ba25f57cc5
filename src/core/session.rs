//! One conversation with the agent and its dispatch: the turn in flight, the messages
//! waiting, and what a new message does when the session is busy (`steer`, `collect`,
//! `followup`). Pure; the core (`core/mod.rs`) owns the map of sessions and the agent events.
//!
//! Rules, in one place:
//! - At most one turn per session is in flight (agents reject a second `session/prompt`).
//! - A message that arrives while the session is free runs at once, alone. While the agent is
//!   still opening the session, later messages wait as their mode says, except that nothing
//!   runs yet to be steered: a steering message then waits for its own turn.
//! - `followup`: waits for its own turn, in order.
//! - `collect`: waits; the collected messages next to each other run as one turn, texts joined
//!   by blank lines, each keeping its quote and attachment lines.
//! - `steer`: cancels the running turn (`session/cancel`) and waits at most [`CANCEL_WAIT`]
//!   for it to end; its text is dropped. Then every message still waiting, up to the newest
//!   steering one, runs as one turn (so several messages sent during one wait are merged, the
//!   latest last, none lost), after [`prompt::STEER_NOTE`]. A turn still running after the
//!   wait is wedged: the core abandons the session and opens a fresh one for what waits.
//! - `/cancel` uses the same bounded wait; `/clear` does not wait (the session is forgotten).
//!   While a turn is being cancelled for `/cancel` or a timeout, a new message waits for its
//!   own turn (the user was told; there is nothing to steer).
//! - At most [`MAX_WAITING`] messages wait per session; the next one is refused, and the
//!   sender is told.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::prompt;
use super::{Action, say};
use crate::config::DispatchMode;
use crate::event::{AgentRequest, ChatRef, MessageRef, Outbound};
use crate::streamer::{BlockStreamConfig, BlockStreamer};

/// How long a cancelled turn may take to end before the session is given up as wedged.
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Drafts of a growing answer go out at most this often.
pub const DRAFT_EVERY: Duration = Duration::from_millis(100);
/// ...and a long answer's less often: each draft is the whole answer so far, so at most this
/// many bytes of drafts a second. Answers up to 25 KiB keep [`DRAFT_EVERY`]; a 2 MB answer
/// streamed for minutes is sent every 8 s, not copied and sent whole ten times a second.
pub const DRAFT_BYTES_PER_SECOND: usize = 256 * 1024;

/// How long after the last draft the next may go, for an answer of `answer_len` bytes.
pub fn draft_spacing(answer_len: usize) -> Duration {
    let millis = answer_len.saturating_mul(1000) / DRAFT_BYTES_PER_SECOND;
    DRAFT_EVERY.max(Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)))
}
/// Messages that may wait for one session's next turn.
pub const MAX_WAITING: usize = 50;

/// A message waiting for a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Where its answer goes.
    pub chat: ChatRef,
    /// The message(s) it carries (for the journal).
    pub message_ids: Vec<MessageRef>,
    /// The text for the agent: quote, text, attachment lines (`prompt::message_body`).
    pub body: String,
    /// Its image files, in order (`prompt::images`).
    pub images: Vec<PathBuf>,
    pub how: Waits,
    /// Who wrote it: the person whose message starts the work decides its permissions.
    pub sender: String,
}

/// How a waiting message joins a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waits {
    /// Its own turn, in order.
    Alone,
    /// One turn with the collected messages next to it.
    Collected,
    /// Replaces a cancelled turn, taking every message before it along.
    Steer,
}

/// Why a turn was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelCause {
    /// A new message steers: its turn follows, so "typing…" goes on.
    Steer,
    /// `/cancel`: the user has been told; nothing follows.
    User,
    /// The turn ran past the channel's `turnTimeoutMs`: the user has been told; what waits
    /// runs after it.
    Timeout,
}

#[derive(Debug)]
pub struct Cancelling {
    pub cause: CancelCause,
    /// After this, the turn is taken as wedged.
    pub deadline: Instant,
}

/// The turn in flight.
#[derive(Debug)]
pub struct Turn {
    pub chat: ChatRef,
    pub message_ids: Vec<MessageRef>,
    /// The prompt as sent, to send again if the agent crashes during the turn.
    pub text: String,
    pub images: Vec<PathBuf>,
    /// This is already the second try (after a crash): a second crash gives up.
    pub retried: bool,
    /// The answer so far.
    pub answer: String,
    /// When "typing…" is next due, and how often the platform needs it (none: no indicator).
    pub typing: Option<(Instant, Duration)>,
    /// When the channel's `turnTimeoutMs` runs out.
    pub timeout_at: Instant,
    /// Set once `session/cancel` is sent; the answer is then dropped.
    pub cancel: Option<Cancelling>,
    /// With `blockStreaming: "on"`: the answer goes out in blocks as it grows.
    pub stream: Option<BlockStreamer>,
    /// Some block of this turn was sent already.
    pub streamed: bool,
    /// Tool calls shown as status lines (`showToolCalls: "brief"`): (tool call id, title).
    pub tools: Vec<(String, String)>,
    /// The plan's progress message was sent (later plans edit it).
    pub plan_shown: bool,
    /// The senders of the messages this turn answers (who may answer its permission requests).
    pub senders: Vec<String>,
    /// Permission requests this turn has asked the chat (a flood is refused past a cap).
    pub permission_asks: usize,
    /// When the last draft (the answer so far, for live-draft channels) went out.
    pub draft_sent: Option<Instant>,
    /// A newer draft waits until then (chunks in between are coalesced into it).
    pub draft_due: Option<Instant>,
}

impl Turn {
    /// The next typing refresh; far away when the platform has none.
    fn typing_due(&self) -> Instant {
        self.typing.map_or(self.timeout_at, |(due, _)| due)
    }

    /// When this turn next needs the clock: a typing refresh, its timeout, or the end of a
    /// cancel wait.
    pub fn deadline(&self) -> Instant {
        let stream = self.stream.as_ref().and_then(BlockStreamer::next_deadline);
        let deadline = match &self.cancel {
            None => self.typing_due().min(self.timeout_at).min(stream.unwrap_or(self.timeout_at)),
            Some(c) if c.cause == CancelCause::Steer => self.typing_due().min(c.deadline),
            Some(c) => c.deadline,
        };
        match self.draft_due {
            Some(due) if self.cancel.is_none() => deadline.min(due),
            _ => deadline,
        }
    }

    /// A chunk arrived: `true` to send the draft now. Else it is due [`draft_spacing`] (for
    /// the answer's length so far) after the last one, so a fast-streaming agent does not have
    /// the whole answer copied for every chunk (quadratic in the answer's length).
    pub fn draft_now(&mut self, now: Instant) -> bool {
        let spacing = draft_spacing(self.answer.len());
        match self.draft_sent {
            Some(sent) if now < sent + spacing => {
                self.draft_due = Some(sent + spacing);
                false
            }
            _ => {
                self.draft_sent = Some(now);
                self.draft_due = None;
                true
            }
        }
    }

    /// The clock ticked: `true` when a coalesced draft is due now.
    pub fn draft_due_now(&mut self, now: Instant) -> bool {
        if self.draft_due.is_some_and(|due| due <= now) {
            self.draft_sent = Some(now);
            self.draft_due = None;
            return true;
        }
        false
    }
}

/// Where a turn's answer goes, what it answers and who wrote that.
struct Started {
    chat: ChatRef,
    message_ids: Vec<MessageRef>,
    senders: Vec<String>,
}

/// A turn the agent lost by crashing, to run again once the session is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub chat: ChatRef,
    pub message_ids: Vec<MessageRef>,
    pub text: String,
    pub images: Vec<PathBuf>,
    pub senders: Vec<String>,
}

/// One conversation.
#[derive(Debug)]
pub struct Session {
    pub agent: String,
    /// The chat of the latest message (for `sessions.json`).
    pub chat: ChatRef,
    pub cwd: PathBuf,
    /// Where the session is in its life at the agent (private: changed only by the methods
    /// below, so the states cannot disagree).
    life: Life,
    pub turn: Option<Turn>,
    pub waiting: VecDeque<Waiting>,
    /// The channel's `instructions` went with this session's first prompt.
    pub instructed: bool,
    /// A turn was cancelled to steer: the next steering turn carries the note.
    pub steered: bool,
    /// The turn a crash interrupted; it runs first once the session is back.
    retry: Option<Retry>,
    /// Several people share it (scope `single`, or `thread` in a group): only `allowedUsers`
    /// may answer its permission requests, when that list is not empty.
    pub shared: bool,
    /// When a message last came or a turn last ended (for evicting idle sessions).
    pub last_active: Instant,
    /// Put before every text its turns send (a loop's `[loop 3]`).
    pub label: Option<String>,
    /// The person who last wrote in it (a loop's creator, for a loop's run): loops the agent
    /// creates through `tether mcp` are theirs.
    pub writer: Option<Writer>,
}

/// A person writing in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub id: String,
    pub name: String,
    pub is_group: bool,
}

/// A session's life at the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    /// Nothing is in flight: the agent is down or not ready yet. Once it is, `session/load`
    /// of `lost` (the id a crash or an earlier run left, when the agent can load) or
    /// `session/new`.
    Lost { id: Option<String> },
    /// `session/new` is in flight.
    Opening,
    /// `session/load` of this id is in flight.
    Restoring { id: String },
    /// The agent has it: turns may run.
    Open { id: String },
}

impl Life {
    /// One word for the admin page and logs.
    pub fn word(&self) -> &'static str {
        match self {
            Life::Lost { .. } => "lost",
            Life::Opening => "opening",
            Life::Restoring { .. } => "restoring",
            Life::Open { .. } => "open",
        }
    }
}

/// What a channel decides about the turns of its sessions.
#[derive(Debug, Clone, Copy)]
pub struct TurnSettings<'a> {
    /// Sent with a session's first prompt.
    pub instructions: Option<&'a str>,
    /// A turn running longer is cancelled (`turnTimeoutMs`).
    pub turn_timeout: Duration,
    /// Send the answer in blocks as it grows (`blockStreaming: "on"`).
    pub block_stream: Option<BlockStreamConfig>,
    /// How often the platform needs "typing…" repeated; `None`: it has no indicator.
    pub typing_refresh: Option<Duration>,
}

/// The session cannot take another waiting message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Session {
    pub fn new(agent: String, chat: ChatRef, cwd: PathBuf, now: Instant) -> Session {
        Session {
            agent,
            chat,
            cwd,
            life: Life::Lost { id: None },
            turn: None,
            waiting: VecDeque::new(),
            instructed: false,
            steered: false,
            retry: None,
            shared: false,
            last_active: now,
            label: None,
            writer: None,
        }
    }

    /// Open at the agent with nothing in flight, waiting or owed: it may leave memory (it
    /// stays in `sessions.json` and is loaded again when its conversation goes on).
    pub fn is_idle(&self) -> bool {
        self.id().is_some() && self.holds_nothing()
    }

    /// The agent's id of this session while it is open.
    pub fn id(&self) -> Option<&str> {
        match &self.life {
            Life::Open { id } => Some(id),
            _ => None,
        }
    }

    /// Where the session is in its life, for logs, `/status` and the admin page.
    pub fn life(&self) -> &Life {
        &self.life
    }

    /// `session/new` was sent for it.
    pub fn opening(&mut self) {
        self.life = Life::Opening;
    }

    /// `session/load` of `id` was sent for it.
    pub fn restoring(&mut self, id: String) {
        self.life = Life::Restoring { id };
    }

    /// The agent is down or not yet ready: open it (loading `lost`, when the agent can) once
    /// it is.
    pub fn wait_for_agent(&mut self, lost: Option<String>) {
        self.life = Life::Lost { id: lost };
    }

    /// The agent answered `session/new` or `session/load` with this id. Returns whether it
    /// was a restore.
    pub fn opened(&mut self, id: String) -> bool {
        let restored = matches!(self.life, Life::Restoring { .. });
        self.life = Life::Open { id };
        restored
    }

    /// The agent died: the id it had (if any) is kept to load once the agent is back; a turn
    /// in flight is taken out (the caller decides whether it is retried).
    pub fn lose(&mut self) -> Option<Turn> {
        let lost = match std::mem::replace(&mut self.life, Life::Lost { id: None }) {
            Life::Open { id } | Life::Restoring { id } => Some(id),
            Life::Lost { id: lost } => lost,
            Life::Opening => None,
        };
        self.life = Life::Lost { id: lost };
        self.turn.take()
    }

    /// The id to `session/load` once the agent is back (taken: the caller sends the request).
    pub fn take_lost_id(&mut self) -> Option<String> {
        match &mut self.life {
            Life::Lost { id: lost } => lost.take(),
            _ => None,
        }
    }

    /// The crash interrupted this turn: it runs first once the session is open again.
    pub fn retry_later(&mut self, retry: Retry) {
        self.retry = Some(retry);
    }

    /// The turn a crash interrupted, if one waits to run again.
    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref()
    }

    /// Whether [`Session::held`] is empty, asked without building its iterator: true of most
    /// sessions, most of the time, and asked of each on every event (walking each session's
    /// chain of lists instead more than doubled what settling cost with 60 conversations).
    pub fn holds_nothing(&self) -> bool {
        self.turn.is_none() && self.waiting.is_empty() && self.retry.is_none()
    }

    /// The messages this session holds, by chat: its turn's, those waiting for one, and those
    /// of a turn to run again.
    pub fn held(&self) -> impl Iterator<Item = (&ChatRef, &[MessageRef])> {
        let turn = self.turn.iter().map(|t| (&t.chat, t.message_ids.as_slice()));
        let waiting = self.waiting.iter().map(|w| (&w.chat, w.message_ids.as_slice()));
        let retry = self.retry.iter().map(|r| (&r.chat, r.message_ids.as_slice()));
        turn.chain(waiting).chain(retry)
    }

    /// Give up the agent's session (its turn is wedged): the turn is taken out and the
    /// session waits to be opened anew. Returns the old id and the turn.
    pub fn abandon(&mut self) -> (Option<String>, Option<Turn>) {
        if self.turn.is_none() {
            return (None, None);
        }
        let old = match std::mem::replace(&mut self.life, Life::Lost { id: None }) {
            Life::Open { id } | Life::Restoring { id } => Some(id),
            _ => None,
        };
        (old, self.turn.take())
    }

    /// Cancel the turn in flight (`session/cancel`) for `cause`, waiting at most
    /// [`CANCEL_WAIT`] for it to end. The one way a turn is cancelled: a turn already being
    /// cancelled is not cancelled twice, but `/cancel` takes it over (nothing follows it).
    /// Returns whether a turn was running.
    pub fn cancel_turn(&mut self, cause: CancelCause, now: Instant, actions: &mut Vec<Action>) -> bool {
        let Some(turn) = self.turn.as_mut() else { return false };
        match &mut turn.cancel {
            None => {
                turn.cancel = Some(Cancelling { cause, deadline: now + CANCEL_WAIT });
                if let Life::Open { id } = &self.life {
                    let request = AgentRequest::Cancel { session_id: id.clone() };
                    actions.push(Action::Agent { agent: self.agent.clone(), request });
                }
            }
            Some(cancelling) if cause == CancelCause::User => cancelling.cause = CancelCause::User,
            Some(_) => {}
        }
        true
    }

    /// Take a message in (`how` is overwritten from `mode`); a steer sends `session/cancel`.
    pub fn accept(
        &mut self,
        mut message: Waiting,
        mode: DispatchMode,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), Full> {
        if self.waiting.len() >= MAX_WAITING {
            return Err(Full);
        }
        self.last_active = now;
        // A turn already being cancelled for a timeout or `/cancel` has nothing left to steer,
        // and the user has been told: a message then waits for its own turn, without the note.
        let ending = self.turn.as_ref().and_then(|t| t.cancel.as_ref()).is_some_and(|c| c.cause != CancelCause::Steer);
        message.how = match (mode, &mut self.turn) {
            (DispatchMode::Followup, _) | (DispatchMode::Steer, None) => Waits::Alone,
            (DispatchMode::Steer, Some(_)) if ending => Waits::Alone,
            (DispatchMode::Collect, turn) if turn.is_none() && self.waiting.is_empty() => Waits::Alone,
            (DispatchMode::Collect, _) => Waits::Collected,
            (DispatchMode::Steer, Some(_)) => Waits::Steer,
        };
        if message.how == Waits::Steer {
            self.cancel_turn(CancelCause::Steer, now, actions);
            self.steered = true;
        }
        self.waiting.push_back(message);
        Ok(())
    }

    /// Start the next turn if the agent has the session and nothing is in flight: a turn a
    /// crash interrupted first, then what waits.
    pub fn start_next_turn(&mut self, settings: TurnSettings<'_>, now: Instant, actions: &mut Vec<Action>) {
        let (Some(session_id), None) = (self.id().map(str::to_string), &self.turn) else { return };
        if let Some(retry) = self.retry.take() {
            self.instructed = true;
            let started = Started { chat: retry.chat, message_ids: retry.message_ids, senders: retry.senders };
            self.begin(session_id, started, (retry.text, retry.images), true, settings, now, actions);
            return;
        }
        let instructions = settings.instructions;
        let mut batch = self.next_batch();
        let note = self.steered && batch.iter().any(|w| w.how == Waits::Steer);
        // The parts of the batch are taken, not copied: it is dropped at the end.
        let Some(chat) = batch.last_mut().map(|last| std::mem::take(&mut last.chat)) else { return };
        if note {
            self.steered = false;
        }
        let body = match batch.as_slice() {
            [one] => prompt::compose(note, instructions.filter(|_| !self.instructed), &one.body),
            _ => {
                let joined = batch.iter().map(|w| w.body.as_str()).collect::<Vec<_>>().join("\n\n");
                prompt::compose(note, instructions.filter(|_| !self.instructed), &joined)
            }
        };
        self.instructed = true;
        let mut senders: Vec<String> = Vec::new();
        let mut images = Vec::new();
        let mut message_ids = Vec::new();
        for waiting in batch {
            images.extend(waiting.images);
            message_ids.extend(waiting.message_ids);
            // An event (no sender) leaves the answer to anyone the gates admit.
            if !waiting.sender.is_empty() && !senders.contains(&waiting.sender) {
                senders.push(waiting.sender);
            }
        }
        self.begin(session_id, Started { chat, message_ids, senders }, (body, images), false, settings, now, actions);
    }

    #[allow(clippy::too_many_arguments)] // The parts of one turn, each from a different place.
    fn begin(
        &mut self,
        session_id: String,
        started: Started,
        (text, images): (String, Vec<PathBuf>),
        retried: bool,
        settings: TurnSettings<'_>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Started { chat, message_ids, senders } = started;
        if settings.typing_refresh.is_some() {
            actions.push(Action::Send(Outbound::Typing { chat: chat.clone() }));
        }
        let request = AgentRequest::Prompt { session_id, text: text.clone(), images: images.clone() };
        actions.push(Action::Agent { agent: self.agent.clone(), request });
        self.turn = Some(Turn {
            chat,
            message_ids,
            text,
            images,
            retried,
            answer: String::new(),
            typing: settings.typing_refresh.map(|every| (now + every, every)),
            timeout_at: now + settings.turn_timeout,
            cancel: None,
            stream: settings.block_stream.map(BlockStreamer::new),
            streamed: false,
            tools: Vec::new(),
            plan_shown: false,
            senders,
            permission_asks: 0,
            draft_sent: None,
            draft_due: None,
        });
    }

    /// The waiting messages the next turn takes: through the newest steering one if any;
    /// else the collected run at the front; else the oldest alone.
    fn next_batch(&mut self) -> Vec<Waiting> {
        let take = match self.waiting.iter().rposition(|w| w.how == Waits::Steer) {
            Some(last_steer) => last_steer + 1,
            None => match self.waiting.front().map(|w| w.how) {
                Some(Waits::Collected) => self.waiting.iter().take_while(|w| w.how == Waits::Collected).count(),
                Some(_) => 1,
                None => 0,
            },
        };
        self.waiting.drain(..take).collect()
    }

    /// Every chat with a turn in flight or a message waiting here, each once.
    pub fn chats(&self) -> Vec<ChatRef> {
        let mut chats: Vec<ChatRef> = Vec::new();
        for chat in self.turn.iter().map(|t| &t.chat).chain(self.waiting.iter().map(|w| &w.chat)) {
            if !chats.contains(chat) {
                chats.push(chat.clone());
            }
        }
        chats
    }

    /// Tell every chat concerned.
    pub fn tell_all(&self, text: &str, actions: &mut Vec<Action>) {
        for chat in self.chats() {
            actions.push(say(&chat, text.to_string()));
        }
    }

    /// The next moment this session needs a [`super::Event::Tick`].
    pub fn deadline(&self) -> Option<Instant> {
        self.turn.as_ref().map(Turn::deadline)
    }
}
