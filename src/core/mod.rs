//! The core: every decision about conversations, made as a pure function of
//! (state, event, now) → actions. It owns all conversation state and does no I/O; the daemon
//! thread feeds it events and carries out the actions it returns.
//!
//! A message's way through: the gates (`gate.rs`), then local slash commands
//! (`commands.rs`), then its session (`routing.rs` for the key, `session.rs` for dispatch), with
//! its text assembled by `prompt.rs`.

mod audit;
pub(crate) mod commands;
pub(crate) mod cron;
pub(crate) mod gate;
pub(crate) mod history;
pub(crate) mod loops;
pub(crate) mod pairing;
pub(crate) mod permissions;
pub(crate) mod prompt;
pub(crate) mod routing;
pub(crate) mod session;
pub(crate) mod tasks;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::collect::CollectMap;
use crate::config::{ChannelConfig, Config, DispatchMode, PermissionPolicy, SessionScope, ToolCallDisplay};
use crate::event::{
    AgentCommand, AgentEvent, AgentRequest, ButtonPress, ChatRef, Inbound, InboundMessage, MessageRef, Outbound,
    PermissionKind, PermissionOutcome, SessionKey, TurnOutcome,
};
use crate::streamer::BlockStreamConfig;
use crate::vec_map::VecMap;
use commands::{Command, SessionView};
use permissions::{Answerers, Asker, MAX_ASKS_PER_TURN, MAX_PENDING, PermissionRelay, Resolution};
use session::{CancelCause, Life, Retry, Session, TurnSettings, Waiting, Waits, Writer};

pub use session::{CANCEL_WAIT, MAX_WAITING};

/// How often the caller sends [`Event::Tick`] at least, deadline or not: an idle session
/// leaves memory within this of its channel's `evictIdleAfter` (the daemon's status tick).
pub const EVICTION_CHECK: Duration = Duration::from_secs(1);

/// Everything the core reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Inbound(Inbound),
    Agent {
        agent: String,
        event: AgentEvent,
    },
    /// The clock reached [`Core::next_deadline`], or a second passed: idle sessions leave
    /// memory on a tick (see [`EVICTION_CHECK`]).
    Tick,
    /// The git worktree [`Action::CreateWorktree`] asked for exists, or why not.
    WorktreeDone {
        base: SessionKey,
        name: String,
        chat: ChatRef,
        result: Result<PathBuf, String>,
    },
    /// A channel's pairing files as they are now (read at start, and whenever another
    /// process such as `tether pairing approve` changed them).
    AccessFiles {
        channel: String,
        pending: Vec<pairing::PairingRequest>,
        approved: Vec<String>,
        /// Group chat ids approved under `groupPolicy: pairing` (`<channel>-groups.json`).
        approved_groups: Vec<String>,
    },
    /// A channel's group history as persisted (read at start).
    GroupHistory {
        channel: String,
        entries: Vec<history::HistoryEntry>,
    },
}

/// Everything the core asks the edges to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Outbound),
    /// Make a git worktree at `path` for task `name` (`/session new NAME --worktree`), under
    /// the repository at `repo`; answer with [`Event::WorktreeDone`].
    CreateWorktree {
        base: SessionKey,
        name: String,
        chat: ChatRef,
        repo: PathBuf,
        path: PathBuf,
    },
    Agent {
        agent: String,
        request: AgentRequest,
    },
    /// Add the request to `<channel>-pairing.json`, merged under the file's lock.
    SavePairingRequest {
        channel: String,
        request: pairing::PairingRequest,
    },
    /// Record this in the audit log (when one is configured).
    Audit(crate::audit::AuditEvent),
    /// These messages of a journaled channel need nothing more: the gates dropped them, a
    /// newer message steered them away, `/clear` or a reload discarded them, or everything
    /// they asked for was already sent. (A message answered by a text is settled by the
    /// channel once that text is delivered: see [`Outbound::Text`].)
    Settle {
        channel: String,
        messages: Vec<MessageRef>,
    },
    /// The channel's group history changed: write all of it to
    /// `<channel>-group-history.jsonl`.
    SaveGroupHistory {
        channel: String,
        entries: Vec<history::HistoryEntry>,
    },
}

/// What `sessions.json` keeps of one session, so a restarted service can `session/load` it
/// and answer in the same chat without instructing it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: String,
    pub agent: String,
    /// Where the latest message came from.
    pub chat: ChatRef,
    pub cwd: PathBuf,
    /// The channel's instructions were already sent in this session.
    pub instructed: bool,
}

/// Replies of the local commands and notices (kept together so tests and docs agree).
pub mod texts {
    pub const CLEARED: &str = "Session cleared. The next message starts a fresh conversation.";
    pub const NOTHING_TO_CLEAR: &str = "No active session to clear.";
    pub const CANCELLED: &str = "Cancelled current request.";
    pub const NOTHING_TO_CANCEL: &str = "No request is currently running.";
    pub const TOO_MANY: &str =
        "Too many queued messages; this one was not sent to the agent. Wait for the answers, or send /cancel.";
    pub const STUCK_FRESH: &str = "The agent is stuck: it did not stop the previous request within 10 s, \
        so your new message goes to a fresh conversation.";
    pub const STUCK_NEXT: &str = "The agent is stuck: it did not stop the cancelled request within 10 s. \
        Your next message starts a fresh conversation.";
    /// Where a cancelled turn's streamed answer stood, when a newer message steered it away.
    pub const STEERED: &str = "⏹ Cancelled: your newer message replaces this request.";
    pub const AGENT_GAVE_UP: &str = "The agent crashed too often, so tether has stopped: this request was not \
        answered. The operator's log says why.";
    pub const CRASH_RETRY: &str =
        "The agent stopped while working on this. It is being restarted; your request will be sent again.";
    pub const CRASH_GAVE_UP: &str =
        "The agent stopped again while working on this request, so it was not answered. Please try again.";
}

/// The keys of the sessions that may have a turn running ([`Core::with_turn`]). A list: they
/// are few (the conversations that are being answered), and a set of strings cost 5 KB of code.
#[derive(Debug, Default)]
struct WithTurn {
    keys: Vec<SessionKey>,
    /// The earliest deadline of their turns when the last event ended ([`WithTurn::refresh`]).
    earliest: Option<Instant>,
}

impl WithTurn {
    /// Copies the key only when it is not there yet (once a turn, not once a message).
    fn insert(&mut self, key: &SessionKey) {
        if !self.keys.contains(key) {
            self.keys.push(key.clone());
        }
    }

    /// Drop the keys whose turn ended and note the earliest deadline of the others. One pass
    /// at the end of every event: [`Core::next_deadline`] hashing each key again as well cost
    /// about 2,000 instructions a message with 50 conversations (`bench/callgrind.sh 2 6 50`).
    fn refresh(&mut self, sessions: &HashMap<SessionKey, Session>) {
        let mut earliest: Option<Instant> = None;
        self.keys.retain(|key| match sessions.get(key).and_then(Session::deadline) {
            Some(at) => {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                true
            }
            None => false,
        });
        self.earliest = earliest;
    }
}

