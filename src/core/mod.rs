//! The core: every decision about conversations, made as a pure function of
//! (state, event, now) → actions. It owns all conversation state and does no I/O; the daemon
//! thread feeds it events and carries out the actions it returns.

pub mod gate;
pub mod permissions;
pub mod routing;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{ChannelConfig, ChannelKind, Config, PermissionPolicy};
use crate::event::{
    AgentEvent, AgentRequest, ChatRef, Inbound, InboundMessage, Outbound, PermissionKind, PermissionOutcome,
    SessionKey, TurnOutcome,
};

/// Telegram drops "typing…" after 5 s; refresh a little before.
pub const TYPING_REFRESH: Duration = Duration::from_secs(4);

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
}

/// Everything the core asks the edges to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Outbound),
    Agent { agent: String, request: AgentRequest },
}

/// One conversation with the agent.
#[derive(Debug)]
struct Session {
    agent: String,
    /// Where answers go.
    chat: ChatRef,
    /// The agent's id; `None` while `session/new` is in flight.
    id: Option<String>,
    /// The turn in flight, if any (at most one per session: agents reject a second prompt).
    turn: Option<Turn>,
    /// Prompts waiting for the session to be free, oldest first.
    queue: VecDeque<String>,
    /// The channel's `instructions` were sent with this session's first prompt.
    instructed: bool,
}

#[derive(Debug)]
struct Turn {
    answer: String,
    typing_due: Instant,
}

/// The conversation state of the whole service.
#[derive(Debug)]
pub struct Core {
    channels: BTreeMap<String, ChannelConfig>,
    sessions: HashMap<SessionKey, Session>,
    /// (agent, session id) → key, to route the agent's events.
    by_session_id: HashMap<(String, String), SessionKey>,
}

impl Core {
    pub fn new(config: &Config) -> Core {
        Core { channels: config.channels.clone(), sessions: HashMap::new(), by_session_id: HashMap::new() }
    }

    /// The next moment [`Event::Tick`] is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().filter_map(|s| s.turn.as_ref().map(|t| t.typing_due)).min()
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Inbound(Inbound::Message(message)) => self.on_message(message, now, &mut actions),
            Event::Inbound(Inbound::Health { .. }) => {}
            Event::Agent { agent, event } => self.on_agent(agent, event, now, &mut actions),
            Event::Tick => self.on_tick(now, &mut actions),
        }
        actions
    }

    fn on_message(&mut self, message: InboundMessage, now: Instant, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else {
            log::warn!(target: "core", "message for unknown channel {}", message.channel);
            return;
        };
        if let gate::Verdict::Drop(reason) = gate::check(channel, &message) {
            log::info!(target: channel.name.as_str(), "dropped message from {} in {}: {reason}", message.sender_id, message.chat_id);
            return;
        }
        let key = routing::session_key(channel.session_scope, &message);
        let agent = channel.agent.clone();
        let session = self.sessions.entry(key.clone()).or_insert_with(|| {
            actions.push(Action::Agent {
                agent: agent.clone(),
                request: AgentRequest::NewSession {
                    key: key.clone(),
                    cwd: channel.cwd.clone(),
                    model: channel.model.clone(),
                },
            });
            Session {
                agent,
                chat: routing::reply_to(&message),
                id: None,
                turn: None,
                queue: VecDeque::new(),
                instructed: false,
            }
        });
        session.queue.push_back(message.text);
        start_next_turn(channel, session, now, actions);
    }

    fn on_agent(&mut self, agent: String, event: AgentEvent, now: Instant, actions: &mut Vec<Action>) {
        match event {
            AgentEvent::Ready { .. } => {}
            AgentEvent::SessionCreated { key, session_id } => {
                let Some(session) = self.sessions.get_mut(&key) else { return };
                self.by_session_id.insert((agent, session_id.clone()), key);
                session.id = Some(session_id);
                if let Some(channel) = self.channels.get(&session.chat.channel) {
                    start_next_turn(channel, session, now, actions);
                }
            }
            AgentEvent::SessionFailed { key, error } => {
                let Some(session) = self.sessions.remove(&key) else { return };
                log::error!(target: session.chat.channel.as_str(), "agent could not open a session: {error}");
                actions.push(say(&session.chat, format!("The agent could not start a conversation: {error}")));
            }
            AgentEvent::TextChunk { session_id, text } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id)) else { return };
                let Some(session) = self.sessions.get_mut(key) else { return };
                let Some(turn) = session.turn.as_mut() else { return };
                turn.answer.push_str(&text);
                // Channels that can show an answer as it grows get every draft.
                if self.channels.get(&session.chat.channel).is_some_and(|c| c.kind == ChannelKind::Webchat) {
                    actions
                        .push(Action::Send(Outbound::Draft { chat: session.chat.clone(), text: turn.answer.clone() }));
                }
            }
            AgentEvent::TurnEnded { session_id, outcome } => {
                let Some(key) = self.by_session_id.get(&(agent, session_id)).cloned() else { return };
                let Some(session) = self.sessions.get_mut(&key) else { return };
                let Some(turn) = session.turn.take() else { return };
                actions.push(say(&session.chat, final_answer(turn.answer, &outcome)));
                if let Some(channel) = self.channels.get(&session.chat.channel) {
                    start_next_turn(channel, session, now, actions);
                }
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
                    if session.turn.is_some() || !session.queue.is_empty() {
                        actions.push(say(
                            &session.chat,
                            format!(
                                "The agent stopped ({reason}). Your message was not answered; please send it again."
                            ),
                        ));
                    }
                }
                self.by_session_id.retain(|(a, _), _| *a != agent);
            }
        }
    }

    fn on_tick(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for session in self.sessions.values_mut() {
            if let Some(turn) = session.turn.as_mut().filter(|t| t.typing_due <= now) {
                turn.typing_due = now + TYPING_REFRESH;
                actions.push(Action::Send(Outbound::Typing { chat: session.chat.clone() }));
            }
        }
    }
}

/// Start the oldest queued prompt if the session exists on the agent side and is idle.
fn start_next_turn(channel: &ChannelConfig, session: &mut Session, now: Instant, actions: &mut Vec<Action>) {
    let (Some(session_id), None) = (&session.id, &session.turn) else { return };
    let Some(text) = session.queue.pop_front() else { return };
    let text = match (&channel.instructions, session.instructed) {
        (Some(instructions), false) if !instructions.is_empty() => format!("{instructions}\n\n{text}"),
        _ => text,
    };
    session.instructed = true;
    session.turn = Some(Turn { answer: String::new(), typing_due: now + TYPING_REFRESH });
    actions.push(Action::Send(Outbound::Typing { chat: session.chat.clone() }));
    actions.push(Action::Agent {
        agent: session.agent.clone(),
        request: AgentRequest::Prompt { session_id: session_id.clone(), text },
    });
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
