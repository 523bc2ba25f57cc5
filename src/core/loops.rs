//! Scheduled loops: prompts that run on a cron schedule, each as its own turn in its own
//! session, and report to the chat (or thread) that created them. Pure: the book of loops
//! (`loops.json` holds it; the daemon reads and writes the file), which are due, and the
//! `/loop` command's words. The core (`core/mod.rs`) runs the due ones.

use crate::time_zone::TimeZone;
use serde::{Deserialize, Serialize};

use super::cron::{self, Cron};
use crate::event::ChatRef;

/// Enabled loops per chat or thread.
pub const MAX_PER_TARGET: usize = 10;
/// A loop's prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Loops kept in all (disabled ones included): a bound on the file and the admin page.
pub const MAX_LOOPS: usize = 1000;

/// One loop, as `loops.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Loop {
    pub id: u32,
    pub cron: String,
    pub prompt: String,
    pub channel: String,
    pub chat_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(default)]
    pub is_group: bool,
    /// Who created it: its runs are theirs (the gates, permission answers).
    pub sender_id: String,
    #[serde(default)]
    pub sender_name: String,
    pub created_ms: u64,
    pub enabled: bool,
    /// Why it was disabled (its chat is no longer allowed), for `/loop list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
    #[serde(default)]
    pub last_run_ms: Option<u64>,
    /// The run it waits for. In the past after a restart: the runs missed meanwhile, which
    /// run once.
    #[serde(default)]
    pub next_run_ms: Option<u64>,
    #[serde(default)]
    pub runs: u64,
    /// Runs skipped because the previous one was still going.
    #[serde(default)]
    pub skipped: u64,
}

impl Loop {
    pub fn chat(&self) -> ChatRef {
        ChatRef { channel: self.channel.clone(), chat_id: self.chat_id.clone(), thread_id: self.thread_id.clone() }
    }

    /// The session key its runs use (their own conversation, never the user's).
    pub fn session_key(&self) -> String {
        format!("loop:{}:{}", self.channel, self.id)
    }

    /// The mark on its answers.
    pub fn label(&self) -> String {
        format!("[loop {}]", self.id)
    }

    fn belongs_to(&self, chat: &ChatRef) -> bool {
        self.channel == chat.channel && self.chat_id == chat.chat_id && self.thread_id == chat.thread_id
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoopFile {
    pub next_id: u32,
    pub loops: Vec<Loop>,
}

/// A loop tool the agent called through `tether mcp` (`control.rs` decodes the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopTool {
    Create { cron: String, prompt: String },
    List,
    Cancel { id: u32 },
}

/// Who asks, from where (for `/loop add`).
#[derive(Debug, Clone)]
pub struct Creator<'a> {
    pub chat: &'a ChatRef,
    pub is_group: bool,
    pub sender_id: &'a str,
    pub sender_name: &'a str,
}

/// The loops of the service.
#[derive(Debug, Clone)]
pub struct Book {
    file: LoopFile,
    zone: TimeZone,
    /// Changed since the daemon last saved it.
    dirty: bool,
}

impl Default for Book {
    fn default() -> Book {
        Book { file: LoopFile { next_id: 1, loops: Vec::new() }, zone: TimeZone::UTC, dirty: false }
    }
}

