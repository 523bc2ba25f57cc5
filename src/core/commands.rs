//! Local slash commands: recognising `/help`, `/clear` (`/reset`, `/new`), `/cancel`,
//! `/status` and `/who` in a message, and the texts they answer with. Pure. What the commands
//! do to sessions is the core's (`core/mod.rs`); any other `/command` goes to the agent as is.

use std::path::Path;

use crate::config::SessionScope;
use crate::event::AgentCommand;

/// A command tether answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Help,
    Clear,
    Cancel,
    Status,
    Who,
}

/// (name, command, line for /help), in the order /help lists them. Names are lower case.
const TABLE: &[(&str, Command, &str)] = &[
    ("help", Command::Help, "/help — Show this help"),
    ("clear", Command::Clear, "/clear — Clear your session (aliases: /reset, /new)"),
    ("reset", Command::Clear, ""),
    ("new", Command::Clear, ""),
    ("cancel", Command::Cancel, "/cancel — Cancel the current request"),
    ("status", Command::Status, "/status — Show session info"),
    ("who", Command::Who, "/who — Show who shares this session"),
];

/// The local command a message invokes, with its arguments (trimmed), if it is one.
/// `/name`, `/name@anybot` and leading spaces are accepted; names match in any case and are
/// made of `A-Z a-z 0-9 _ -`. Anything else, `/summary` included, is not ours.
pub fn parse(text: &str) -> Option<(Command, &str)> {
    let (name, _, args) = split(text)?;
    let (_, command, _) = TABLE.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))?;
    Some((*command, args))
}

/// Whether the message is a `/command@somebot`. Adapters strip our own bot's name, so a name
/// left there is another bot's: in a group, the command is not for us (nor for our agent).
pub fn addressed_elsewhere(text: &str) -> bool {
    split(text).is_some_and(|(_, bot, _)| bot.is_some_and(|b| !b.is_empty()))
}

/// `/name@bot args` → (name, bot, args), if the text starts with a command.
fn split(text: &str) -> Option<(&str, Option<&str>, &str)> {
    let rest = text.trim_start().strip_prefix('/')?;
    let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
    let (name, mut rest) = rest.split_at_checked(name_end)?;
    let mut bot = None;
    if let Some(after_at) = rest.strip_prefix('@') {
        let bot_end = after_at.find(char::is_whitespace).unwrap_or(after_at.len());
        let (name, after) = after_at.split_at_checked(bot_end)?;
        bot = Some(name);
        rest = after;
    }
    if name.is_empty() || (!rest.is_empty() && !rest.starts_with(char::is_whitespace)) {
        return None;
    }
    Some((name, bot, rest.trim()))
}

/// Whether `name` (without `/`) is handled locally, so the agent's command of that name is
/// unreachable from chat.
fn is_local(name: &str) -> bool {
    TABLE.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(name))
}

/// `/help`: the local commands, the agent's own (those a local one does not shadow), and how
/// to chat.
pub fn help_text(agent_commands: &[AgentCommand]) -> String {
    let mut lines = vec!["Commands:".to_string()];
    lines.extend(TABLE.iter().filter(|(_, _, line)| !line.is_empty()).map(|(_, _, line)| line.to_string()));
    let reachable: Vec<&AgentCommand> = agent_commands.iter().filter(|c| !is_local(&c.name)).collect();
    if !reachable.is_empty() {
        lines.push(String::new());
        lines.push("Agent commands (forwarded to the agent):".to_string());
        for command in reachable {
            match command.description.is_empty() {
                true => lines.push(format!("/{}", command.name)),
                false => lines.push(format!("/{} — {}", command.name, command.description)),
            }
        }
    }
    lines.push(String::new());
    lines.push("Send any text to chat with the agent.".to_string());
    lines.join("\n")
}

