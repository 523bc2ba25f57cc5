//! The core: every decision about conversations, made as a pure function of
//! (state, event, now) → actions. It owns all conversation state and does no I/O; the daemon
//! thread feeds it events and carries out the actions it returns.
//!
//! A message's way through: the gates (`gate.rs`), then local slash commands
//! (`commands.rs`), then its session (`routing.rs` for the key, `session.rs` for dispatch), with
//! its text assembled by `prompt.rs`.

pub mod commands;
pub mod gate;
pub mod pairing;
pub mod permissions;
pub mod prompt;
pub mod routing;
pub mod session;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use crate::config::{ChannelConfig, ChannelKind, Config, PermissionPolicy};
use crate::event::{
    AgentCommand, AgentEvent, AgentRequest, ChatRef, Inbound, InboundMessage, Outbound, PermissionKind,
    PermissionOutcome, SessionKey, TurnOutcome,
};
use commands::{Command, SessionView};
use session::{CancelCause, Cancelling, Session, Waiting, Waits};

pub use session::{CANCEL_WAIT, MAX_WAITING, TYPING_REFRESH};

/// Everything the core reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Inbound(Inbound),
    Agent {
        agent: String,
        event: AgentEvent,
    },
    /// The clock reached [`Core::next_deadline`].
    Tick,
    /// A channel's pairing files as they are now (read at start, and whenever another
    /// process such as `tether pairing approve` changed them).
    AccessFiles {
        channel: String,
        pending: Vec<pairing::PairingRequest>,
        approved: Vec<String>,
    },
}

/// Everything the core asks the edges to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Outbound),
    Agent { agent: String, request: AgentRequest },
    // Add the request to `<channel>-pairing.json`, merged under the file's lock.
    SavePairingRequest { channel: String, request: pairing::PairingRequest },
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
}

/// The conversation state of the whole service.
#[derive(Debug)]
pub struct Core {
    channels: BTreeMap<String, ChannelConfig>,
    sessions: HashMap<SessionKey, Session>,
    /// (agent, session id) → key, to route the agent's events.
    by_session_id: HashMap<(String, String), SessionKey>,
    /// The latest `available_commands_update` of each agent, for `/help`.
    agent_commands: HashMap<String, Vec<AgentCommand>>,
    /// Who may talk: pairing books, the wall clock, code randomness.
    access: pairing::Access,
}

impl Core {
    pub fn new(config: &Config) -> Core {
        Core {
            channels: config.channels.clone(),
            sessions: HashMap::new(),
            by_session_id: HashMap::new(),
            agent_commands: HashMap::new(),
            access: pairing::Access::default(),
        }
    }