/// The conversation state of the whole service.
#[derive(Debug)]
pub struct Core {
    channels: VecMap<String, ChannelConfig>,
    sessions: HashMap<SessionKey, Session>,
    /// The sessions that may have a turn running: every one that has is here (a turn begins
    /// only in `Session::start_next_turn`, and each caller adds its key); ones that ended are
    /// dropped in [`Core::finish`], which notes their earliest deadline for
    /// [`Core::next_deadline`] (asked after every event the daemon takes).
    with_turn: WithTurn,
    /// (agent, session id) → key, to route the agent's events.
    by_session_id: HashMap<(String, String), SessionKey>,
    /// The latest `available_commands_update` of each agent, for `/help`.
    agent_commands: HashMap<String, Vec<AgentCommand>>,
    /// Agents known to be down (crashed, not yet ready again), with whether each can
    /// `session/load`. An agent not in `down` is up.
    /// (A list and an ordered map: a service has one or two agents, and these are looked up
    /// for every session on every turn of the daemon's loop, where hashing the name cost
    /// more; a list of names also costs no map code in the binary.)
    down: Vec<String>,
    load_session: VecMap<String, bool>,
    /// Tool permission requests waiting for a person.
    permissions: PermissionRelay,
    /// Who may talk: pairing books, the wall clock, code randomness.
    access: pairing::Access,
    /// Sessions of an earlier run (`sessions.json`), revived with `session/load` when their
    /// conversation's next message comes.
    dormant: HashMap<SessionKey, SessionRecord>,
    /// Messages of journaled channels taken in and not yet answered or settled: each ends
    /// in an [`Outbound::Text`] that answers it or an [`Action::Settle`].
    unsettled: BTreeSet<(String, MessageRef)>,
    /// Unaddressed group messages kept as context for the next mention, per channel.
    history: VecMap<String, history::GroupHistory>,
    /// Unix ms, for the age of messages (backlog) and pairing times.
    wall_ms: u64,
    /// Scheduled loops (`loops.rs`), and when the clock must next look at them.
    loops: loops::Book,
    loops_wake: Option<Instant>,
    /// Named tasks (`tasks.rs`), by conversation key; changed since last saved.
    tasks: VecMap<SessionKey, tasks::TaskList>,
    tasks_dirty: bool,
    /// Bumped whenever what [`Core::sessions_snapshot`] returns may have changed, so the
    /// daemon rebuilds and compares that snapshot only then (it cost a quarter of the CPU of
    /// each message when taken after every event).
    records_version: u64,
    /// An audit log is configured: [`Action::Audit`] records are returned (else dropped here).
    audit: bool,
}

/// The turn settings of a channel (defaults when the channel is gone).
fn turn_settings(channel: Option<&ChannelConfig>) -> TurnSettings<'_> {
    TurnSettings {
        instructions: channel.and_then(|c| c.instructions.as_deref()),
        turn_timeout: channel.map_or(Duration::from_secs(1800), |c| c.turn_timeout),
        // A platform that shows the answer live has no use for blocks.
        block_stream: channel.filter(|c| c.block_streaming && !c.capabilities().live_drafts).map(|c| {
            BlockStreamConfig { min_chars: c.block_min_chars, max_chars: c.block_max_chars, idle: c.block_idle }
        }),
        typing_refresh: channel.and_then(|c| c.capabilities().typing_refresh),
    }
}

impl Core {
    pub fn new(config: &Config) -> Core {
        Core {
            channels: config.channels.clone(),
            sessions: HashMap::new(),
            with_turn: WithTurn::default(),
            by_session_id: HashMap::new(),
            agent_commands: HashMap::new(),
            down: Vec::new(),
            load_session: VecMap::new(),
            permissions: PermissionRelay::default(),
            access: pairing::Access::default(),
            dormant: HashMap::new(),
            unsettled: BTreeSet::new(),
            history: VecMap::new(),
            wall_ms: 0,
            loops: loops::Book::default(),
            loops_wake: None,
            tasks: VecMap::new(),
            tasks_dirty: false,
            records_version: 0,
            audit: config.audit.is_some(),
        }
    }

    /// The wall-clock time in epoch ms, for pairing times (which are persisted). The daemon
    /// sets it before each event; tests set what they need.
    pub fn set_wall_clock(&mut self, epoch_ms: u64) {
        self.wall_ms = epoch_ms;
        self.access.set_wall_clock(epoch_ms);
    }

    /// Replace the randomness pairing codes are made from (tests).
    pub fn set_entropy(&mut self, entropy: pairing::Entropy) {
        self.access.set_entropy(entropy);
    }

    /// The access policy of a channel in one line, for `/status`.
    pub fn access_summary(&self, channel: &str) -> Option<String> {
        self.channels.get(channel).map(|c| self.access.summary(c))
    }

    /// An agent is starting: what comes for it waits until it answers `initialize`.
    pub fn agent_starting(&mut self, agent: &str) {
        self.mark_down(agent);
    }

    fn mark_down(&mut self, agent: &str) {
        if !self.down.iter().any(|a| a == agent) {
            self.down.push(agent.to_string());
        }
    }

    /// The next moment [`Event::Tick`] is due for a turn, a permission request or a loop, if
    /// any. Idle sessions due to leave memory are not counted: the caller ticks at least every
    /// [`EVICTION_CHECK`] as well. Asked after every event, asking each idle session too took
    /// 11% of the daemon's instructions with 50 conversations (`bench/callgrind.sh 2 6 50`),
    /// and asking every session for its turn 4% (12,900 instructions per message): the
    /// sessions in `Core::with_turn` are asked once, at the end of each event.
    pub fn next_deadline(&self) -> Option<Instant> {
        debug_assert!(
            self.sessions.iter().all(|(key, s)| s.turn.is_none() || self.with_turn.keys.contains(key)),
            "a turn began in a session Core::with_turn does not hold"
        );
        debug_assert_eq!(
            self.with_turn.earliest,
            self.with_turn.keys.iter().filter_map(|key| self.sessions.get(key)?.deadline()).min(),
            "a turn changed and Core::finish did not run"
        );
        self.with_turn.earliest.into_iter().chain(self.permissions.next_deadline()).chain(self.loops_wake).min()
    }

    /// How long a session of `channel` served by `agent` may stay idle in memory: the
    /// channel's `evictIdleAfter`, and only when the agent can load it again later (else its
    /// context would be lost).
    fn evict_after(&self, channel: &str, agent: &str) -> Option<Duration> {
        let can_load = self.load_session.get(agent).copied().unwrap_or(false);
        let after = self.channels.get(channel)?.evict_idle_after;
        can_load.then_some(after)
    }

    /// Move the sessions idle past their channel's `evictIdleAfter` to the dormant records
    /// (`sessions.json` keeps them; the next message loads them with `session/load`).
    fn evict_idle(&mut self, now: Instant) {
        let mut policy = EvictionPolicy::new(self);
        let due: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| policy.due(s).is_some_and(|at| at <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            let Some(session) = self.sessions.remove(&key) else { continue };
            self.records_version += 1;
            let Some(session_id) = session.id().map(str::to_string) else { continue };
            self.by_session_id.remove(&(session.agent.clone(), session_id.clone()));
            log::debug!(target: session.chat.channel.as_str(), "{key}: idle; session {session_id} leaves memory until its next message");
            let record = SessionRecord {
                session_id,
                agent: session.agent,
                chat: session.chat,
                cwd: session.cwd,
                instructed: session.instructed,
            };
            self.dormant.insert(key, record);
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Inbound(Inbound::Message(message)) => self.on_message(message, now, &mut actions),
            Event::Inbound(Inbound::Button(press)) => self.on_button(press, &mut actions),
            Event::Inbound(Inbound::OperatorClear { key }) => {
                if let Some(session) = self.clear_session(&key, &mut actions) {
                    let text = "The operator cleared this conversation: the next message starts a fresh one.";
                    session.tell_all(text, &mut actions);
                    if session.turn.is_none() && session.waiting.is_empty() {
                        actions.push(say(&session.chat, text.to_string()));
                    }
                }
            }
            Event::Agent { agent, event } => self.on_agent(agent, event, now, &mut actions),
            Event::WorktreeDone { base, name, chat, result } => {
                self.worktree_done(&base, &name, &chat, result, &mut actions)
            }
            Event::Tick => {
                self.on_tick(now, &mut actions);
                self.run_due_loops(now, &mut actions);
            }
            Event::GroupHistory { channel, entries } => {
                let Some(config) = self.channels.get(&channel) else { return actions };
                let kept = history::GroupHistory::from_entries(entries, |chat| config.group(chat).history_limit);
                self.history.insert(channel, kept);
            }
            Event::AccessFiles { channel, pending, approved, approved_groups } => {
                let files = pairing::AccessFilesState { pending, approved, approved_groups };
                self.access.reload(&channel, files, &mut actions)
            }
        }
        self.finish(&mut actions, now);
        actions
    }

    /// What every change ends with: settle what it released, look at the loops' clock
    /// again, drop audit records nobody keeps.
    fn finish(&mut self, actions: &mut Vec<Action>, now: Instant) {
        self.with_turn.refresh(&self.sessions);
        self.settle_cancelled_permissions(actions);
        self.settle_released(actions);
        self.schedule_loops(now);
        if !self.audit {
            actions.retain(|a| !matches!(a, Action::Audit(_)));
        }
    }