/// The state of the asker's session, as `/status` and `/who` describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionView {
    /// The core keeps a session for the asker's key.
    pub exists: bool,
    /// The agent has not answered `session/new` yet.
    pub starting: bool,
    /// A turn is in flight.
    pub running: bool,
    /// Messages waiting for the next turn.
    pub waiting: usize,
}

impl SessionView {
    fn describe(&self) -> String {
        let mut state = match (self.exists, self.starting, self.running) {
            (false, _, _) => return "none".to_string(),
            (true, true, _) => "starting".to_string(),
            (true, false, true) => "active, a request is running".to_string(),
            (true, false, false) => "active".to_string(),
        };
        if self.waiting > 0 {
            state.push_str(&format!(", {} message(s) waiting", self.waiting));
        }
        state
    }
}

/// Everything `/status` reports.
#[derive(Debug, Clone, Copy)]
pub struct StatusInfo<'a> {
    pub session: SessionView,
    pub scope: SessionScope,
    /// The access rules in one line (see `pairing::Access::summary`).
    pub access: &'a str,
    pub channel: &'a str,
    pub channel_type: &'a str,
    pub agent: &'a str,
    pub model: Option<&'a str>,
    pub cwd: &'a Path,
}

/// `/status`: one `Key: value` line each.
pub fn status_text(s: &StatusInfo) -> String {
    let scope = match s.scope {
        SessionScope::User => "user (one conversation per person per chat)",
        SessionScope::Thread => "thread (one conversation per thread or chat)",
        SessionScope::Single => "single (one conversation for the whole channel)",
        SessionScope::ChatThread => "chat_thread (one conversation per chat thread, or per chat)",
    };
    [
        format!("Session: {}", s.session.describe()),
        format!("Scope: {scope}"),
        format!("Access: {}", s.access),
        format!("Channel: {} ({})", s.channel, s.channel_type),
        format!("Agent: {}", s.agent),
        format!("Model: {}", s.model.unwrap_or("the agent's default")),
        format!("Working directory: {}", s.cwd.display()),
    ]
    .join("\n")
}

/// Everything `/who` reports.
#[derive(Debug, Clone, Copy)]
pub struct WhoInfo<'a> {
    pub channel: &'a str,
    pub cwd: &'a Path,
    pub session: SessionView,
    pub scope: SessionScope,
    pub in_group: bool,
    pub in_thread: bool,
    pub sender_name: &'a str,
    pub sender_id: &'a str,
}