impl Book {
    /// Take the loops of `loops.json` (or of an earlier run), in `zone`.
    pub fn new(file: LoopFile, zone: TimeZone) -> Book {
        let mut file = file;
        let highest = file.loops.iter().map(|l| l.id).max().unwrap_or(0);
        file.next_id = file.next_id.max(highest + 1).max(1);
        Book { file, zone, dirty: false }
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn file(&self) -> &LoopFile {
        &self.file
    }

    /// Whether it changed since the last call (the daemon saves it then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// `/loop add "<cron>" <prompt>`: the new loop, or what is wrong.
    pub fn add(&mut self, args: &str, by: &Creator<'_>, now_ms: u64) -> Result<String, String> {
        let (expr, prompt) = split_add(args)?;
        self.add_parsed(&expr, &prompt, by, now_ms)
    }

    /// A loop of schedule `expr` and `prompt` (from `/loop add`, or the agent's `loop_create`):
    /// the new loop, or what is wrong.
    pub fn add_parsed(&mut self, expr: &str, prompt: &str, by: &Creator<'_>, now_ms: u64) -> Result<String, String> {
        let expr = expr.trim().to_string();
        let cron = Cron::parse(&expr).map_err(|e| format!("That schedule is not valid: {e}."))?;
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(format!("The loop needs a prompt after the schedule. {USAGE_ADD}"));
        }
        let chars = prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(format!(
                "The prompt has {chars} characters; a loop's prompt may have at most {MAX_PROMPT_CHARS}."
            ));
        }
        let here = self.file.loops.iter().filter(|l| l.enabled && l.belongs_to(by.chat)).count();
        if here >= MAX_PER_TARGET {
            return Err(format!(
                "This chat has {MAX_PER_TARGET} loops already, the most allowed. Cancel one first (/loop list, /loop cancel ID)."
            ));
        }
        if self.file.loops.len() >= MAX_LOOPS {
            return Err(format!("tether keeps at most {MAX_LOOPS} loops; cancel some first."));
        }
        let next_runs = cron.next_runs(now_ms, &self.zone, 3);
        let Some(first) = next_runs.first().copied() else {
            return Err(format!("The schedule \"{expr}\" never comes due (no such date)."));
        };
        let id = self.file.next_id;
        self.file.next_id += 1;
        self.file.loops.push(Loop {
            id,
            cron: expr.clone(),
            prompt: prompt.to_string(),
            channel: by.chat.channel.clone(),
            chat_id: by.chat.chat_id.clone(),
            thread_id: by.chat.thread_id.clone(),
            is_group: by.is_group,
            sender_id: by.sender_id.to_string(),
            sender_name: by.sender_name.to_string(),
            created_ms: now_ms,
            enabled: true,
            disabled: None,
            last_run_ms: None,
            next_run_ms: Some(first),
            runs: 0,
            skipped: 0,
        });
        self.dirty = true;
        let runs: Vec<String> = next_runs.iter().map(|r| cron::show(*r, &self.zone)).collect();
        Ok(format!(
            "Loop {id} added: \"{expr}\". Next runs: {}. Answers come here marked [loop {id}].",
            runs.join(", ")
        ))
    }

    /// `/loop list`: the loops of this chat.
    pub fn list(&self, chat: &ChatRef) -> String {
        let here: Vec<&Loop> = self.file.loops.iter().filter(|l| l.belongs_to(chat)).collect();
        if here.is_empty() {
            return format!("No loops in this chat. {USAGE_ADD}");
        }
        let mut lines = vec!["Loops in this chat:".to_string()];
        for l in here {
            let state = match (&l.disabled, l.next_run_ms) {
                (Some(why), _) => format!("disabled: {why}"),
                (None, Some(next)) => format!("next {}", cron::show(next, &self.zone)),
                (None, None) => "no next run".to_string(),
            };
            lines.push(format!("{} · \"{}\" · {state} · {}", l.id, l.cron, preview(&l.prompt)));
        }
        lines.join("\n")
    }

    /// `/loop inspect <id>`.
    pub fn inspect(&self, id_text: &str, chat: &ChatRef, now_ms: u64) -> Result<String, String> {
        let l = self.find(id_text, chat)?;
        let mut lines = vec![format!("Loop {} \"{}\" (times in {})", l.id, l.cron, zone_name(&self.zone))];
        match &l.disabled {
            Some(why) => lines.push(format!("Disabled: {why}")),
            None => {
                let runs = Cron::parse(&l.cron).map(|c| c.next_runs(now_ms, &self.zone, 3)).unwrap_or_default();
                let runs: Vec<String> = runs.iter().map(|r| cron::show(*r, &self.zone)).collect();
                lines
                    .push(format!("Next runs: {}", if runs.is_empty() { "none".to_string() } else { runs.join(", ") }));
            }
        }
        let last = l.last_run_ms.map_or_else(|| "never".to_string(), |at| cron::show(at, &self.zone));
        lines.push(format!("Last run: {last}; runs: {}; skipped (previous run still going): {}", l.runs, l.skipped));
        lines.push(format!(
            "Created by {} ({})",
            if l.sender_name.is_empty() { &l.sender_id } else { &l.sender_name },
            l.sender_id
        ));
        lines.push(format!("Prompt: {}", l.prompt));
        Ok(lines.join("\n"))
    }

    /// `/loop cancel <id>`: the loop is removed.
    pub fn cancel(&mut self, id_text: &str, chat: &ChatRef) -> Result<String, String> {
        let id = self.find(id_text, chat)?.id;
        self.remove(id);
        Ok(format!("Loop {id} cancelled."))
    }

    /// Remove a loop (also `tether loops cancel`); whether it was there.
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.file.loops.len();
        self.file.loops.retain(|l| l.id != id);
        self.dirty |= self.file.loops.len() != before;
        self.file.loops.len() != before
    }

    fn find(&self, id_text: &str, chat: &ChatRef) -> Result<&Loop, String> {
        let wanted = id_text.trim().trim_start_matches('#');
        let id: u32 =
            wanted.parse().map_err(|_| format!("\"{}\" is not a loop id; /loop list shows them.", id_text.trim()))?;
        self.file
            .loops
            .iter()
            .find(|l| l.id == id && l.belongs_to(chat))
            .ok_or_else(|| format!("There is no loop {id} in this chat; /loop list shows them."))
    }

    /// The enabled loops whose run has come (at `now_ms` or before: runs missed while tether
    /// was stopped come as one), each moved on to its next run after `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Loop> {
        let mut due = Vec::new();
        for l in self.file.loops.iter_mut().filter(|l| l.enabled) {
            let cron = match Cron::parse(&l.cron) {
                Ok(cron) => cron,
                Err(e) => {
                    l.enabled = false;
                    l.disabled = Some(format!("its schedule is not valid: {e}"));
                    self.dirty = true;
                    continue;
                }
            };
            match l.next_run_ms {
                None => l.next_run_ms = cron.next_after(now_ms, &self.zone),
                Some(at) if at <= now_ms => {
                    due.push(l.clone());
                    l.next_run_ms = cron.next_after(now_ms, &self.zone);
                }
                Some(_) => continue,
            }
            self.dirty = true;
        }
        due
    }

    /// A due loop ran (a turn started) or was skipped (its previous run still going).
    pub fn record(&mut self, id: u32, ran: bool, now_ms: u64) {
        if let Some(l) = self.file.loops.iter_mut().find(|l| l.id == id) {
            match ran {
                true => {
                    l.runs += 1;
                    l.last_run_ms = Some(now_ms);
                }
                false => l.skipped += 1,
            }
            self.dirty = true;
        }
    }

    /// Its chat is no longer allowed (or loops no longer are): it stays listed, disabled.
    pub fn disable(&mut self, id: u32, why: &str) {
        if let Some(l) = self.file.loops.iter_mut().find(|l| l.id == id) {
            l.enabled = false;
            l.disabled = Some(why.to_string());
            l.next_run_ms = None;
            self.dirty = true;
        }
    }

    /// The earliest next run of an enabled loop (Unix ms).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.file.loops.iter().filter(|l| l.enabled).filter_map(|l| l.next_run_ms).min()
    }

    /// For the admin page: every loop with its last and next run.
    pub fn overview(&self) -> Vec<serde_json::Value> {
        self.file
            .loops
            .iter()
            .map(|l| {
                serde_json::json!({
                    "id": l.id, "cron": l.cron, "channel": l.channel, "chatId": l.chat_id, "threadId": l.thread_id,
                    "enabled": l.enabled, "disabled": l.disabled,
                    "lastRun": l.last_run_ms.map(|at| cron::show(at, &self.zone)),
                    "nextRun": l.next_run_ms.filter(|_| l.enabled).map(|at| cron::show(at, &self.zone)),
                    "runs": l.runs, "skipped": l.skipped, "prompt": preview(&l.prompt),
                })
            })
            .collect()
    }
}