    /// Every message this event released without a text that answers it (gates, steering,
    /// `/clear`, a reload, an answer that was all streamed already) is settled now; the
    /// ones a text answers are the channel's to settle once it is delivered.
    fn settle_released(&mut self, actions: &mut Vec<Action>) {
        if self.unsettled.is_empty() {
            return;
        }
        for action in actions.iter() {
            if let Action::Send(Outbound::Text { chat, answers, .. }) = action {
                for answer in answers {
                    self.unsettled.remove(&(chat.channel.clone(), answer.clone()));
                }
            }
        }
        if self.unsettled.is_empty() {
            return;
        }
        // Every unsettled message not released is held by one session, once; so when the
        // sessions of journaled channels hold as many messages as are unsettled, none was
        // released, and the sorted list of held messages below is not needed (it cost most of
        // an event with many conversations). Were a message ever held twice, a release could
        // hide behind it until it leaves, then be settled: late, never lost (the journal keeps
        // it pending meanwhile). Every test checks the shortcut against the full list.
        if self.held_journaled_count() == self.unsettled.len() {
            debug_assert!(self.released().is_empty(), "held as many as unsettled, yet released: {:?}", self.released());
            return;
        }
        let released = self.released();
        let mut by_channel: VecMap<String, Vec<MessageRef>> = VecMap::new();
        for (channel, reference) in released {
            self.unsettled.remove(&(channel.clone(), reference.clone()));
            by_channel.get_or_default(channel).push(reference);
        }
        for (channel, messages) in by_channel {
            actions.push(Action::Settle { channel, messages });
        }
    }

    /// The unsettled messages no session holds.
    fn released(&self) -> Vec<(String, MessageRef)> {
        let held = self.held_messages();
        self.unsettled
            .iter()
            .filter(|(channel, r)| held.binary_search(&(channel.as_str(), r)).is_err())
            .cloned()
            .collect()
    }