    /// The wall-clock time in epoch ms, for pairing times (which are persisted). The daemon
    /// sets it before each event; tests set what they need.
    pub fn set_wall_clock(&mut self, epoch_ms: u64) {
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

    /// The next moment [`Event::Tick`] is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().filter_map(Session::deadline).min()
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Inbound(Inbound::Message(message)) => self.on_message(message, now, &mut actions),
            Event::Inbound(Inbound::Health { .. }) => {}
            Event::Agent { agent, event } => self.on_agent(agent, event, now, &mut actions),
            Event::Tick => self.on_tick(now, &mut actions),
            Event::AccessFiles { channel, pending, approved } => {
                self.access.reload(&channel, pending, approved, &mut actions)
            }
        }
        actions
    }

    /// Every session the agent has opened, by key: what `sessions.json` keeps.
    pub fn sessions_snapshot(&self) -> BTreeMap<SessionKey, SessionRecord> {
        let records = self.sessions.iter().filter_map(|(key, s)| {
            let record = SessionRecord {
                session_id: s.id.clone()?,
                agent: s.agent.clone(),
                chat: s.chat.clone(),
                cwd: s.cwd.clone(),
                instructed: s.instructed,
            };
            Some((key.clone(), record))
        });
        records.collect()
    }

    /// Take back sessions saved by [`Core::sessions_snapshot`] (after the agent loaded them),
    /// idle. Records of channels no longer configured, or whose channel now uses another
    /// agent, are skipped and logged; so are keys already in use. Returns how many were taken.
    pub fn restore(&mut self, records: impl IntoIterator<Item = (SessionKey, SessionRecord)>) -> usize {
        let mut restored = 0;
        for (key, record) in records {
            let agent_now = self.channels.get(&record.chat.channel).map(|c| c.agent.as_str());
            if agent_now != Some(record.agent.as_str()) || self.sessions.contains_key(&key) {
                log::info!(target: "core", "not restoring session {} ({key}): channel, agent or key changed", record.session_id);
                continue;
            }
            let mut session = Session::new(record.agent.clone(), record.chat, record.cwd);
            session.id = Some(record.session_id.clone());
            session.instructed = record.instructed;
            self.by_session_id.insert((record.agent, record.session_id), key.clone());
            self.sessions.insert(key, session);
            restored += 1;
        }
        restored
    }

    /// The platform ids of the messages a session still owes an answer to: the turn in
    /// flight first, then the waiting ones, oldest first.
    pub fn unanswered_message_ids(&self, key: &str) -> Vec<String> {
        let Some(s) = self.sessions.get(key) else { return Vec::new() };
        let in_flight = s.turn.iter().flat_map(|t| t.message_ids.iter());
        in_flight.chain(s.waiting.iter().flat_map(|w| w.message_ids.iter())).cloned().collect()
    }

    fn on_message(&mut self, message: InboundMessage, now: Instant, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else {
            log::warn!(target: "core", "message for unknown channel {}", message.channel);
            return;
        };
        // The gates run before anything else looks at the message (commands included).
        if !self.access.admit(channel, &message, actions) {
            return;
        }
        if message.is_group && commands::addressed_elsewhere(&message.text) {
            log::debug!(target: channel.name.as_str(), "ignored a command for another bot in {}", message.chat_id);
            return;
        }
        let key = routing::session_key(channel.session_scope, &message);
        let reply = routing::reply_to(&message);
        if let Some((command, args)) = commands::parse(&message.text) {
            log::info!(target: channel.name.as_str(), "command {command:?} from {} in {} ({key})", message.sender_id, message.chat_id);
            let text = self.run_command(command, args, &key, &message, now, actions);
            actions.push(say(&reply, text));
            return;
        }
        let Some(channel) = self.channels.get(&message.channel) else { return };
        let body = prompt::message_body(&message);
        if body.is_empty() {
            log::info!(target: channel.name.as_str(), "ignored an empty message from {}", message.sender_id);
            return;
        }
        let mode = match message.is_group {
            true => channel.group(&message.chat_id).dispatch_mode,
            false => channel.dispatch_mode,
        };
        let session = self.sessions.entry(key.clone()).or_insert_with(|| {
            actions.push(Action::Agent {
                agent: channel.agent.clone(),
                request: AgentRequest::NewSession {
                    key: key.clone(),
                    cwd: channel.cwd.clone(),
                    model: channel.model.clone(),
                },
            });
            Session::new(channel.agent.clone(), reply.clone(), channel.cwd.clone())
        });
        session.chat = reply.clone();
        let waiting = Waiting {
            chat: reply.clone(),
            message_ids: message.message_id.into_iter().collect(),
            body,
            how: Waits::Alone,
        };
        if session.accept(waiting, mode, now, actions).is_err() {
            log::warn!(target: channel.name.as_str(), "{key}: {MAX_WAITING} messages already wait; refused one");
            actions.push(say(&reply, texts::TOO_MANY.to_string()));
            return;
        }
        session.start_next_turn(channel.instructions.as_deref(), now, actions);
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
            starting: s.id.is_none(),
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
                access: channel.sender_policy,
                channel: &channel.name,
                channel_type: channel.kind.as_str(),
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
            Command::Clear => {
                let Some(session) = self.sessions.remove(key) else { return texts::NOTHING_TO_CLEAR.to_string() };
                if let Some(id) = &session.id {
                    self.by_session_id.remove(&(session.agent.clone(), id.clone()));
                    if session.turn.is_some() {
                        let request = AgentRequest::Cancel { session_id: id.clone() };
                        actions.push(Action::Agent { agent: session.agent.clone(), request });
                    }
                }
                log::info!(target: channel.name.as_str(), "{key}: session {:?} cleared; {} waiting message(s) dropped", session.id, session.waiting.len());
                texts::CLEARED.to_string()
            }
            Command::Cancel => {
                let Some(session) = self.sessions.get_mut(key) else { return texts::NOTHING_TO_CANCEL.to_string() };
                let dropped = session.waiting.len();
                session.waiting.clear();
                session.steered = false;
                let running = match (&mut session.turn, &session.id) {
                    (Some(turn), Some(id)) => {
                        match &mut turn.cancel {
                            None => {
                                turn.cancel =
                                    Some(Cancelling { cause: CancelCause::User, deadline: now + CANCEL_WAIT });
                                let request = AgentRequest::Cancel { session_id: id.clone() };
                                actions.push(Action::Agent { agent: session.agent.clone(), request });
                            }
                            Some(cancelling) => cancelling.cause = CancelCause::User,
                        }
                        true
                    }
                    _ => false,
                };
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
            AgentEvent::Ready { .. } => {}
            AgentEvent::SessionCreated { key, session_id } => {
                let Some(session) = self.sessions.get_mut(&key).filter(|s| s.id.is_none() && s.agent == agent) else {
                    // Cleared while session/new was in flight: the agent keeps an unused session.
                    log::info!(target: "core", "agent {agent} opened session {session_id} for {key}, no longer wanted");
                    return;
                };
                log::info!(target: session.chat.channel.as_str(), "{key}: session {session_id} opened");
                self.by_session_id.insert((agent, session_id.clone()), key);
                session.id = Some(session_id);
                let instructions = self.channels.get(&session.chat.channel).and_then(|c| c.instructions.as_deref());
                session.start_next_turn(instructions, now, actions);
            }
            AgentEvent::SessionFailed { key, error } => {
                if !self.sessions.get(&key).is_some_and(|s| s.id.is_none() && s.agent == agent) {
                    return;
                }
                let Some(session) = self.sessions.remove(&key) else { return };
                log::error!(target: session.chat.channel.as_str(), "{key}: agent could not open a session: {error}");
                session.tell_all(&format!("The agent could not start a conversation: {error}"), actions);
            }
            AgentEvent::TextChunk { session_id, text } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id)) else { return };
                let Some(session) = self.sessions.get_mut(key) else { return };
                // A cancelled turn's text is dropped: a newer message or /cancel replaced it.
                let Some(turn) = session.turn.as_mut().filter(|t| t.cancel.is_none()) else { return };
                turn.answer.push_str(&text);
                // Channels that can show an answer as it grows get every draft.
                if self.channels.get(&session.chat.channel).is_some_and(|c| c.kind == ChannelKind::Webchat) {
                    actions
                        .push(Action::Send(Outbound::Draft { chat: session.chat.clone(), text: turn.answer.clone() }));
                }
            }
            AgentEvent::CommandsAvailable { session_id, commands } => {
                log::debug!(target: "core", "agent {agent} offers {} command(s) (session {session_id})", commands.len());
                self.agent_commands.insert(agent, commands);
            }
            AgentEvent::TurnEnded { session_id, outcome } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id.clone())).cloned() else { return };
                let Some(session) = self.sessions.get_mut(&key) else { return };
                let Some(turn) = session.turn.take() else { return };
                match turn.cancel {
                    None => actions.push(say(&turn.chat, final_answer(turn.answer, &outcome))),
                    Some(c) => {
                        log::info!(target: turn.chat.channel.as_str(), "{key}: cancelled turn of {session_id} ended ({outcome:?}, {:?})", c.cause)
                    }
                }
                let instructions = self.channels.get(&session.chat.channel).and_then(|c| c.instructions.as_deref());
                session.start_next_turn(instructions, now, actions);
            }
            AgentEvent::PermissionRequested { session_id, request, call, options } => {
                let Some(key) = self.by_session_id.get(&(agent.clone(), session_id)) else {
                    actions.push(Action::Agent {
                        agent,
                        request: AgentRequest::AnswerPermission { request, outcome: PermissionOutcome::Cancelled },
                    });
                    return;
                };
                let Some(session) = self.sessions.get(key) else { return };
                let policy = self.channels.get(&session.chat.channel).map_or(PermissionPolicy::Deny, |c| c.permissions);
                let pick = |kinds: &[PermissionKind]| {
                    kinds.iter().find_map(|k| options.iter().find(|o| o.kind == *k)).map(|o| o.id.clone())
                };
                let (outcome, verdict) = match policy {
                    PermissionPolicy::Allow => match pick(&[PermissionKind::AllowOnce]) {
                        Some(id) => (PermissionOutcome::Selected(id), "allowed (permissions: allow)"),
                        None => (PermissionOutcome::Cancelled, "refused: the agent offered no allow-once option"),
                    },
                    _ => match pick(&[PermissionKind::RejectOnce, PermissionKind::RejectAlways]) {
                        Some(id) => (PermissionOutcome::Selected(id), "refused"),
                        None => (PermissionOutcome::Cancelled, "refused"),
                    },
                };
                log::info!(target: session.chat.channel.as_str(), "tool permission for {:?} {}", call.title, verdict);
                actions.push(Action::Agent { agent, request: AgentRequest::AnswerPermission { request, outcome } });
            }
            AgentEvent::ToolCall { .. }
            | AgentEvent::Plan { .. }
            | AgentEvent::Thought { .. }
            | AgentEvent::ModeChanged { .. } => {}
            AgentEvent::Exited { reason } => {
                // The agent's sessions died with it: tell whoever was waiting, forget them.
                let keys: Vec<SessionKey> =
                    self.sessions.iter().filter(|(_, s)| s.agent == agent).map(|(k, _)| k.clone()).collect();
                for key in keys {
                    let Some(session) = self.sessions.remove(&key) else { continue };
                    session.tell_all(
                        &format!("The agent stopped ({reason}). Your message was not answered; please send it again."),
                        actions,
                    );
                }
                self.by_session_id.retain(|(a, _), _| *a != agent);
            }
        }
    }

    fn on_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut wedged = Vec::new();
        for (key, session) in self.sessions.iter_mut() {
            let Some(turn) = session.turn.as_mut() else { continue };
            match &turn.cancel {
                Some(c) if c.deadline <= now => {
                    wedged.push(key.clone());
                    continue;
                }
                Some(c) if c.cause == CancelCause::User => continue,
                _ => {}
            }
            if turn.typing_due <= now {
                turn.typing_due = now + TYPING_REFRESH;
                actions.push(Action::Send(Outbound::Typing { chat: turn.chat.clone() }));
            }
        }
        wedged.sort();
        for key in wedged {
            self.abandon_wedged(&key, actions);
        }
    }

    /// A cancelled turn did not end within [`CANCEL_WAIT`]. Another prompt on that session
    /// would be rejected, so give the session up: waiting messages go to a fresh one.
    fn abandon_wedged(&mut self, key: &str, actions: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(key) else { return };
        let chats = session.chats();
        let Some(turn) = session.turn.take() else { return };
        let old = session.id.take().unwrap_or_default();
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
        if let Some(channel) = channel {
            session.cwd = channel.cwd.clone();
        }
        let model = channel.and_then(|c| c.model.clone());
        let request = AgentRequest::NewSession { key: key.to_string(), cwd: session.cwd.clone(), model };
        actions.push(Action::Agent { agent: session.agent.clone(), request });
    }
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

fn say(chat: &ChatRef, text: String) -> Action {
    Action::Send(Outbound::Text { chat: chat.clone(), text })
}

#[cfg(test)]
mod tests;