pub const USAGE_ADD: &str =
    "Add one with /loop add \"CRON\" PROMPT, e.g. /loop add \"*/15 * * * *\" check the deployment.";

/// `/loop …` usage.
pub const USAGE: &str = "Usage: /loop add \"CRON\" PROMPT · /loop list · /loop inspect ID · /loop cancel ID\n\
    The schedule has 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 9 * * mon-fri\".";

/// `"<cron>" <prompt>` (straight or curly quotes; a `@daily`-style shortcut needs none).
fn split_add(args: &str) -> Result<(String, String), String> {
    let args = args.trim();
    if let Some(rest) = args.strip_prefix('@') {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (name, prompt) = rest.split_at_checked(end).unwrap_or((rest, ""));
        return Ok((format!("@{name}"), prompt.to_string()));
    }
    let Some(rest) = args.strip_prefix(['"', '“', '”']) else {
        return Err(format!("Put the schedule in double quotes. {USAGE_ADD}"));
    };
    let Some(end) = rest.find(['"', '“', '”']) else {
        return Err(format!("The schedule's closing quote is missing. {USAGE_ADD}"));
    };
    let (expr, after) = rest.split_at_checked(end).unwrap_or((rest, ""));
    let prompt = after.chars().skip(1).collect::<String>();
    Ok((expr.trim().to_string(), prompt))
}