    /// A session being cancelled (steer, `/cancel`, `/clear`, timeout) drops its permission
    /// requests: the ACP connection answers them `cancelled`; here their messages are updated.
    fn settle_cancelled_permissions(&mut self, actions: &mut Vec<Action>) {
        let cancelled: Vec<(String, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Agent { agent, request: AgentRequest::Cancel { session_id } } => {
                    Some((agent.clone(), session_id.clone()))
                }
                _ => None,
            })
            .collect();
        for (agent, session_id) in cancelled {
            for pending in self.permissions.cancel_session_id(&agent, &session_id) {
                actions.push(settled(&pending, "cancelled"));
            }
        }
    }

    /// Take in the sessions an earlier run kept (`sessions.json`). Nothing is sent now: a
    /// conversation's next message loads its session (`session/load`) instead of opening a
    /// new one. Records of channels no longer configured or now on another agent are skipped.
    pub fn adopt(&mut self, records: impl IntoIterator<Item = (SessionKey, SessionRecord)>) -> usize {
        let before = self.dormant.len();
        for (key, record) in records {
            let agent_now = self.channels.get(&record.chat.channel).map(|c| c.agent.as_str());
            if agent_now == Some(record.agent.as_str()) && !self.sessions.contains_key(&key) {
                self.dormant.insert(key, record);
                self.records_version += 1;
            }
        }
        self.dormant.len() - before
    }

    /// Changes whenever [`Core::sessions_snapshot`] may have: an unchanged number means an
    /// unchanged snapshot.
    pub fn records_version(&self) -> u64 {
        self.records_version
    }

    /// Every session the agent has opened, by key: what `sessions.json` keeps.
    pub fn sessions_snapshot(&self) -> BTreeMap<SessionKey, SessionRecord> {
        let records = self.sessions.iter().filter_map(|(key, s)| {
            let record = SessionRecord {
                session_id: s.id()?.to_string(),
                agent: s.agent.clone(),
                chat: s.chat.clone(),
                cwd: s.cwd.clone(),
                instructed: s.instructed,
            };
            Some((key.clone(), record))
        });
        let dormant = self.dormant.iter().map(|(k, r)| (k.clone(), r.clone()));
        records.chain(dormant).collect_map()
    }

    /// The platform ids of the messages a session still owes an answer to: the turn in
    /// flight first, then the waiting ones, oldest first (tests follow them through turns).
    #[cfg(test)]
    pub fn unanswered_message_ids(&self, key: &str) -> Vec<String> {
        let Some(s) = self.sessions.get(key) else { return Vec::new() };
        let in_flight = s.turn.iter().flat_map(|t| t.message_ids.iter());
        let waiting = s.waiting.iter().flat_map(|w| w.message_ids.iter());
        in_flight.chain(waiting).map(|r| r.message_id.clone()).collect()
    }

    fn on_message(&mut self, mut message: InboundMessage, now: Instant, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else {
            log::warn!(target: "core", "message for unknown channel {}", message.channel);
            return;
        };
        if let Some(reference) = message.reference().filter(|_| channel.capabilities().journaled) {
            self.unsettled.insert((channel.name.clone(), reference));
        }
        if let Some(age_ms) = self.backlog_age(channel, &message) {
            return self.backlog_notice(message, age_ms, actions);
        }
        // The gates run before anything else looks at the message (commands included).
        let approvals = self.access.approvals(&channel.name, &message.sender_id, &message.chat_id);
        let verdict = gate::check(channel, &message, approvals);
        let before = actions.len();
        match self.access.admit(channel, &message, actions) {
            pairing::Admit::Go => {}
            pairing::Admit::Overheard => return self.overhear(message, actions),
            pairing::Admit::No => {
                let records = audit::refused(&message, &verdict, actions.get(before..).unwrap_or_default());
                actions.extend(records);
                return;
            }
        }
        if message.is_group && channel.capabilities().addressed_commands && commands::addressed_elsewhere(&message.text)
        {
            log::debug!(target: channel.name.as_str(), "ignored a command for another bot in {}", message.chat_id);
            return;
        }
        let base_key = routing::session_key(channel.session_scope, &message);
        // With named tasks, the selected task's conversation (`tasks.rs`).
        let (key, task_label) = self.task_route(&base_key, &message);
        let reply = routing::reply_to(&message);
        if self.audit {
            // Copies of the whole message: not made when nobody keeps them (`finish` drops
            // audit records then anyway).
            actions.push(audit::accepted(&message, &key));
        }
        // A webhook event is no person: never a command, never an answer to a question.
        let from_person = message.webhook.is_none();
        if let Some(answer) = permissions::parse_text_answer(&message.text).filter(|_| from_person) {
            // `/approve` always answers; "yes 3" only when something is pending here.
            if message.text.trim_start().starts_with('/') || self.permissions.pending_in(&reply).next().is_some() {
                self.answer_permission(&reply, &message.sender_id, &answer, actions);
                return;
            }
        }
        if let Some((command, args)) = commands::parse(&message.text).filter(|_| from_person) {
            log::info!(target: channel.name.as_str(), "command {command:?} from {} in {} ({key})", message.sender_id, message.chat_id);
            let text = self.run_command(command, args, &key, &message, now, actions);
            actions.push(answer(&reply, text, message.reference().into_iter().collect()));
            return;
        }
        let Some(channel) = self.channels.get(&message.channel) else { return };
        let mut body = prompt::message_body(&message);
        if body.is_empty() {
            log::info!(target: channel.name.as_str(), "ignored an empty message from {}", message.sender_id);
            return;
        }
        let limit = if message.is_group { channel.group(&message.chat_id).history_limit } else { 0 };
        if let Some(history) = self.history.get_mut(&channel.name).filter(|_| limit > 0) {
            let earlier = history.take(&message.chat_id, message.thread_id.as_deref(), limit);
            if !earlier.is_empty() {
                log::info!(target: channel.name.as_str(), "{} earlier group messages go with this one as context", earlier.len());
                body = format!("{}\n\n{body}", history::context_block(&earlier));
                let entries = history.entries();
                actions.push(Action::SaveGroupHistory { channel: channel.name.clone(), entries });
            }
        }
        let mode = match message.is_group {
            true => channel.group(&message.chat_id).dispatch_mode,
            false => channel.dispatch_mode,
        };
        let agent_up = !self.down.contains(&channel.agent);
        let can_load = self.load_session.get(&channel.agent).copied().unwrap_or(false);
        let cwd = self.task_cwd(&base_key, &key).unwrap_or_else(|| channel.cwd.clone());
        let dormant = &mut self.dormant;
        let records_version = &mut self.records_version;
        let live = &self.by_session_id;
        let session = self.sessions.entry(key.clone()).or_insert_with(|| {
            // A new session has no id yet, so it is not in the snapshot; a dormant record
            // taken back may be (it comes back with the session once loaded).
            let earlier = dormant.remove(&key);
            *records_version += u64::from(earlier.is_some());
            let earlier = unless_taken(earlier, live, &key);
            new_session(&key, channel, cwd, &reply, earlier, (agent_up, can_load), now, actions)
        });
        if session.chat != reply {
            session.chat = reply.clone();
            self.records_version += 1;
        }
        session.label = task_label;
        // Copied only when the writer changed: most messages come from whoever wrote last.
        let same_writer = session.writer.as_ref().is_some_and(|w| {
            w.id == message.sender_id && w.name == message.sender_name && w.is_group == message.is_group
        });
        if from_person && !same_writer {
            let id = message.sender_id.clone();
            session.writer = Some(Writer { id, name: message.sender_name.clone(), is_group: message.is_group });
        }
        session.shared = match channel.session_scope {
            SessionScope::Single => true,
            SessionScope::Thread | SessionScope::ChatThread => message.is_group,
            SessionScope::User => false,
        };
        let waiting = Waiting {
            chat: reply.clone(),
            message_ids: message.reference().into_iter().collect(),
            body,
            images: prompt::images(&message),
            how: Waits::Alone,
            // An event's turn has no sender who alone may answer its permission requests:
            // anyone the channel's gates admit may. Taken: the message is not read again.
            sender: if from_person { std::mem::take(&mut message.sender_id) } else { String::new() },
        };
        // A steer cancels a turn whose answer the page already shows as it streams: say so
        // where that partial answer stands (it replaces it), not silently.
        let steered_chat = session
            .turn
            .as_ref()
            .filter(|t| mode == DispatchMode::Steer && t.cancel.is_none() && channel.capabilities().live_drafts)
            .map(|t| t.chat.clone());
        if session.accept(waiting, mode, now, actions).is_err() {
            log::warn!(target: channel.name.as_str(), "{key}: {MAX_WAITING} messages already wait; refused one");
            actions.push(say(&reply, texts::TOO_MANY.to_string()));
            return;
        }
        if let Some(chat) = steered_chat {
            actions.push(say(&chat, texts::STEERED.to_string()));
        }
        let instructed = session.instructed;
        self.with_turn.insert(&key);
        session.start_next_turn(turn_settings(Some(channel)), now, actions);
        self.records_version += u64::from(session.instructed != instructed);
    }

    /// A group message from someone allowed that does not address the bot: kept as context
    /// for the next mention when the group has a `groupHistoryLimit`, else nothing.
    fn overhear(&mut self, message: InboundMessage, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else { return };
        let limit = channel.group(&message.chat_id).history_limit;
        if limit == 0 {
            log::debug!(target: channel.name.as_str(), "dropped message from {} in {}: bot not mentioned (requireMention)", message.sender_id, message.chat_id);
            return;
        }
        let text = prompt::message_body(&message);
        let entry = history::HistoryEntry {
            chat_id: message.chat_id.clone(),
            thread_id: message.thread_id.clone(),
            sender_id: message.sender_id.clone(),
            sender_name: message.sender_name.clone(),
            text,
            at: message.sent_at_ms.unwrap_or(self.wall_ms),
        };
        let history = self.history.get_or_default(channel.name.clone());
        history.record(entry, limit);
        log::debug!(target: channel.name.as_str(), "kept a message from {} in {} as group history", message.sender_id, message.chat_id);
        actions.push(Action::SaveGroupHistory { channel: channel.name.clone(), entries: history.entries() });
    }

    /// Run a local command for the sender of `message`; returns the reply.
    fn run_command(
        &mut self,
        command: Command,
        _args: &str,
        key: &str,
        message: &InboundMessage,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> String {
        let Some(channel) = self.channels.get(&message.channel) else { return String::new() };
        let view = self.sessions.get(key).map_or_else(SessionView::default, |s| SessionView {
            exists: true,
            starting: s.id().is_none(),
            running: s.turn.is_some(),
            waiting: s.waiting.len(),
        });
        match command {
            Command::Help => {
                commands::help_text(self.agent_commands.get(&channel.agent).map(Vec::as_slice).unwrap_or_default())
            }
            Command::Status => commands::status_text(&commands::StatusInfo {
                session: view,
                scope: channel.session_scope,
                access: &self.access.summary(channel),
                channel: &channel.name,
                channel_type: channel.platform.name,
                agent: &channel.agent,
                model: channel.model.as_deref(),
                cwd: &channel.cwd,
            }),
            Command::Who => commands::who_text(&commands::WhoInfo {
                channel: &channel.name,
                cwd: &channel.cwd,
                session: view,
                scope: channel.session_scope,
                in_group: message.is_group,
                in_thread: message.thread_id.is_some(),
                sender_name: &message.sender_name,
                sender_id: &message.sender_id,
            }),
            Command::Loop => self.loop_command(_args, message, now, actions),
            Command::Session => self.task_command(None, _args, message, now, actions),
            Command::Sessions => self.task_command(Some(_args), "", message, now, actions),
            Command::Clear => {
                // A fresh start in a group also forgets what was overheard there (as Qwen Code).
                if let Some(history) = self.history.get_mut(&message.channel).filter(|_| message.is_group)
                    && !history.take(&message.chat_id, message.thread_id.as_deref(), usize::MAX).is_empty()
                {
                    let entries = history.entries();
                    actions.push(Action::SaveGroupHistory { channel: message.channel.clone(), entries });
                }
                match self.clear_session(key, actions) {
                    Some(_) => texts::CLEARED.to_string(),
                    None => texts::NOTHING_TO_CLEAR.to_string(),
                }
            }
            Command::Cancel => {
                let Some(session) = self.sessions.get_mut(key) else { return texts::NOTHING_TO_CANCEL.to_string() };
                let dropped = session.waiting.len();
                session.waiting.clear();
                session.steered = false;
                let running = session.id().is_some() && session.cancel_turn(CancelCause::User, now, actions);
                if running || dropped > 0 {
                    log::info!(target: channel.name.as_str(), "{key}: cancelled (turn running: {running}, {dropped} waiting dropped)");
                    texts::CANCELLED.to_string()
                } else {
                    texts::NOTHING_TO_CANCEL.to_string()
                }
            }
        }
    }

    fn on_agent(&mut self, agent: String, event: AgentEvent, now: Instant, actions: &mut Vec<Action>) {
        match event {
            AgentEvent::Ready { load_session } => self.on_agent_ready(&agent, load_session, actions),
            AgentEvent::SessionCreated { key, session_id } => {
                // An agent that numbers its sessions anew after a restart can "load" an old id
                // that now names another conversation: taking it would send one person's
                // answers to another. Treat it as a failed open (a load then opens a new one).
                let taken = self.by_session_id.get(&(agent.clone(), session_id.clone())).is_some_and(|k| *k != key);
                if taken {
                    let error = format!("the agent gave session id {session_id}, which another conversation has");
                    return self.on_agent(agent, AgentEvent::SessionFailed { key, error }, now, actions);
                }
                let Some(session) = self.sessions.get_mut(&key).filter(|s| s.id().is_none() && s.agent == agent) else {
                    // Cleared while session/new was in flight: the agent keeps an unused session.
                    log::info!(target: "core", "agent {agent} opened session {session_id} for {key}, no longer wanted");
                    return;
                };
                let how = if session.opened(session_id.clone()) { "restored" } else { "opened" };
                log::info!(target: session.chat.channel.as_str(), "{key}: session {session_id} {how}");
                self.by_session_id.insert((agent, session_id), key.clone());
                self.records_version += 1;
                let settings = turn_settings(self.channels.get(&session.chat.channel));
                self.with_turn.insert(&key);
                session.start_next_turn(settings, now, actions);
            }
            AgentEvent::SessionFailed { key, error } => {
                if !self.sessions.get(&key).is_some_and(|s| s.id().is_none() && s.agent == agent) {
                    return;
                }
                if let Some(session) =
                    self.sessions.get_mut(&key).filter(|s| matches!(s.life(), Life::Restoring { .. }))
                {
                    // The agent could not load it: carry on in a fresh session.
                    log::warn!(target: session.chat.channel.as_str(), "{key}: could not restore the session ({error}); opening a new one");
                    session.opening();
                    session.instructed = false;
                    self.records_version += 1;
                    let model = self.channels.get(&session.chat.channel).and_then(|c| c.model.clone());
                    let request = AgentRequest::NewSession { key: key.clone(), cwd: session.cwd.clone(), model };
                    actions.push(Action::Agent { agent, request });
                    return;
                }
                let Some(session) = self.sessions.remove(&key) else { return };
                self.records_version += 1;
                log::error!(target: session.chat.channel.as_str(), "{key}: agent could not open a session: {error}");
                session.tell_all(&format!("The agent could not start a conversation: {error}"), actions);
            }
            AgentEvent::TextChunk { session_id, text } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id)) else { return };
                let Some(session) = self.sessions.get_mut(key) else { return };
                // A cancelled turn's text is dropped: a newer message or /cancel replaced it.
                let Some(turn) = session.turn.as_mut().filter(|t| t.cancel.is_none()) else { return };
                turn.answer.push_str(&text);
                if let Some(stream) = turn.stream.as_mut() {
                    for block in stream.push(&text, now) {
                        turn.streamed = true;
                        actions.push(say(&turn.chat, labelled(&session.label, block)));
                    }
                }
                // Channels that can show an answer as it grows get drafts, coalesced in time.
                if self.channels.get(&session.chat.channel).is_some_and(|c| c.capabilities().live_drafts)
                    && turn.draft_now(now)
                {
                    actions
                        .push(Action::Send(Outbound::Draft { chat: session.chat.clone(), text: turn.answer.clone() }));
                }
            }
            AgentEvent::CommandsAvailable { session_id, commands } => {
                log::debug!(target: "core", "agent {agent} offers {} command(s) (session {session_id})", commands.len());
                self.agent_commands.insert(agent, commands);
            }
            AgentEvent::TurnEnded { session_id, outcome } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id)).cloned() else { return };
                let Some(session) = self.sessions.get_mut(&key) else { return };
                let Some(mut turn) = session.turn.take() else { return };
                session.last_active = now;
                for pending in self.permissions.cancel_session(&key) {
                    actions.push(settled(&pending, "the request ended before an answer"));
                }
                // Taken from the ended turn, not copied.
                let (before, chat, answered) =
                    (actions.len(), std::mem::take(&mut turn.chat), std::mem::take(&mut turn.message_ids));
                let finished = turn.cancel.is_none();
                match turn.cancel {
                    None if turn.stream.is_some() => {
                        let rest = turn.stream.as_mut().map(|s| s.finish()).unwrap_or_default();
                        for block in rest {
                            turn.streamed = true;
                            actions.push(say(&chat, labelled(&session.label, block)));
                        }
                        // What was streamed is the answer; say something only if nothing was.
                        let note = final_answer(String::new(), &outcome);
                        if !turn.streamed || matches!(outcome, TurnOutcome::Failed(_) | TurnOutcome::MaxTokens) {
                            let text = if turn.streamed {
                                note.trim().to_string()
                            } else {
                                final_answer(turn.answer, &outcome)
                            };
                            actions.push(say(&chat, labelled(&session.label, text)));
                        }
                    }
                    None => actions.push(say(&chat, labelled(&session.label, final_answer(turn.answer, &outcome)))),
                    Some(c) => {
                        let session_id = session.id().unwrap_or_default();
                        log::info!(target: chat.channel.as_str(), "{key}: cancelled turn of {session_id} ended ({outcome:?}, {:?})", c.cause)
                    }
                }
                if finished {
                    attach_answers(&mut actions[before..], &chat, answered);
                }
                let settings = turn_settings(self.channels.get(&session.chat.channel));
                let instructed = session.instructed;
                self.with_turn.insert(&key);
                session.start_next_turn(settings, now, actions);
                self.records_version += u64::from(session.instructed != instructed);
            }
            AgentEvent::PermissionRequested { session_id, request, call, options } => {
                self.on_permission_request(agent, session_id, request, call, options, now, actions);
            }
            AgentEvent::ToolCall { session_id, call } => self.on_tool_call(&agent, &session_id, call, actions),
            AgentEvent::Plan { session_id, entries } => self.on_plan(&agent, &session_id, &entries, actions),
            AgentEvent::Thought { .. } | AgentEvent::ModeChanged { .. } => {}
            AgentEvent::Exited { reason } => self.on_agent_exit(&agent, &reason, actions),
        }
    }

    /// The agent died. Its sessions stay: each is loaded again (or opened anew) once the agent
    /// is back, and a turn the crash interrupted is sent once more; a turn interrupted twice
    /// is given up. Messages that arrive meanwhile wait.
    fn on_agent_exit(&mut self, agent: &str, reason: &str, actions: &mut Vec<Action>) {
        self.mark_down(agent);
        for pending in self.permissions.cancel_agent(agent) {
            actions.push(settled(&pending, "cancelled: the agent stopped"));
        }
        self.by_session_id.retain(|(a, _), _| a != agent);
        let mut keys: Vec<&SessionKey> =
            self.sessions.iter().filter(|(_, s)| s.agent == agent).map(|(k, _)| k).collect();
        keys.sort();
        let (mut interrupted, mut lost) = (0, 0);
        for key in keys.into_iter().cloned().collect::<Vec<_>>() {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            self.records_version += 1;
            let Some(turn) = session.lose() else { continue };
            if turn.cancel.is_some() {
                continue; // It was being cancelled anyway; what waits runs after the restart.
            }
            if turn.retried {
                lost += 1;
                actions.push(answer(&turn.chat, texts::CRASH_GAVE_UP.to_string(), turn.message_ids));
            } else {
                interrupted += 1;
                actions.push(say(&turn.chat, texts::CRASH_RETRY.to_string()));
                let (chat, message_ids, text, senders) = (turn.chat, turn.message_ids, turn.text, turn.senders);
                session.retry_later(Retry { chat, message_ids, text, images: turn.images, senders });
            }
        }
        log::warn!(target: "core", "agent {agent} stopped ({reason}): {interrupted} turn(s) to retry, {lost} given up");
    }

    /// The agent crashed too often and tether stops: every conversation on it with a request
    /// in flight, to retry or waiting is told, instead of waiting for a restart that will not
    /// come. (Journaled messages stay unanswered in the journal for the next start.)
    pub fn agent_given_up(&mut self, agent: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut keys: Vec<&SessionKey> =
            self.sessions.iter().filter(|(_, s)| s.agent == agent).map(|(k, _)| k).collect();
        keys.sort();
        for key in keys {
            let Some(session) = self.sessions.get(key) else { continue };
            let mut chats = session.chats();
            if let Some(retry) = session.retry()
                && !chats.contains(&retry.chat)
            {
                chats.push(retry.chat.clone());
            }
            for chat in chats {
                actions.push(say(&chat, texts::AGENT_GAVE_UP.to_string()));
            }
        }
        actions
    }

    /// The agent is (back) up: open or restore every session that waits for it.
    fn on_agent_ready(&mut self, agent: &str, load_session: bool, actions: &mut Vec<Action>) {
        let was_down = self.down.iter().any(|a| a == agent);
        self.down.retain(|a| a != agent);
        // The first `initialize` of this run is a start, not a comeback.
        let restarted = self.load_session.insert(agent.to_string(), load_session).is_some();
        let mut keys: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.agent == agent && s.id().is_none())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let (mut loads, mut news) = (0, 0);
        for key in keys {
            let Some(session) = self.sessions.get_mut(&key) else { continue };
            let model = self.channels.get(&session.chat.channel).and_then(|c| c.model.clone());
            let request = match session.take_lost_id() {
                Some(session_id) if load_session => {
                    loads += 1;
                    session.restoring(session_id.clone());
                    AgentRequest::LoadSession { key, session_id, cwd: session.cwd.clone(), model }
                }
                _ => {
                    news += 1;
                    session.instructed = false;
                    session.opening();
                    self.records_version += 1;
                    AgentRequest::NewSession { key, cwd: session.cwd.clone(), model }
                }
            };
            actions.push(Action::Agent { agent: agent.to_string(), request });
        }
        if was_down && (restarted || loads + news > 0) {
            log::info!(target: "core", "agent {agent} is back: restoring {loads} session(s), opening {news} new");
        }
    }

    fn on_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.evict_idle(now);
        for pending in self.permissions.expire(now) {
            log::info!(target: pending.chat.channel.as_str(), "permission request {} timed out; refused", pending.id);
            actions.push(audit::timed_out(&pending));
            let request = AgentRequest::AnswerPermission { request: pending.request, outcome: pending.refusal() };
            actions.push(Action::Agent { agent: pending.agent.clone(), request });
            actions.push(settled(&pending, "timed out, refused"));
            actions.push(say(
                &pending.chat,
                format!("Permission request {} timed out, so the agent was told no.", pending.id),
            ));
        }
        let (mut wedged, mut timeouts) = (Vec::new(), Vec::new());
        for (key, session) in self.sessions.iter_mut() {
            let Some(turn) = session.turn.as_mut() else { continue };
            match &turn.cancel {
                Some(c) if c.deadline <= now => {
                    wedged.push(key.clone());
                    continue;
                }
                Some(c) if c.cause != CancelCause::Steer => continue,
                None if turn.timeout_at <= now => {
                    let limit = self.channels.get(&turn.chat.channel).map_or(Duration::ZERO, |c| c.turn_timeout);
                    log::warn!(target: turn.chat.channel.as_str(), "{key}: turn ran past turnTimeoutMs ({} ms); cancelling", limit.as_millis());
                    actions.push(say(&turn.chat, timeout_text(limit)));
                    timeouts.push(key.clone());
                    continue;
                }
                _ => {}
            }
            if let Some(stream) = turn.stream.as_mut() {
                for block in stream.poll(now) {
                    turn.streamed = true;
                    actions.push(say(&turn.chat, labelled(&session.label, block)));
                }
            }
            if let Some((due, every)) = turn.typing.as_mut().filter(|(due, _)| *due <= now) {
                *due = now + *every;
                actions.push(Action::Send(Outbound::Typing { chat: turn.chat.clone() }));
            }
            if turn.draft_due_now(now) {
                actions.push(Action::Send(Outbound::Draft { chat: session.chat.clone(), text: turn.answer.clone() }));
            }
        }
        timeouts.sort();
        for key in timeouts {
            if let Some(session) = self.sessions.get_mut(&key) {
                session.cancel_turn(CancelCause::Timeout, now, actions);
            }
        }
        wedged.sort();
        for key in wedged {
            self.abandon_wedged(&key, actions);
        }
    }

    /// The agent asks to run a tool: decide by the channel's `permissions`, or ask the chat
    /// whose turn it is.
    #[allow(clippy::too_many_arguments)] // One event's fields, passed through.
    fn on_permission_request(
        &mut self,
        agent: String,
        session_id: String,
        request: u64,
        call: crate::event::ToolCall,
        options: Vec<crate::event::PermissionOption>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let refuse = |agent: String, actions: &mut Vec<Action>| {
            let request = AgentRequest::AnswerPermission { request, outcome: PermissionOutcome::Cancelled };
            actions.push(Action::Agent { agent, request });
        };
        let Some(key) = self.by_session_id.get(&(agent.clone(), session_id.clone())).cloned() else {
            return refuse(agent, actions); // Not a session of ours (any more).
        };
        let Some(session) = self.sessions.get(&key) else { return refuse(agent, actions) };
        let chat = session.turn.as_ref().map_or_else(|| session.chat.clone(), |t| t.chat.clone());
        let label = session.label.clone();
        let Some(channel) = self.channels.get(&chat.channel) else { return refuse(agent, actions) };
        let target = channel.name.as_str();
        let pick = |kinds: &[PermissionKind]| {
            kinds.iter().find_map(|k| options.iter().find(|o| o.kind == *k)).map(|o| o.id.clone())
        };
        match channel.permissions {
            PermissionPolicy::Allow => {
                let outcome = pick(&[PermissionKind::AllowOnce])
                    .map_or(PermissionOutcome::Cancelled, PermissionOutcome::Selected);
                log::info!(target: target, "{key}: tool {:?} allowed by policy (permissions: allow): {outcome:?}", call.title);
                actions.push(audit::by_policy(&chat, &key, &call, &options, &outcome));
                actions.push(Action::Agent { agent, request: AgentRequest::AnswerPermission { request, outcome } });
            }
            PermissionPolicy::Deny => {
                let outcome = pick(&[PermissionKind::RejectOnce, PermissionKind::RejectAlways])
                    .map_or(PermissionOutcome::Cancelled, PermissionOutcome::Selected);
                log::info!(target: target, "{key}: tool {:?} refused by policy (permissions: deny)", call.title);
                actions.push(audit::by_policy(&chat, &key, &call, &options, &outcome));
                actions.push(Action::Agent { agent, request: AgentRequest::AnswerPermission { request, outcome } });
            }
            PermissionPolicy::Relay => {
                // The person whose message started the turn decides (in a shared conversation
                // with `allowedUsers`, those users), and a turn asks a bounded number of times.
                let senders = session.turn.as_ref().map(|t| t.senders.clone()).unwrap_or_default();
                let answerers = Answerers::for_turn(session.shared, &channel.allowed_users, &senders);
                let asks = self.sessions.get_mut(&key).and_then(|s| s.turn.as_mut()).map_or(0, |turn| {
                    turn.permission_asks += 1;
                    turn.permission_asks
                });
                if asks > MAX_ASKS_PER_TURN {
                    log::warn!(target: target, "{key}: tool {:?} refused: the turn already asked {MAX_ASKS_PER_TURN} times", call.title);
                    if asks == MAX_ASKS_PER_TURN + 1 {
                        let text = format!(
                            "The agent asked for permission more than {MAX_ASKS_PER_TURN} times in this turn; \
                             its further requests in this turn are refused."
                        );
                        actions.push(say(&chat, text));
                    }
                    return refuse(agent, actions);
                }
                let asker = Asker {
                    agent: agent.clone(),
                    session: key.clone(),
                    session_id,
                    chat: chat.clone(),
                    answerers,
                    timeout: channel.permission_timeout,
                };
                let Some(pending) = self.permissions.ask(asker, request, call, options, now) else {
                    log::warn!(target: target, "{key}: {MAX_PENDING} permission requests pending; refused one");
                    return refuse(agent, actions);
                };
                log::info!(target: target, "{key}: asking the chat about tool {:?} (request {})", pending.call.title, pending.id);
                actions.push(audit::asked(&pending));
                actions.push(Action::Send(Outbound::Ask {
                    chat,
                    key: pending.message_key(),
                    // A task's or loop's request says whose it is (its id is in the text).
                    text: labelled(&label, pending.ask_text()),
                    buttons: pending.buttons(),
                }));
            }
        }
    }

    /// Forget a session (cancelling its turn): the next message starts a fresh one. Returns
    /// the session that was cleared.
    fn clear_session(&mut self, key: &str, actions: &mut Vec<Action>) -> Option<Session> {
        self.records_version += 1;
        self.dormant.remove(key);
        let session = self.sessions.remove(key)?;
        if let Some(id) = session.id() {
            self.by_session_id.remove(&(session.agent.clone(), id.to_string()));
            if session.turn.is_some() {
                let request = AgentRequest::Cancel { session_id: id.to_string() };
                actions.push(Action::Agent { agent: session.agent.clone(), request });
            }
        }
        log::info!(target: session.chat.channel.as_str(), "{key}: session {:?} cleared; {} waiting message(s) dropped", session.id(), session.waiting.len());
        Some(session)
    }

    /// The live sessions, for the admin page: key, channel, the agent's id (none while it
    /// opens), and whether a turn runs.
    pub fn sessions_overview(&self) -> Vec<serde_json::Value> {
        let mut keys: Vec<&SessionKey> = self.sessions.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|key| {
                let s = self.sessions.get(key)?;
                let state = match (s.life(), &s.turn) {
                    (Life::Open { .. }, Some(_)) => "working",
                    (Life::Open { .. }, None) => "idle",
                    (life, _) => life.word(),
                };
                Some(serde_json::json!({
                    "key": key, "channel": s.chat.channel, "sessionId": s.id(), "state": state, "waiting": s.waiting.len(),
                }))
            })
            .collect()
    }

    /// `showToolCalls: "brief"`: one status line per tool call, edited as it progresses.
    fn on_tool_call(&mut self, agent: &str, session_id: &str, call: crate::event::ToolCall, actions: &mut Vec<Action>) {
        let Some(key) = self.by_session_id.get(&(agent.to_string(), session_id.to_string())) else { return };
        let Some(session) = self.sessions.get_mut(key) else { return };
        let Some(turn) = session.turn.as_mut().filter(|t| t.cancel.is_none()) else { return };
        let brief = self.channels.get(&turn.chat.channel).is_some_and(|c| c.show_tool_calls == ToolCallDisplay::Brief);
        if !brief || call.id.is_empty() {
            return;
        }
        let line_key = format!("tool:{session_id}:{}", call.id);
        let known = turn.tools.iter().position(|(id, _)| *id == call.id);
        let title = match known {
            Some(i) => turn.tools[i].1.clone(),
            None => {
                let title = if call.title.is_empty() { call.kind.clone() } else { call.title.clone() };
                turn.tools.push((call.id.clone(), title.clone()));
                let text = format!("⚙️ Running: {title} …");
                actions.push(Action::Send(Outbound::Ask {
                    chat: turn.chat.clone(),
                    key: line_key.clone(),
                    text,
                    buttons: Vec::new(),
                }));
                title
            }
        };
        let outcome = match call.status.as_str() {
            "completed" => "done",
            "failed" => "failed",
            _ => return,
        };
        actions.push(Action::Send(Outbound::Edit {
            chat: turn.chat.clone(),
            key: line_key,
            text: format!("⚙️ {title} — {outcome}"),
        }));
    }

    /// The agent's plan, shown as one progress message edited in place (with
    /// `showToolCalls: brief`, like tool calls).
    fn on_plan(&mut self, agent: &str, session_id: &str, entries: &[(String, String)], actions: &mut Vec<Action>) {
        let Some(key) = self.by_session_id.get(&(agent.to_string(), session_id.to_string())) else { return };
        let Some(session) = self.sessions.get_mut(key) else { return };
        let Some(turn) = session.turn.as_mut().filter(|t| t.cancel.is_none()) else { return };
        let brief = self.channels.get(&turn.chat.channel).is_some_and(|c| c.show_tool_calls == ToolCallDisplay::Brief);
        if !brief || entries.is_empty() {
            return;
        }
        let mut text = "📋 Plan:".to_string();
        for (entry, status) in entries.iter().take(20) {
            let mark = match status.as_str() {
                "completed" => "✅",
                "in_progress" => "▶️",
                _ => "▫️",
            };
            let entry: String = entry.chars().take(200).collect();
            text.push_str(&format!("\n{mark} {entry}"));
        }
        let chat = turn.chat.clone();
        let key = format!("plan:{session_id}");
        if turn.plan_shown {
            actions.push(Action::Send(Outbound::Edit { chat, key, text }));
        } else {
            turn.plan_shown = true;
            actions.push(Action::Send(Outbound::Ask { chat, key, text, buttons: Vec::new() }));
        }
    }

    /// Someone pressed a button: the gates apply as to a message, then it answers.
    fn on_button(&mut self, press: ButtonPress, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&press.channel) else { return };
        let as_message = InboundMessage {
            channel: press.channel.clone(),
            sender_id: press.sender_id.clone(),
            sender_name: press.sender_name.clone(),
            chat_id: press.chat_id.clone(),
            thread_id: press.thread_id.clone(),
            is_group: press.is_group,
            // Pressing our own message's button addresses us.
            is_mentioned: true,
            is_reply_to_bot: true,
            ..Default::default()
        };
        let ack = |text: &str| {
            Action::Send(Outbound::ButtonAck {
                channel: press.channel.clone(),
                callback_id: press.callback_id.clone(),
                text: text.to_string(),
            })
        };
        let approvals = self.access.approvals(&channel.name, &press.sender_id, &press.chat_id);
        let verdict = gate::check(channel, &as_message, approvals);
        if verdict != gate::Verdict::Pass {
            log::info!(target: channel.name.as_str(), "ignored a button press from {}: not allowed by the gates", press.sender_id);
            actions.extend(audit::refused(&as_message, &verdict, &[]));
            actions.push(ack("Not allowed."));
            return;
        }
        let Some(answer) = permissions::parse_button_answer(&press.data) else {
            actions.push(ack(""));
            return;
        };
        let chat = routing::reply_to(&as_message);
        let before = actions.len();
        let text = self.answer_permission(&chat, &press.sender_id, &answer, actions);
        actions.insert(before, ack(&text));
    }

    /// Apply a person's answer; returns the short text that confirms or refuses it.
    fn answer_permission(
        &mut self,
        chat: &ChatRef,
        sender: &str,
        answer: &permissions::Answer,
        actions: &mut Vec<Action>,
    ) -> String {
        match self.permissions.answer(chat, sender, answer) {
            Resolution::Settled { pending, outcome, reply } => {
                log::info!(target: chat.channel.as_str(), "permission request {} answered by {sender}: {outcome:?}", pending.id);
                actions.push(audit::answered(&pending, sender, &outcome));
                let request = AgentRequest::AnswerPermission { request: pending.request, outcome };
                actions.push(Action::Agent { agent: pending.agent.clone(), request });
                let outcome_text = reply.trim_end_matches('.').trim_start_matches("Permission ").to_string();
                actions.push(settled(&pending, &outcome_text));
                actions.push(say(chat, reply.clone()));
                reply
            }
            Resolution::Refused(why) => {
                actions.push(say(chat, why.clone()));
                why
            }
        }
    }

    /// A cancelled turn did not end within [`CANCEL_WAIT`]. Another prompt on that session
    /// would be rejected, so give the session up: waiting messages go to a fresh one.
    fn abandon_wedged(&mut self, key: &str, actions: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(key) else { return };
        let chats = session.chats();
        let (old, Some(turn)) = session.abandon() else { return };
        let old = old.unwrap_or_default();
        self.records_version += 1;
        self.by_session_id.remove(&(session.agent.clone(), old.clone()));
        let channel = self.channels.get(&turn.chat.channel);
        log::warn!(target: turn.chat.channel.as_str(), "{key}: session {old} did not end its cancelled turn within {} s; abandoning it", CANCEL_WAIT.as_secs());
        let text = if session.waiting.is_empty() { texts::STUCK_NEXT } else { texts::STUCK_FRESH };
        actions.extend(chats.iter().map(|chat| say(chat, text.to_string())));
        if session.waiting.is_empty() {
            self.sessions.remove(key);
            return;
        }
        session.instructed = false;
        session.steered = false;
        session.opening();
        if let Some(channel) = channel {
            session.cwd = channel.cwd.clone();
        }
        let model = channel.and_then(|c| c.model.clone());
        let request = AgentRequest::NewSession { key: key.to_string(), cwd: session.cwd.clone(), model };
        actions.push(Action::Agent { agent: session.agent.clone(), request });
    }
}

