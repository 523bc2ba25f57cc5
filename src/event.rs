//! The closed vocabulary that travels between threads: what adapters report
//! ([`Inbound`]), what the core asks adapters to do ([`Outbound`]), what the ACP side reports
//! ([`AgentEvent`]) and what the core asks of it ([`AgentRequest`]). No wire types here:
//! adapters and the ACP client translate their JSON into these.

use std::path::PathBuf;

/// A message from a person, as an adapter reports it (platform JSON already decoded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundMessage {
    /// The channel's name in the config.
    pub channel: String,
    /// Stable platform user id.
    pub sender_id: String,
    /// Display name, for logs and pairing lists.
    pub sender_name: String,
    /// Where the message was posted; differs between a DM and a group.
    pub chat_id: String,
    /// Thread or forum topic, when the platform has one and the message is in it.
    pub thread_id: Option<String>,
    /// The platform's id of this message (dedup, replies).
    pub message_id: Option<String>,
    pub is_group: bool,
    /// The bot was mentioned (already decided by the adapter, which knows the wire format).
    pub is_mentioned: bool,
    /// The message replies to one of the bot's messages.
    pub is_reply_to_bot: bool,
    /// Text with the bot's mention stripped.
    pub text: String,
    /// Text of the message this one replies to, if any.
    pub quoted_text: Option<String>,
    /// Files the adapter saved for the agent to read.
    pub attachments: Vec<Attachment>,
    /// When the person sent it, by the platform's clock (unix ms), when the platform says: a
    /// message older than the channel's `maxBacklogAge` gets a notice instead of a turn.
    pub sent_at_ms: Option<u64>,
    /// Set only by the webhook adapter, once a request's signature (or shared secret) checked
    /// out: the name of the webhook source. Such a message is an event, not a person: the
    /// target channel's sender gates let it through because the source authenticated, and it
    /// is never read as a command or an answer to a permission request.
    pub webhook: Option<String>,
}

impl InboundMessage {
    /// This message's identity for the journal and for the `answers` of [`Outbound::Text`]; `None`
    /// when the platform gave it no id.
    pub fn reference(&self) -> Option<MessageRef> {
        let message_id = self.message_id.clone()?;
        Some(MessageRef { chat_id: self.chat_id.clone(), message_id })
    }
}

/// One inbound message of a channel: the chat it was posted in and the platform's id for it
/// (Telegram numbers messages per chat, so the id alone is not unique).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageRef {
    pub chat_id: String,
    pub message_id: String,
}

/// A button press, with who pressed it where (the gates apply to it as to a message).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ButtonPress {
    pub channel: String,
    pub sender_id: String,
    pub sender_name: String,
    pub chat_id: String,
    pub thread_id: Option<String>,
    pub is_group: bool,
    /// The data of the button pressed.
    pub data: String,
    /// The platform's id of the press, for [`Outbound::ButtonAck`].
    pub callback_id: String,
}

/// A file that came with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub kind: AttachmentKind,
    pub path: PathBuf,
    pub file_name: String,
    pub mime_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentKind {
    Image,
    File,
    Audio,
    Video,
}

/// Everything an adapter thread reports to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Message(InboundMessage),
    /// Someone pressed a button of an [`Outbound::Ask`] message.
    Button(ButtonPress),
    /// The operator cleared a conversation from the admin page.
    OperatorClear {
        key: SessionKey,
    },
}

/// Where a reply goes: a chat, and a thread inside it when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ChatRef {
    pub channel: String,
    pub chat_id: String,
    pub thread_id: Option<String>,
}

/// By chat, thread, then channel: the outbox's maps hold the chats of one channel, so the
/// channel (the same in every key there) is compared last, only between equal chats. That
/// halves the cost of the lookups it makes on every turn of a worker.
impl Ord for ChatRef {
    fn cmp(&self, other: &ChatRef) -> std::cmp::Ordering {
        (&self.chat_id, &self.thread_id, &self.channel).cmp(&(&other.chat_id, &other.thread_id, &other.channel))
    }
}

impl PartialOrd for ChatRef {
    fn partial_cmp(&self, other: &ChatRef) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What the core asks an adapter to do. Adapters own retries, pacing and platform limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Send a complete answer (Markdown as the agent wrote it); the adapter formats and splits.
    /// `answers` are the inbound messages this text completes: once every piece is delivered,
    /// the adapter marks them answered in its journal (empty for texts that answer nothing).
    Text { chat: ChatRef, text: String, answers: Vec<MessageRef> },
    /// The answer so far, while the turn runs, for adapters that show it live (web chat,
    /// or a platform message edited in place). Each draft replaces the previous one; the
    /// turn's final [`Outbound::Text`] replaces the draft.
    Draft { chat: ChatRef, text: String },
    /// Show "typing…" (platforms expire it after a few seconds; the core repeats it).
    Typing { chat: ChatRef },
    /// A question with choices: buttons where the platform has them, as (label, data) pairs;
    /// the text also says how to answer by typing. `key` names the message for a later
    /// [`Outbound::Edit`].
    Ask { chat: ChatRef, key: String, text: String, buttons: Vec<(String, String)> },
    /// Replace the text of the message sent for `key` and remove its buttons; a platform that
    /// cannot edit sends the text as a new message.
    Edit { chat: ChatRef, key: String, text: String },
    /// Acknowledge a button press (Telegram shows a spinner until it is answered).
    ButtonAck { channel: String, callback_id: String, text: String },
}