/// The first line of a prompt, at most 60 characters.
fn preview(prompt: &str) -> String {
    let line = prompt.lines().next().unwrap_or_default();
    let short: String = line.chars().take(60).collect();
    if short.chars().count() < prompt.chars().count() { format!("{short}…") } else { short }
}

fn zone_name(zone: &TimeZone) -> String {
    zone.name().map_or_else(|| "the local time zone".to_string(), str::to_string)
}

// The core's side: `/loop`, the due runs, the clock.
use std::time::{Duration, Instant};

use super::session::{Session, Writer};
use super::{Action, Core, Waiting, Waits, gate, new_session, turn_settings};
use crate::config::{DispatchMode, SessionScope};
use crate::event::InboundMessage;

/// Why loops are refused in a channel of `sessionScope: "single"`.
const SINGLE_SCOPE: &str =
    "Loops are not available in this channel: it shares one conversation among everyone (sessionScope \"single\").";

/// Whose loop the agent creates in `session`: the person whose turn is running (the last
/// of its writers), else who last wrote there.
fn loop_creator(session: &Session) -> Option<Writer> {
    let last = session.writer.clone();
    let running = session.turn.as_ref().and_then(|t| t.senders.iter().rev().find(|s| !s.is_empty()));
    match (running, last) {
        (Some(id), Some(last)) if *id == last.id => Some(last),
        (Some(id), last) => {
            // Another person's turn: their name is not kept, the chat is the same.
            let is_group = last.is_some_and(|l| l.is_group);
            Some(Writer { id: id.clone(), name: String::new(), is_group })
        }
        (None, last) => last,
    }
}

/// The clock looks at the loops at least this often (a wall clock that jumps is caught up).
const LOOK_EVERY: Duration = Duration::from_secs(60);

impl Core {
    /// Take the loops of `loops.json` (at start). Runs missed while tether was stopped come
    /// due at the first tick, once each.
    pub fn adopt_loops(&mut self, book: Book, now: Instant) {
        self.loops = book;
        self.schedule_loops(now);
    }

    /// The loops as `loops.json` should hold them, when they changed since the last call.
    pub fn loops_to_save(&mut self) -> Option<LoopFile> {
        self.loops.take_dirty().then(|| self.loops.file().clone())
    }

    /// The loops for the admin page.
    pub fn loops_overview(&self) -> Vec<serde_json::Value> {
        self.loops.overview()
    }

    /// When the clock must next look at the loops: the next run, at most [`LOOK_EVERY`] away.
    pub(super) fn schedule_loops(&mut self, now: Instant) {
        let any = self.loops.file().loops.iter().any(|l| l.enabled);
        self.loops_wake = any.then(|| {
            let wait = self
                .loops
                .next_due_ms()
                .map_or(LOOK_EVERY, |due| Duration::from_millis(due.saturating_sub(self.wall_ms)).min(LOOK_EVERY));
            now + wait
        });
    }