/// When idle sessions leave memory ([`Core::evict_after`]), asked for every session on every
/// turn of the daemon's loop: most sessions share a channel and an agent (one of each is the
/// usual setup), so the last answer is reused instead of two map lookups per session.
struct EvictionPolicy<'a> {
    core: &'a Core,
    last: Option<(&'a str, &'a str, Option<Duration>)>,
}

impl<'a> EvictionPolicy<'a> {
    fn new(core: &'a Core) -> Self {
        EvictionPolicy { core, last: None }
    }

    /// When `session` leaves memory, if it is idle and may.
    fn due(&mut self, session: &'a Session) -> Option<Instant> {
        if !session.is_idle() {
            return None;
        }
        let (channel, agent) = (session.chat.channel.as_str(), session.agent.as_str());
        let after = match self.last {
            Some((c, a, after)) if c == channel && a == agent => after,
            _ => {
                let after = self.core.evict_after(channel, agent);
                self.last = Some((channel, agent, after));
                after
            }
        };
        after.map(|after| session.last_active + after)
    }
}

/// A saved session record whose id another conversation has open now is stale: an agent that
/// numbers its sessions anew after a restart gave the id out again. Loading it would hand this
/// conversation the other's session, and while the load runs the connection takes that
/// session's live answer for replayed history and drops it; a new session is opened instead.
fn unless_taken(
    record: Option<SessionRecord>,
    live: &HashMap<(String, String), SessionKey>,
    key: &str,
) -> Option<SessionRecord> {
    let record = record?;
    match live.get(&(record.agent.clone(), record.session_id.clone())) {
        Some(other) if other != key => {
            log::warn!(
                target: record.chat.channel.as_str(),
                "{key}: its saved session {} is another conversation's now (the agent gives ids out again after a restart); opening a new one",
                record.session_id
            );
            None
        }
        _ => Some(record),
    }
}

