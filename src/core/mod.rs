//! The core: every decision about conversations, made as a pure function of
//! (state, event, now) → actions. It owns all conversation state and does no I/O; the daemon
//! thread feeds it events and carries out the actions it returns.

pub mod gate;
pub mod pairing;
pub mod routing;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{ChannelConfig, Config};
use crate::event::{AgentEvent, AgentRequest, ChatRef, Inbound, InboundMessage, Outbound, SessionKey, TurnOutcome};

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
    /// Who may talk: pairing books, the wall clock, code randomness.
    access: pairing::Access,
}

impl Core {
    pub fn new(config: &Config) -> Core {
        Core {
            channels: config.channels.clone(),
            sessions: HashMap::new(),
            by_session_id: HashMap::new(),
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
        self.sessions.values().filter_map(|s| s.turn.as_ref().map(|t| t.typing_due)).min()
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

    fn on_message(&mut self, message: InboundMessage, now: Instant, actions: &mut Vec<Action>) {
        let Some(channel) = self.channels.get(&message.channel) else {
            log::warn!(target: "core", "message for unknown channel {}", message.channel);
            return;
        };
        // The gates run before anything else looks at the message (commands included).
        if !self.access.admit(channel, &message, actions) {
            return;
        }
        let key = routing::session_key(channel.session_scope, &message);
        let agent = channel.agent.clone();
        let session = self.sessions.entry(key.clone()).or_insert_with(|| {
            actions.push(Action::Agent {
                agent: agent.clone(),
                request: AgentRequest::NewSession { key: key.clone(), cwd: channel.cwd.clone() },
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
                if let Some(turn) = self.session_mut(&agent, &session_id).and_then(|s| s.turn.as_mut()) {
                    turn.answer.push_str(&text);
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

    fn session_mut(&mut self, agent: &str, session_id: &str) -> Option<&mut Session> {
        let key = self.by_session_id.get(&(agent.to_string(), session_id.to_string()))?;
        self.sessions.get_mut(key)
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