/// `/who`: the channel, the workspace, whether the session exists and who shares it.
pub fn who_text(w: &WhoInfo) -> String {
    let shared = match w.scope {
        SessionScope::Single => "shared channel-wide",
        SessionScope::Thread | SessionScope::ChatThread if w.in_thread => "shared by this topic",
        SessionScope::Thread | SessionScope::ChatThread if w.in_group => "shared by this group",
        SessionScope::Thread | SessionScope::ChatThread | SessionScope::User => "private to you",
    };
    let workspace = w.cwd.file_name().map_or_else(|| w.cwd.display().to_string(), |n| n.to_string_lossy().into());
    let session = if w.session.exists { "active" } else { "none" };
    [
        format!("Channel: {}", w.channel),
        format!("Workspace: {workspace}"),
        format!("Session: {session} ({shared})"),
        format!("You: {} (name \"{}\")", w.sender_id, w.sender_name),
    ]
    .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_table() {
        let cases: Vec<(&str, Option<(Command, &str)>)> = vec![
            ("/help", Some((Command::Help, ""))),
            ("  /HELP  ", Some((Command::Help, ""))),
            ("/Clear", Some((Command::Clear, ""))),
            ("/reset", Some((Command::Clear, ""))),
            ("/new now please", Some((Command::Clear, "now please"))),
            ("/clear confirm", Some((Command::Clear, "confirm"))),
            ("/cancel", Some((Command::Cancel, ""))),
            ("/status@tether_bot", Some((Command::Status, ""))),
            ("/who@any_bot  x ", Some((Command::Who, "x"))),
            ("/cancel\nand more", Some((Command::Cancel, "and more"))),
            // Not ours: the agent gets them verbatim.
            ("/summary", None),
            ("/joke@tether_bot", None),
            ("/helpme", None),
            ("/help-me", None),
            ("/help.", None),
            ("/help/x", None),
            ("help", None),
            ("/", None),
            ("/ help", None),
            ("//help", None),
            ("x /help", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), expected, "{text:?}");
        }
        let elsewhere = [
            ("/help@other_bot", true),
            ("/summary@other_bot now", true),
            ("/help", false),
            ("/help@", false),
            ("hi @other_bot", false),
            ("/help me@other_bot", false),
        ];
        for (text, expected) in elsewhere {
            assert_eq!(addressed_elsewhere(text), expected, "{text:?}");
        }
    }

    #[test]
    fn help_lists_local_then_reachable_agent_commands() {
        let agent = vec![
            AgentCommand { name: "help".into(), description: "agent help, shadowed".into() },
            AgentCommand { name: "summary".into(), description: "Summarise".into() },
            AgentCommand { name: "init".into(), description: String::new() },
        ];
        let expected = "Commands:\n\
            /help — Show this help\n\
            /clear — Clear your session (aliases: /reset, /new)\n\
            /cancel — Cancel the current request\n\
            /status — Show session info\n\
            /who — Show who shares this session\n\
            \n\
            Agent commands (forwarded to the agent):\n\
            /summary — Summarise\n\
            /init\n\
            \n\
            Send any text to chat with the agent.";
        assert_eq!(help_text(&agent), expected);
        let without = help_text(&[]);
        assert!(!without.contains("Agent commands"), "{without}");
        assert!(without.ends_with("/who — Show who shares this session\n\nSend any text to chat with the agent."));
    }

    #[test]
    fn status_and_who_texts() {
        let running = SessionView { exists: true, starting: false, running: true, waiting: 2 };
        let status = status_text(&StatusInfo {
            session: running,
            scope: SessionScope::Thread,
            access: "pairing (2 paired, 1 pending); groups: disabled",
            channel: "phone",
            channel_type: "telegram",
            agent: "default",
            model: None,
            cwd: Path::new("/srv/project"),
        });
        assert_eq!(
            status,
            "Session: active, a request is running, 2 message(s) waiting\n\
             Scope: thread (one conversation per thread or chat)\n\
             Access: pairing (2 paired, 1 pending); groups: disabled\n\
             Channel: phone (telegram)\n\
             Agent: default\n\
             Model: the agent's default\n\
             Working directory: /srv/project"
        );
        let views = [
            (SessionView::default(), "none"),
            (SessionView { exists: true, starting: true, ..Default::default() }, "starting"),
            (SessionView { exists: true, ..Default::default() }, "active"),
        ];
        for (view, expected) in views {
            assert_eq!(view.describe(), expected);
        }

        let who = |scope, in_group, in_thread, exists| {
            who_text(&WhoInfo {
                channel: "phone",
                cwd: Path::new("/srv/project"),
                session: SessionView { exists, ..Default::default() },
                scope,
                in_group,
                in_thread,
                sender_name: "Ada",
                sender_id: "111",
            })
        };
        assert_eq!(
            who(SessionScope::User, false, false, true),
            "Channel: phone\nWorkspace: project\nSession: active (private to you)\nYou: 111 (name \"Ada\")"
        );
        let sharing = [
            (SessionScope::Single, false, false, "none (shared channel-wide)"),
            (SessionScope::Thread, true, false, "none (shared by this group)"),
            (SessionScope::Thread, true, true, "none (shared by this topic)"),
            (SessionScope::Thread, false, false, "none (private to you)"),
            (SessionScope::User, true, true, "none (private to you)"),
        ];
        for (scope, group, thread, expected) in sharing {
            assert!(who(scope, group, thread, false).contains(&format!("Session: {expected}")), "{scope:?}");
        }
    }
}