/// A session for `key`: the one an earlier run kept (`earlier`) is loaded when the agent is up
/// and can load, else a new one is opened; with the agent down it waits for the agent.
#[allow(clippy::too_many_arguments)] // The parts of a new session, each from a different place.
fn new_session(
    key: &str,
    channel: &ChannelConfig,
    cwd: PathBuf,
    reply: &ChatRef,
    earlier: Option<SessionRecord>,
    (agent_up, can_load): (bool, bool),
    now: Instant,
    actions: &mut Vec<Action>,
) -> Session {
    let key = key.to_string();
    let mut session = Session::new(channel.agent.clone(), reply.clone(), cwd.clone(), now);
    let model = channel.model.clone();
    match earlier {
        // The conversation goes on where the last run left it.
        Some(record) if agent_up && can_load => {
            session.instructed = record.instructed;
            session.restoring(record.session_id.clone());
            let request =
                AgentRequest::LoadSession { key: key.clone(), session_id: record.session_id, cwd: record.cwd, model };
            actions.push(Action::Agent { agent: channel.agent.clone(), request });
        }
        _ if agent_up => {
            session.opening();
            let request = AgentRequest::NewSession { key: key.clone(), cwd, model };
            actions.push(Action::Agent { agent: channel.agent.clone(), request });
        }
        // The agent is down or still starting: the session waits, and is loaded (if
        // the agent can) or opened once the agent is ready.
        Some(record) => {
            session.instructed = record.instructed;
            session.wait_for_agent(Some(record.session_id));
        }
        None => {}
    }
    session
}

