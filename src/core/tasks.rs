//! Named tasks (`multiSession: true` on a channel): several conversations per person and chat,
//! each a session of its own, `/session new|use|current|close|cancel` and `/sessions`. Pure;
//! `tasks.json` keeps the names and which is selected (the daemon reads and writes it), and
//! `sessions.json` the tasks' agent sessions like any other.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::session::CancelCause;
use super::{Action, Core, SessionRecord, routing};
use crate::event::{AgentRequest, ChatRef, InboundMessage, SessionKey};
use crate::vec_map::VecMap;

/// Open tasks per person and chat.
pub const MAX_OPEN: usize = 8;
/// Tasks kept per person and chat, closed ones included (a bound on the file).
pub const MAX_KEPT: usize = 64;
/// A name's length.
pub const MAX_NAME: usize = 32;

/// One person's tasks in one chat (by their conversation's key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    /// The task that gets the next message; none: the main conversation.
    #[serde(default)]
    pub selected: Option<String>,
    #[serde(default)]
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub open: bool,
    /// Its own git worktree (`--worktree`), where its session works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// The worktree is being made: the task is not selectable yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// `tasks.json`: conversation key → tasks.
pub type TaskFile = VecMap<SessionKey, TaskList>;

impl TaskList {
    fn find(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name.eq_ignore_ascii_case(name))
    }

    fn open_count(&self) -> usize {
        self.tasks.iter().filter(|t| t.open).count()
    }
}

/// The session key of task `name` of conversation `base`.
pub fn task_key(base: &str, name: &str) -> SessionKey {
    format!("{base}#{}", name.to_ascii_lowercase())
}

/// The mark on a task's answers: `[task]` in a DM, `[sender · task]` in a group.
pub fn label(name: &str, message: &InboundMessage) -> String {
    match message.is_group {
        true => {
            let sender = if message.sender_name.is_empty() { &message.sender_id } else { &message.sender_name };
            format!("[{sender} · {name}]")
        }
        false => format!("[{name}]"),
    }
}

/// 1–32 ASCII letters, digits, `_` or `-`.
fn check_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match fine {
        true => Ok(()),
        false => Err(format!(
            "A task name has 1–{MAX_NAME} letters, digits, _ or - (got \"{}\").",
            name.chars().take(40).collect::<String>()
        )),
    }
}

const USAGE: &str = "Usage: /session new NAME · /session use [NAME] · /session current · /session close NAME · \
    /session cancel [NAME] · /sessions [all]";

impl Core {
    /// Take the tasks of `tasks.json` (at start).
    pub fn adopt_tasks(&mut self, file: TaskFile) {
        self.tasks = file;
    }

    /// The tasks as `tasks.json` should hold them, when they changed since the last call.
    pub fn tasks_to_save(&mut self) -> Option<TaskFile> {
        std::mem::take(&mut self.tasks_dirty).then(|| self.tasks.clone())
    }

    /// The session key and label a normal message of conversation `base` goes to: its selected
    /// task's, when the channel has tasks and one is selected.
    pub(super) fn task_route(&self, base: &str, message: &InboundMessage) -> (SessionKey, Option<String>) {
        let multi = self.channels.get(&message.channel).is_some_and(|c| c.multi_session);
        match self.tasks.get(base).and_then(|l| l.selected.as_ref()).filter(|_| multi) {
            Some(name) => (task_key(base, name), Some(label(name, message))),
            None => (base.to_string(), None),
        }
    }