    /// `/loop …` from `message`'s sender; returns the reply.
    pub(super) fn loop_command(
        &mut self,
        args: &str,
        message: &InboundMessage,
        _now: Instant,
        actions: &mut Vec<Action>,
    ) -> String {
        let Some(channel) = self.channels.get(&message.channel) else { return String::new() };
        if channel.session_scope == SessionScope::Single {
            return SINGLE_SCOPE.to_string();
        }
        let chat = super::routing::reply_to(message);
        let (verb, rest) = args.trim().split_once(char::is_whitespace).unwrap_or((args.trim(), ""));
        let now_ms = self.wall_ms;
        let result = match verb.to_ascii_lowercase().as_str() {
            "" | "list" => Ok(self.loops.list(&chat)),
            "add" => {
                let by = Creator {
                    chat: &chat,
                    is_group: message.is_group,
                    sender_id: &message.sender_id,
                    sender_name: &message.sender_name,
                };
                self.loops.add(rest, &by, now_ms)
            }
            "inspect" | "show" => self.loops.inspect(rest, &chat, now_ms),
            "cancel" | "remove" | "delete" => {
                let key = rest.trim().parse::<u32>().ok().map(|id| format!("loop:{}:{id}", chat.channel));
                let reply = self.loops.cancel(rest, &chat);
                if let (Ok(_), Some(key)) = (&reply, key) {
                    // A run still going is cancelled with it.
                    self.clear_session(&key, actions);
                }
                reply
            }
            other => Err(format!("Unknown /loop command \"{other}\".\n{USAGE}")),
        };
        match &result {
            Ok(_) if verb.eq_ignore_ascii_case("add") => {
                log::info!(target: chat.channel.as_str(), "loop added in {} by {}", chat.chat_id, message.sender_id)
            }
            _ => {}
        }
        result.unwrap_or_else(|e| e)
    }

    /// A loop tool the agent called in session `key` (through `tether mcp` and the control
    /// socket): it acts on the loops of that session's chat, for the person whose turn is
    /// running there (else who last wrote there), like `/loop` in that chat. The text for
    /// the agent, or why not; and what to do.
    pub fn loop_tool(&mut self, key: &str, tool: LoopTool, now: Instant) -> (Result<String, String>, Vec<Action>) {
        let mut actions = Vec::new();
        let result = self.run_loop_tool(key, tool, &mut actions);
        self.finish(&mut actions, now);
        (result, actions)
    }

    /// A loop tool call of the operator (`tether loops cancel` through the control socket):
    /// any loop, by id. Only cancelling is offered.
    pub fn operator_loop_tool(&mut self, tool: LoopTool, now: Instant) -> (Result<String, String>, Vec<Action>) {
        let mut actions = Vec::new();
        let result = match tool {
            LoopTool::Cancel { id } => {
                let channel = self.loops.file().loops.iter().find(|l| l.id == id).map(|l| l.channel.clone());
                match channel {
                    Some(channel) if self.loops.remove(id) => {
                        log::info!(target: channel.as_str(), "loop {id} cancelled from the command line");
                        // A run still going is cancelled with it.
                        self.clear_session(&format!("loop:{channel}:{id}"), &mut actions);
                        Ok(format!("Loop {id} cancelled."))
                    }
                    _ => Err(format!("there is no loop {id}; `tether loops list` shows them")),
                }
            }
            LoopTool::Create { .. } | LoopTool::List => {
                Err("the command line may only cancel loops through the service".to_string())
            }
        };
        self.finish(&mut actions, now);
        (result, actions)
    }

    fn run_loop_tool(&mut self, key: &str, tool: LoopTool, actions: &mut Vec<Action>) -> Result<String, String> {
        let Some(session) = self.sessions.get(key) else {
            return Err(format!(
                "tether has no conversation \"{key}\" now (it was cleared or has ended); loops can still be \
                 managed in the chat with /loop."
            ));
        };
        let chat = session.chat.clone();
        let creator = loop_creator(session);
        let Some(channel) = self.channels.get(&chat.channel) else {
            return Err(format!("the channel \"{}\" of this conversation is no longer configured.", chat.channel));
        };
        if channel.session_scope == SessionScope::Single {
            return Err(SINGLE_SCOPE.to_string());
        }
        match tool {
            LoopTool::List => Ok(self.loops.list(&chat)),
            LoopTool::Create { cron, prompt } => {
                let Some(writer) = creator else {
                    return Err("nobody has written in this conversation yet, so the loop would have no owner; \
                        ask in the chat with /loop add."
                        .to_string());
                };
                let by = Creator {
                    chat: &chat,
                    is_group: writer.is_group,
                    sender_id: &writer.id,
                    sender_name: &writer.name,
                };
                let added = self.loops.add_parsed(&cron, &prompt, &by, self.wall_ms)?;
                log::info!(target: chat.channel.as_str(), "loop added in {} by the agent for {}", chat.chat_id, writer.id);
                Ok(added)
            }
            LoopTool::Cancel { id } => {
                let cancelled = self.loops.cancel(&id.to_string(), &chat)?;
                log::info!(target: chat.channel.as_str(), "loop {id} in {} cancelled by the agent", chat.chat_id);
                // A run still going is cancelled with it.
                self.clear_session(&format!("loop:{}:{id}", chat.channel), actions);
                Ok(cancelled)
            }
        }
    }