/// The notice for a turn that ran out of time.
fn timeout_text(limit: Duration) -> String {
    let secs = limit.as_secs();
    let span = match secs {
        s if s >= 120 => format!("{} minutes", s / 60),
        s if s >= 2 => format!("{s} seconds"),
        _ => format!("{} ms", limit.as_millis()),
    };
    format!("The agent did not finish within {span}, so the request was cancelled.")
}

/// What the user sees at the end of a turn: the answer, or a short reason there is none.
fn final_answer(answer: String, outcome: &TurnOutcome) -> String {
    let answer = answer.trim().to_string();
    match outcome {
        TurnOutcome::Failed(error) => format!("Sorry, the agent failed: {error}"),
        TurnOutcome::Refusal if answer.is_empty() => "The agent declined to answer.".to_string(),
        TurnOutcome::MaxTokens => format!("{answer}\n\n(The answer was cut off: the agent reached its output limit.)"),
        TurnOutcome::Cancelled if answer.is_empty() => "The request was cancelled.".to_string(),
        _ if answer.is_empty() => "(The agent finished without a text answer.)".to_string(),
        _ => answer,
    }
}

/// Update the message that asked for a permission to show how it ended.
fn settled(pending: &permissions::Pending, outcome: &str) -> Action {
    Action::Send(Outbound::Edit {
        chat: pending.chat.clone(),
        key: pending.message_key(),
        text: pending.settled_text(outcome),
    })
}