    /// `/session …` and `/sessions …`; returns the reply.
    pub(super) fn task_command(
        &mut self,
        list_all: Option<&str>,
        args: &str,
        message: &InboundMessage,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> String {
        let Some(channel) = self.channels.get(&message.channel) else { return String::new() };
        if !channel.multi_session {
            return "Named tasks are off in this channel (the operator can set \"multiSession\": true).".to_string();
        }
        let base = routing::session_key(channel.session_scope, message);
        if let Some(all) = list_all {
            return self.task_overview(&base, all.trim().eq_ignore_ascii_case("all"));
        }
        let (verb, name) = args.trim().split_once(char::is_whitespace).unwrap_or((args.trim(), ""));
        let name = name.trim();
        let result = match verb.to_ascii_lowercase().as_str() {
            "new" => match name.strip_suffix("--worktree").map(str::trim_end) {
                Some(name) => self.task_new_worktree(&base, name, message, actions),
                None => self.task_new(&base, name),
            },
            "use" => self.task_use(&base, name),
            "current" => Ok(match self.tasks.get(&base).and_then(|l| l.selected.clone()) {
                Some(name) => format!("Current task: \"{name}\"."),
                None => "No task selected: your messages go to your main conversation.".to_string(),
            }),
            "close" => self.task_close(&base, name, actions),
            "cancel" => self.task_cancel(&base, name, now, actions),
            "" => Ok(USAGE.to_string()),
            other => Err(format!("Unknown /session command \"{other}\".\n{USAGE}")),
        };
        result.unwrap_or_else(|e| e)
    }

    /// `/session new NAME --worktree`: the task exists once its worktree does.
    fn task_new_worktree(
        &mut self,
        base: &str,
        name: &str,
        message: &InboundMessage,
        actions: &mut Vec<Action>,
    ) -> Result<String, String> {
        let Some(repo) = self.channels.get(&message.channel).map(|c| c.cwd.clone()) else { return Ok(String::new()) };
        let before = self.tasks.get(base).and_then(|l| l.selected.clone());
        self.task_new(base, name)?;
        let path = repo.join(".worktrees").join(name);
        if let Some(task) = self.tasks.get_mut(base).and_then(|l| l.tasks.last_mut()) {
            task.pending = true;
            task.cwd = Some(path.clone());
        }
        if let Some(list) = self.tasks.get_mut(base) {
            list.selected = before; // Selected once its worktree is there.
        }
        let chat = routing::reply_to(message);
        actions.push(Action::CreateWorktree { base: base.to_string(), name: name.to_string(), chat, repo, path });
        Ok(format!("Making a git worktree for task \"{name}\"…"))
    }

    /// The worktree of a `--worktree` task is there (the task is selected), or not (it is
    /// dropped, and the chat told why).
    pub(super) fn worktree_done(
        &mut self,
        base: &str,
        name: &str,
        chat: &ChatRef,
        result: Result<PathBuf, String>,
        actions: &mut Vec<Action>,
    ) {
        let Some(list) = self.tasks.get_mut(base) else { return };
        let Some(i) = list.find(name).filter(|i| list.tasks[*i].pending) else { return };
        self.tasks_dirty = true;
        let text = match result {
            Ok(path) => {
                list.tasks[i].pending = false;
                list.tasks[i].cwd = Some(path.clone());
                list.selected = Some(list.tasks[i].name.clone());
                format!("Task \"{name}\" created and selected; it works in the git worktree {}.", path.display())
            }
            Err(why) => {
                list.tasks.remove(i);
                format!("Task \"{name}\" was not created: {why}")
            }
        };
        actions.push(super::say(chat, text));
    }

    /// The working directory of the task whose session key is `key`, if it has its own.
    pub(super) fn task_cwd(&self, base: &str, key: &str) -> Option<PathBuf> {
        let list = self.tasks.get(base)?;
        list.tasks.iter().find(|t| task_key(base, &t.name) == key).and_then(|t| t.cwd.clone())
    }

    fn task_new(&mut self, base: &str, name: &str) -> Result<String, String> {
        check_name(name)?;
        let list = self.tasks.get_or_default(base.to_string());
        if let Some(i) = list.find(name) {
            let existing = &list.tasks[i].name;
            return Err(format!("There is a task \"{existing}\" already: /session use {existing} switches to it."));
        }
        if list.open_count() >= MAX_OPEN {
            return Err(format!("You have {MAX_OPEN} open tasks, the most allowed here: /session close one first."));
        }
        if list.tasks.len() >= MAX_KEPT {
            // Forget the oldest closed one (its conversation stays with the agent).
            if let Some(i) = list.tasks.iter().position(|t| !t.open) {
                list.tasks.remove(i);
            }
        }
        list.tasks.push(Task { name: name.to_string(), open: true, cwd: None, pending: false });
        list.selected = Some(name.to_string());
        self.tasks_dirty = true;
        Ok(format!(
            "Task \"{name}\" created and selected: your next messages go to it. /session use NAME switches, \
             /sessions lists."
        ))
    }

    fn task_use(&mut self, base: &str, name: &str) -> Result<String, String> {
        let list = self.tasks.get_or_default(base.to_string());
        if name.is_empty() {
            list.selected = None;
            self.tasks_dirty = true;
            return Ok("Back to your main conversation.".to_string());
        }
        let Some(i) = list.find(name) else {
            return Err(format!(
                "There is no task \"{name}\": /sessions all lists them, /session new {name} makes it."
            ));
        };
        if list.tasks[i].pending {
            return Err(format!("Task \"{name}\" is still waiting for its git worktree."));
        }
        let reopened = !list.tasks[i].open;
        if reopened && list.open_count() >= MAX_OPEN {
            return Err(format!("You have {MAX_OPEN} open tasks, the most allowed here: /session close one first."));
        }
        list.tasks[i].open = true;
        let name = list.tasks[i].name.clone();
        list.selected = Some(name.clone());
        self.tasks_dirty = true;
        Ok(match reopened {
            true => format!("Task \"{name}\" reopened and selected: it goes on where it was closed."),
            false => format!("Now on task \"{name}\"."),
        })
    }

    fn task_close(&mut self, base: &str, name: &str, actions: &mut Vec<Action>) -> Result<String, String> {
        let list = self.tasks.get_or_default(base.to_string());
        let Some(i) = list.find(name).filter(|i| list.tasks[*i].open) else {
            return Err(format!("There is no open task \"{name}\": /sessions lists them."));
        };
        list.tasks[i].open = false;
        let name = list.tasks[i].name.clone();
        if list.selected.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&name)) {
            list.selected = None;
        }
        self.tasks_dirty = true;
        let key = task_key(base, &name);
        // Its conversation is kept (dormant, in sessions.json): `use` loads it again.
        self.records_version += 1;
        if let Some(session) = self.sessions.remove(&key)
            && let Some(id) = session.id()
        {
            self.by_session_id.remove(&(session.agent.clone(), id.to_string()));
            if session.turn.is_some() {
                let request = AgentRequest::Cancel { session_id: id.to_string() };
                actions.push(Action::Agent { agent: session.agent.clone(), request });
            }
            let record = SessionRecord {
                session_id: id.to_string(),
                agent: session.agent.clone(),
                chat: session.chat.clone(),
                cwd: session.cwd.clone(),
                instructed: session.instructed,
            };
            self.dormant.insert(key, record);
        }
        Ok(format!("Task \"{name}\" closed; its conversation is kept: /session use {name} reopens it."))
    }

    fn task_cancel(
        &mut self,
        base: &str,
        name: &str,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<String, String> {
        let list = self.tasks.get(base);
        let name = match (name, list.and_then(|l| l.selected.clone())) {
            ("", Some(selected)) => selected,
            ("", None) => {
                return Err("No task selected: name one (/session cancel NAME), or use /cancel.".to_string());
            }
            (name, _) => match list.and_then(|l| l.find(name).map(|i| l.tasks[i].name.clone())) {
                Some(name) => name,
                None => return Err(format!("There is no task \"{name}\": /sessions lists them.")),
            },
        };
        let Some(session) = self.sessions.get_mut(&task_key(base, &name)) else {
            return Ok(format!("Task \"{name}\" has no request running."));
        };
        let dropped = session.waiting.len();
        session.waiting.clear();
        let running = session.id().is_some() && session.cancel_turn(CancelCause::User, now, actions);
        Ok(match running || dropped > 0 {
            true => format!("Cancelled the request of task \"{name}\"."),
            false => format!("Task \"{name}\" has no request running."),
        })
    }

    /// `/sessions [all]`.
    fn task_overview(&self, base: &str, all: bool) -> String {
        let Some(list) = self.tasks.get(base).filter(|l| !l.tasks.is_empty()) else {
            return "No tasks yet: /session new NAME starts one.".to_string();
        };
        let mut lines = vec!["Tasks:".to_string()];
        for task in list.tasks.iter().filter(|t| all || t.open) {
            let selected = list.selected.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&task.name));
            let state = match (task.open, self.sessions.get(&task_key(base, &task.name))) {
                (false, _) => "closed",
                (true, Some(s)) if s.turn.is_some() => "working",
                (true, Some(s)) if !s.waiting.is_empty() => "waiting",
                (true, _) => "idle",
            };
            lines.push(format!("{} {} — {state}", if selected { "▶" } else { "·" }, task.name));
        }
        if list.selected.is_none() {
            lines.push("(no task selected: messages go to your main conversation)".to_string());
        }
        lines.join("\n")
    }
}