    /// Start the loops whose time has come, each as its own turn in its own session. One whose
    /// previous run is still going is skipped (and counted); one whose chat is no longer
    /// allowed is disabled.
    pub(super) fn run_due_loops(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let now_ms = self.wall_ms;
        for due in self.loops.take_due(now_ms) {
            if let Err(why) = self.loop_allowed(&due) {
                log::warn!(target: due.channel.as_str(), "loop {} disabled: {why}", due.id);
                self.loops.disable(due.id, &why);
                continue;
            }
            let Some(channel) = self.channels.get(&due.channel) else { continue };
            let key = due.session_key();
            if self.sessions.get(&key).is_some_and(|s| s.turn.is_some() || !s.waiting.is_empty()) {
                log::info!(target: due.channel.as_str(), "loop {}: its previous run is still going; this run is skipped", due.id);
                self.loops.record(due.id, false, now_ms);
                continue;
            }
            let agent_up = !self.down.contains(&channel.agent);
            let can_load = self.load_session.get(&channel.agent).copied().unwrap_or(false);
            let chat = due.chat();
            let dormant = &mut self.dormant;
            let live = &self.by_session_id;
            let session = self.sessions.entry(key.clone()).or_insert_with(|| {
                let earlier = super::unless_taken(dormant.remove(&key), live, &key);
                new_session(&key, channel, channel.cwd.clone(), &chat, earlier, (agent_up, can_load), now, actions)
            });
            session.chat = chat.clone();
            session.label = Some(due.label());
            // The agent's loop tools in this run act for the loop's creator.
            let id = due.sender_id.clone();
            session.writer = Some(Writer { id, name: due.sender_name.clone(), is_group: due.is_group });
            // New, loaded from dormant, or its chat set: `sessions.json` may need writing.
            self.records_version += 1;
            let waiting = Waiting {
                chat,
                message_ids: Vec::new(),
                body: due.prompt.clone(),
                images: Vec::new(),
                how: Waits::Alone,
                sender: due.sender_id.clone(),
            };
            if session.accept(waiting, DispatchMode::Followup, now, actions).is_err() {
                continue;
            }
            log::info!(target: due.channel.as_str(), "loop {} runs in {}", due.id, due.chat_id);
            self.with_turn.insert(&key);
            session.start_next_turn(turn_settings(Some(channel)), now, actions);
            self.loops.record(due.id, true, now_ms);
        }
    }

    /// Whether the loop's chat and creator still pass the channel's gates.
    fn loop_allowed(&self, due: &Loop) -> Result<(), String> {
        let Some(channel) = self.channels.get(&due.channel) else {
            return Err(format!("its channel \"{}\" is no longer configured", due.channel));
        };
        if channel.session_scope == SessionScope::Single {
            return Err("the channel now has sessionScope \"single\", where loops are not available".to_string());
        }
        let as_message = InboundMessage {
            channel: due.channel.clone(),
            sender_id: due.sender_id.clone(),
            sender_name: due.sender_name.clone(),
            chat_id: due.chat_id.clone(),
            thread_id: due.thread_id.clone(),
            is_group: due.is_group,
            is_mentioned: true,
            is_reply_to_bot: true,
            ..Default::default()
        };
        let approvals = self.access.approvals(&channel.name, &due.sender_id, &due.chat_id);
        match gate::check(channel, &as_message, approvals) {
            gate::Verdict::Pass => Ok(()),
            _ => Err("this chat or its creator is no longer allowed to use the bot".to_string()),
        }
    }
}