/// `text` with a session's label (a loop's `[loop 3]`) before it.
fn labelled(label: &Option<String>, text: String) -> String {
    match label {
        Some(label) => format!("{label} {text}"),
        None => text,
    }
}

fn say(chat: &ChatRef, text: String) -> Action {
    answer(chat, text, Vec::new())
}

/// A text that completes the inbound messages `answers` (see [`Outbound::Text`]).
fn answer(chat: &ChatRef, text: String, answers: Vec<MessageRef>) -> Action {
    Action::Send(Outbound::Text { chat: chat.clone(), text, answers })
}

/// The last text to `chat` among `actions` is the one that completes `answered` (a streamed
/// answer's earlier blocks do not). With no such text (everything was streamed already), the
/// service layer finds the messages no longer held and settles them.
fn attach_answers(actions: &mut [Action], chat: &ChatRef, answered: Vec<MessageRef>) {
    let last = actions.iter_mut().rev().find_map(|a| match a {
        Action::Send(Outbound::Text { chat: to, answers, .. }) if to == chat => Some(answers),
        _ => None,
    });
    if let Some(answers) = last {
        *answers = answered;
    }
}

// What the service layer (daemon.rs: journal, status, reload) asks of the core.
impl Core {
    /// Whether `message` of `channel` still waits for an answer here: in a turn, waiting for
    /// one, or to be retried after an agent crash.
    #[cfg(test)]
    fn holds(&self, channel: &str, message: &MessageRef) -> bool {
        self.held_messages().binary_search(&(channel, message)).is_ok()
    }

    /// How many messages the sessions hold for journaled channels (only those are
    /// unsettled), counted from what [`Core::held_messages`] gathers, without gathering.
    fn held_journaled_count(&self) -> usize {
        let journaled = |chat: &ChatRef| self.channels.get(&chat.channel).is_some_and(|c| c.capabilities().journaled);
        let held = self.sessions.values().filter(|s| !s.holds_nothing()).flat_map(Session::held);
        held.filter(|(chat, _)| journaled(chat)).map(|(_, ids)| ids.len()).sum()
    }

    /// Every (channel, message) that still waits for an answer here (see `holds`), sorted
    /// for `binary_search`, gathered in one pass: asking each session about each unsettled
    /// message made every event cost sessions × messages (and a hash set cost more than
    /// sorting these few references).
    fn held_messages(&self) -> Vec<(&str, &MessageRef)> {
        let mut held = Vec::new();
        for (chat, ids) in self.sessions.values().flat_map(Session::held) {
            held.extend(ids.iter().map(|id| (chat.channel.as_str(), id)));
        }
        held.sort_unstable();
        held
    }

    /// How old `message` is when it is older than its channel's `maxBacklogAge` (it was sent
    /// while tether was down, and a turn for it now would surprise): `None` when fresh or when
    /// the platform gave no time. A clock that went backwards makes nothing stale.
    fn backlog_age(&self, channel: &ChannelConfig, message: &InboundMessage) -> Option<u64> {
        let age_ms = self.wall_ms.saturating_sub(message.sent_at_ms?);
        (age_ms > u64::try_from(channel.max_backlog_age.as_millis()).unwrap_or(u64::MAX)).then_some(age_ms)
    }

    /// A message too old for a turn: one notice instead, only to people the gates let
    /// through (checked without side effects: no pairing code goes out for it).
    fn backlog_notice(&mut self, message: InboundMessage, age_ms: u64, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else { return };
        let approvals = self.access.approvals(&channel.name, &message.sender_id, &message.chat_id);
        if gate::check(channel, &message, approvals) != gate::Verdict::Pass {
            return; // Settled with the rest of what this event released.
        }
        let max_age = channel.max_backlog_age;
        log::info!(target: channel.name.as_str(), "message {:?} in chat {} is {} old (maxBacklogAge {}): sending a notice instead of a turn",
            message.message_id, message.chat_id, crate::health::format_duration(age_ms / 1000), crate::health::format_duration(max_age.as_secs()));
        let text = crate::journal::stale_notice(&message.text, age_ms, max_age);
        actions.push(answer(&routing::reply_to(&message), text, message.reference().into_iter().collect()));
    }

    /// Live pairing requests of `channel`, as its pairing file held them when last read or
    /// written (the service watches the file: `access_files::Watcher`).
    pub fn live_pairing_requests(&self, channel: &str, now_ms: u64) -> usize {
        self.access.live_requests(channel, now_ms)
    }

    /// Conversations the core keeps for `channel`.
    pub fn session_count(&self, channel: &str) -> usize {
        self.sessions.values().filter(|s| s.chat.channel == channel).count()
    }

    /// Take a reloaded config: sessions of channels that are gone, or now use another agent,
    /// are forgotten; every other session keeps going.
    pub fn set_channels(&mut self, config: &Config) {
        let keep = |s: &Session| config.channels.get(&s.chat.channel).is_some_and(|c| c.agent == s.agent);
        self.sessions.retain(|_, s| keep(s));
        self.records_version += 1;
        let sessions = &self.sessions;
        self.by_session_id.retain(|_, key| sessions.contains_key(key));
        self.channels = config.channels.clone();
        self.audit = config.audit.is_some();
    }
}

#[cfg(test)]
mod tests;