impl Outbound {
    pub fn channel(&self) -> &str {
        match self {
            Outbound::Text { chat, .. }
            | Outbound::Draft { chat, .. }
            | Outbound::Typing { chat }
            | Outbound::Ask { chat, .. }
            | Outbound::Edit { chat, .. } => &chat.channel,
            Outbound::ButtonAck { channel, .. } => channel,
        }
    }
}

/// Identifies a conversation the core keeps: see `core::routing`.
pub type SessionKey = String;

/// What the core asks of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    /// `session/new`, then the channel's `model` if it has one; answered by
    /// [`AgentEvent::SessionCreated`] or [`AgentEvent::SessionFailed`] carrying the same key.
    NewSession { key: SessionKey, cwd: PathBuf, model: Option<String> },
    /// `session/load` of a session the agent had before it restarted; answered like
    /// `NewSession`, with the id we asked for. The history it replays is not reported.
    LoadSession { key: SessionKey, session_id: String, cwd: PathBuf, model: Option<String> },
    /// `session/prompt`; answered by [`AgentEvent::TurnEnded`] for that session. `images`:
    /// the image files of the messages, in order; sent as ACP image blocks (after the text)
    /// when the agent takes images (the text names every file either way).
    Prompt { session_id: String, text: String, images: Vec<PathBuf> },
    /// `session/cancel` (a notification; the running prompt then ends with `cancelled`).
    /// Permission requests of that session still pending are answered `cancelled`.
    Cancel { session_id: String },
    /// Answer a [`AgentEvent::PermissionRequested`].
    AnswerPermission { request: u64, outcome: PermissionOutcome },
}

/// The answer to a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionOutcome {
    /// One of the options the agent offered, by its `optionId`.
    Selected(String),
    Cancelled,
}

/// What an offered permission option means (`kind`); options are chosen by kind, never by
/// their label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionKind {
    AllowOnce,
    AllowAlways,
    RejectOnce,
    RejectAlways,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionOption {
    pub id: String,
    pub name: String,
    pub kind: PermissionKind,
}

/// A tool call as far as the agent has described it (`tool_call`, `tool_call_update`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCall {
    pub id: String,
    /// Human-readable title ("touch demo.txt", "Writing to hello.txt"); may be empty in updates.
    pub title: String,
    /// `read`, `edit`, `execute`, … (`other` when absent).
    pub kind: String,
    /// `pending`, `in_progress`, `completed`, `failed`; empty when an update does not change it.
    pub status: String,
    /// A short, sanitized preview: the command, the file path, a diff summary.
    pub preview: String,
}

/// Why a turn ended, as the agent said (`stopReason`), or that it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnOutcome {
    EndTurn,
    MaxTokens,
    MaxTurnRequests,
    Refusal,
    Cancelled,
    /// A stop reason this build does not know.
    Other(String),
    /// The prompt request came back as a JSON-RPC error (message for the log).
    Failed(String),
}

/// Everything the ACP side reports to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// `initialize` answered: the agent is ready for sessions.
    Ready {
        load_session: bool,
    },
    SessionCreated {
        key: SessionKey,
        session_id: String,
    },
    SessionFailed {
        key: SessionKey,
        error: String,
    },
    /// A piece of the answer (`agent_message_chunk` text).
    TextChunk {
        session_id: String,
        text: String,
    },
    TurnEnded {
        session_id: String,
        outcome: TurnOutcome,
    },
    /// The slash commands the agent offers (`available_commands_update`): the whole list,
    /// replacing any earlier one.
    CommandsAvailable {
        session_id: String,
        commands: Vec<AgentCommand>,
    },
    /// The agent process is gone (exit status, last lines of stderr for the log).
    Exited {
        reason: String,
    },
    /// A tool call started or changed.
    ToolCall {
        session_id: String,
        call: ToolCall,
    },
    /// The agent's plan (always the full list): (entry, status).
    Plan {
        session_id: String,
        entries: Vec<(String, String)>,
    },
    /// A piece of the agent's reasoning (`agent_thought_chunk`).
    Thought {
        session_id: String,
        text: String,
    },
    /// The session's mode changed (`current_mode_update`).
    ModeChanged {
        session_id: String,
        mode: String,
    },
    /// The agent asks whether it may run a tool (`session/request_permission`). `request` is
    /// our handle for the answer.
    PermissionRequested {
        session_id: String,
        request: u64,
        call: ToolCall,
        options: Vec<PermissionOption>,
    },
}

/// One of the agent's own slash commands, as it advertised it (name without the `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub name: String,
    pub description: String,
}
