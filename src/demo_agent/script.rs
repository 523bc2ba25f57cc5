//! What a demo-agent turn does: the prompt words that script it, the steps a turn runs
//! (updates, answer text, pauses, requests to the client, the stop) and the canned texts.
//! Pure: no I/O, no clock.

use std::time::Duration;

use serde_json::{Value, json};

use super::store::{Entry, Role};
use super::texts::{CHAT_HELP, JOKE, huge_answer, long_answer};

/// The models the demo agent offers (a `model` config option); the first is the default.
pub const MODELS: [&str; 3] = ["demo-standard", "demo-fast", "demo-careful"];

/// The session's config options, as session/new, session/load and set_config_option return
/// them: one select option of category `model`, its values prefixed like qwen's runtime ids.
pub fn config_options(current_model: &str) -> Value {
    let options: Vec<Value> =
        MODELS.iter().map(|m| json!({"value": format!("demo|{m}"), "name": m, "description": ""})).collect();
    json!([{
        "id": "model", "name": "Model", "description": "The model that answers",
        "category": "model", "type": "select",
        "currentValue": format!("demo|{current_model}"), "options": options,
    }])
}

/// Interval between `tick N` chunks for a bare `slow`.
pub const DEFAULT_TICK: Duration = Duration::from_millis(300);
/// Upper bound for `slow=N`, so a typo cannot stall a turn for hours.
const MAX_TICK_MS: u64 = 60_000;
/// Number of `tick N` chunks a `slow` turn streams.
pub const TICKS: usize = 10;
/// Number of one-character chunks a `flood` turn streams, with no pause.
pub const FLOOD_CHUNKS: usize = 40_000;
/// Length of the single chunk a `huge` turn streams.
pub const HUGE_CHARS: usize = 2_000_000;
/// Chunk size (characters) of the `long` answer: small enough to cut through code blocks.
const LONG_CHUNK_CHARS: usize = 256;
/// The echo is streamed in about this many chunks.
const ECHO_CHUNKS: usize = 3;

/// The scripting words found in a prompt (case-insensitive, whole words).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Words {
    pub slow: Option<Duration>,
    pub long: bool,
    pub empty: bool,
    pub error: bool,
    pub refuse: bool,
    pub maxtokens: bool,
    pub permission: bool,
    pub tools: bool,
    pub ext: bool,
    pub huge: bool,
    /// 40,000 one-character chunks as fast as possible (a fast-streaming agent).
    pub flood: bool,
    /// The prompt is exactly the word `crash` (a sentence that contains it is no crash: it
    /// ends the agent, so it must not happen by accident).
    pub crash: bool,
    /// Crash unless this very prompt is already in the session's history (so the retry after
    /// a restart answers).
    pub crash_once: bool,
    pub hang: bool,
}

impl Words {
    /// Whether some word already decides the answer text, so the echo is left out.
    fn replaces_echo(&self) -> bool {
        self.slow.is_some()
            || self.long
            || self.empty
            || self.refuse
            || self.permission
            || self.ext
            || self.huge
            || self.flood
            || self.crash
            || self.hang
    }
}

/// Find the scripting words in a prompt. Words are runs of letters, digits and `=`.
pub fn parse_words(text: &str) -> Words {
    let mut words = Words::default();
    let tokens = text.split(|c: char| !(c.is_alphanumeric() || c == '=')).filter(|t| !t.is_empty());
    for token in tokens {
        let token = token.to_lowercase();
        match token.as_str() {
            "slow" => words.slow = Some(DEFAULT_TICK),
            "long" => words.long = true,
            "empty" => words.empty = true,
            "error" => words.error = true,
            "refuse" => words.refuse = true,
            "maxtokens" => words.maxtokens = true,
            "permission" => words.permission = true,
            "tools" => words.tools = true,
            "ext" => words.ext = true,
            "huge" => words.huge = true,
            "flood" => words.flood = true,
            "crash" => words.crash = text.trim().eq_ignore_ascii_case("crash"),
            "crashonce" => words.crash_once = true,
            "hang" => words.hang = true,
            other => {
                if let Some(ms) = other.strip_prefix("slow=").and_then(|v| v.parse::<u64>().ok()) {
                    words.slow = Some(Duration::from_millis(ms.min(MAX_TICK_MS)));
                }
            }
        }
    }
    words
}

/// A prompt that asks for loops in plain words, as the tool call that does it:
/// "every N minute(s) TASK" (loop_create: `* * * * *` for one minute, else `*/N * * * *`),
/// "list my loops" (loop_list), "cancel loop N" (loop_cancel).
pub fn loop_request(text: &str) -> Option<(&'static str, Value)> {
    // ASCII lowercase keeps every byte where it was, so positions hold in `text` too.
    let lower = text.to_ascii_lowercase();
    if lower.contains("list my loops") {
        return Some(("loop_list", json!({})));
    }
    if let Some(at) = lower.find("cancel loop ") {
        let rest = lower.get(at + "cancel loop ".len()..).unwrap_or_default();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(id) = digits.parse::<u32>() {
            return Some(("loop_cancel", json!({"id": id})));
        }
    }
    let at = lower.find("every ")?;
    let rest = lower.get(at + "every ".len()..)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let minutes: u32 = digits.parse().ok().filter(|n| (1..=59).contains(n))?;
    let after_number = rest.get(digits.len()..)?.trim_start();
    let unit = ["minutes", "minute"].into_iter().find(|u| after_number.starts_with(u))?;
    // The task: the rest of that line, in the prompt's own case.
    let task_at = text.len() - after_number.len() + unit.len();
    let task = text.get(task_at..)?.lines().next().unwrap_or_default().trim();
    if task.is_empty() {
        return None;
    }
    let cron = if minutes == 1 { "* * * * *".to_string() } else { format!("*/{minutes} * * * *") };
    Some(("loop_create", json!({"cron": cron, "prompt": task})))
}

/// How a turn ends when nothing interrupts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    Refusal,
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Refusal => "refusal",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One thing a running turn does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A `session/update` that is not answer text (the `update` object).
    Update(Value),
    /// Answer text: one `agent_message_chunk`, kept in the history.
    Text(String),
    /// A blank line between two answer sections, sent only if some answer text came before.
    Break,
    /// Wait this long before the next step.
    Pause(Duration),
    /// Ask the client for permission for this tool call and wait for the answer.
    AskPermission { tool_call_id: String },
    /// Send the client the non-standard request qwen sends and wait for the answer.
    AskExt,
    /// Exit the process with status 3 without answering.
    Crash,
    /// Never answer (until `session/cancel`).
    Hang,
    /// Call this tool of the session's MCP server (the client's `tether mcp`) and answer
    /// with its text.
    CallTool { tool: String, arguments: Value },
    /// Answer the prompt with this stop reason.
    Finish(StopReason),
}

/// What [`plan_turn`] needs besides the words.
pub struct TurnContext<'a> {
    /// The prompt's text blocks, joined by newlines.
    pub prompt_text: &'a str,
    /// The session's working directory (absolute).
    pub cwd: &'a str,
    /// The session's history before this prompt.
    pub history: &'a [Entry],
    /// The session's model.
    pub model: &'a str,
    /// Pause between the chunks of ordinary answers (`--chunk-delay`).
    pub chunk_delay: Duration,
    /// A number unique to this turn, for tool call ids.
    pub turn_number: u64,
}

/// The title and command of the tool call a `permission` turn asks about.
pub const TOUCH_TITLE: &str = "touch demo.txt";

/// The steps of a turn (a prompt with `error` never gets here: it is answered at once).
pub fn plan_turn(words: &Words, ctx: &TurnContext) -> Vec<Step> {
    if let Some((tool, arguments)) = loop_request(ctx.prompt_text) {
        return vec![Step::CallTool { tool: tool.to_string(), arguments }, Step::Finish(StopReason::EndTurn)];
    }
    let seen_before = ctx.history.iter().any(|e| e.role == Role::User && e.text == ctx.prompt_text);
    // The client's retry of the turn that crashed: the history ends with this prompt,
    // unanswered. One `crash` message is one crash, not two.
    let retry = ctx.history.last().is_some_and(|e| e.role == Role::User && e.text == ctx.prompt_text);
    let mut steps = Vec::new();
    if words.tools {
        steps.extend(tools_updates(ctx));
    }
    if words.permission {
        let tool_call_id = format!("demo_call_{}_touch", ctx.turn_number);
        steps.push(Step::Update(json!({
            "sessionUpdate": "tool_call",
            "toolCallId": tool_call_id,
            "title": TOUCH_TITLE,
            "kind": "execute",
            "status": "pending",
            "rawInput": {"command": TOUCH_TITLE},
        })));
        steps.push(Step::AskPermission { tool_call_id });
    }
    if words.ext {
        steps.push(Step::AskExt);
    }
    if words.huge {
        steps.push(Step::Break);
        steps.push(Step::Text(huge_answer()));
    } else if words.flood {
        steps.push(Step::Break);
        steps.extend((0..FLOOD_CHUNKS).map(|i| Step::Text(if i % 80 == 79 { "\n" } else { "x" }.to_string())));
    } else if words.long {
        let pace = words.slow.unwrap_or(ctx.chunk_delay);
        steps.push(Step::Break);
        steps.extend(paced(split_every(&long_answer(), LONG_CHUNK_CHARS), pace));
    } else if let Some(tick) = words.slow {
        steps.push(Step::Break);
        let ticks = (0..TICKS).map(|i| format!("tick {i} ")).collect();
        steps.extend(paced(ticks, tick));
    } else if !words.replaces_echo() || (words.crash && retry) {
        let text = command_answer(ctx.prompt_text, ctx.history, ctx.model)
            .unwrap_or_else(|| format!("echo: {}", ctx.prompt_text));
        steps.push(Step::Break);
        steps.extend(paced(split_even(&text, ECHO_CHUNKS), ctx.chunk_delay));
    }
    if (words.crash && !retry) || (words.crash_once && !seen_before) {
        steps.push(Step::Break);
        steps.push(Step::Text("about to crash".to_string()));
        steps.push(Step::Crash);
    } else if words.hang {
        steps.push(Step::Break);
        steps.push(Step::Text("hanging until cancelled".to_string()));
        steps.push(Step::Hang);
    } else if words.refuse {
        steps.push(Step::Finish(StopReason::Refusal));
    } else if words.maxtokens {
        steps.push(Step::Finish(StopReason::MaxTokens));
    } else {
        steps.push(Step::Finish(StopReason::EndTurn));
    }
    steps
}

/// Text chunks with a pause between consecutive ones (none when `pace` is zero).
fn paced(chunks: Vec<String>, pace: Duration) -> Vec<Step> {
    let mut steps = Vec::with_capacity(chunks.len() * 2);
    for (i, chunk) in chunks.into_iter().enumerate() {
        if i > 0 && !pace.is_zero() {
            steps.push(Step::Pause(pace));
        }
        steps.push(Step::Text(chunk));
    }
    steps
}

/// The updates of a `tools` turn: one of each kind a client meets, plus one it must ignore.
fn tools_updates(ctx: &TurnContext) -> Vec<Step> {
    let tool_call_id = format!("demo_call_{}_read", ctx.turn_number);
    let readme = format!("{}/README.md", ctx.cwd.trim_end_matches('/'));
    let updates = [
        json!({"sessionUpdate": "plan", "entries": [
            {"content": "Read the project README", "priority": "high", "status": "completed"},
            {"content": "Answer the prompt", "priority": "medium", "status": "in_progress"},
        ]}),
        json!({"sessionUpdate": "agent_thought_chunk",
               "content": {"type": "text", "text": "The prompt asks for tools, so I show each update kind."}}),
        json!({"sessionUpdate": "tool_call", "toolCallId": tool_call_id, "title": "Read README.md",
               "kind": "read", "status": "pending", "locations": [{"path": readme}],
               "rawInput": {"path": readme}}),
        json!({"sessionUpdate": "tool_call_update", "toolCallId": tool_call_id, "status": "completed",
               "content": [{"type": "content", "content": {"type": "text", "text": "# Demo project\n"}}]}),
        json!({"sessionUpdate": "current_mode_update", "currentModeId": "default"}),
        json!({"sessionUpdate": "future_kind_xyz",
               "detail": "an update kind from a later protocol version; clients must ignore it"}),
    ];
    updates.into_iter().map(Step::Update).collect()
}

/// The options a `permission` turn offers (qwen's ids and kinds).
pub fn permission_options() -> Value {
    json!([
        {"optionId": "proceed_always", "name": "Always allow", "kind": "allow_always"},
        {"optionId": "proceed_once", "name": "Allow", "kind": "allow_once"},
        {"optionId": "cancel", "name": "Reject", "kind": "reject_once"},
    ])
}

/// The `session/request_permission` params for a tool call.
pub fn permission_params(session_id: &str, tool_call_id: &str) -> Value {
    json!({
        "sessionId": session_id,
        "options": permission_options(),
        "toolCall": {
            "toolCallId": tool_call_id,
            "title": TOUCH_TITLE,
            "kind": "execute",
            "status": "pending",
            "rawInput": {"command": TOUCH_TITLE},
        },
    })
}

/// What the client's answer to a permission request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionOutcome {
    Granted(String),
    Denied,
}

/// Read the client's answer: an allow-kind option grants; a reject-kind or unknown option,
/// outcome `cancelled`, an error or a malformed answer denies.
pub fn permission_outcome(result: Option<&Value>) -> PermissionOutcome {
    let Some(outcome) = result.and_then(|r| r.get("outcome")) else {
        return PermissionOutcome::Denied;
    };
    if outcome.get("outcome").and_then(Value::as_str) != Some("selected") {
        return PermissionOutcome::Denied;
    }
    let Some(option_id) = outcome.get("optionId").and_then(Value::as_str) else {
        return PermissionOutcome::Denied;
    };
    let options = permission_options();
    let kind = options
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o.get("optionId").and_then(Value::as_str) == Some(option_id))
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str);
    match kind {
        Some(kind) if kind.starts_with("allow") => PermissionOutcome::Granted(option_id.to_string()),
        _ => PermissionOutcome::Denied,
    }
}

/// The steps after the permission answer: finish the tool call and say what happened.
pub fn permission_steps(tool_call_id: &str, outcome: &PermissionOutcome) -> Vec<Step> {
    let (status, detail, text) = match outcome {
        PermissionOutcome::Granted(option_id) => (
            "completed",
            "demo.txt touched (not really: this is the demo agent)".to_string(),
            format!("permission granted: {option_id}"),
        ),
        PermissionOutcome::Denied => {
            ("failed", "the user rejected touch demo.txt".to_string(), "permission denied".to_string())
        }
    };
    vec![Step::Update(tool_call_status_update(tool_call_id, status, &detail)), Step::Break, Step::Text(text)]
}

/// A `tool_call_update` with a status and one line of text content.
pub fn tool_call_status_update(tool_call_id: &str, status: &str, detail: &str) -> Value {
    json!({
        "sessionUpdate": "tool_call_update",
        "toolCallId": tool_call_id,
        "status": status,
        "content": [{"type": "content", "content": {"type": "text", "text": detail}}],
    })
}

/// The method of the non-standard request an `ext` turn sends (qwen sends it mid-turn).
pub const EXT_METHOD: &str = "craft/drainMidTurnQueue";

/// The steps after the client answered the `ext` request.
pub fn ext_steps(error_code: Option<i64>) -> Vec<Step> {
    let text = match error_code {
        Some(code) => format!("ext answered {code}"),
        None => "ext answered with a result".to_string(),
    };
    vec![Step::Break, Step::Text(text)]
}

/// The commands announced after `session/new` (`available_commands_update`).
pub fn available_commands() -> Value {
    json!([
        {"name": "help", "description": "List the words that script the demo agent", "input": null},
        {"name": "words", "description": "Words that script me, anywhere in a message: slow, long, empty, error, refuse, maxtokens, permission, tools, ext, huge, hang; crash alone", "input": null},
        {"name": "summary", "description": "Summarise this session's earlier prompts", "input": null},
        {"name": "joke", "description": "Tell a short programming joke", "input": null},
        {"name": "model", "description": "Say which model answers this session", "input": null},
    ])
}

/// The answer to a slash command at the start of the prompt, if it is one of ours.
pub fn command_answer(prompt_text: &str, history: &[Entry], model: &str) -> Option<String> {
    let command = prompt_text.split_whitespace().next()?;
    match command.to_lowercase().as_str() {
        "/model" => Some(format!("model: {model}")),
        "/help" | "/words" => Some(CHAT_HELP.to_string()),
        "/joke" => Some(JOKE.to_string()),
        "/summary" => {
            let prompts: Vec<&str> = history.iter().filter(|e| e.role == Role::User).map(|e| e.text.as_str()).collect();
            if prompts.is_empty() {
                return Some("summary: nothing yet, this is the first prompt".to_string());
            }
            let mut text = format!("summary: {} earlier prompt(s):", prompts.len());
            for prompt in prompts {
                let short: String = prompt.chars().take(60).collect();
                text.push_str("\n- ");
                text.push_str(&short);
            }
            Some(text)
        }
        _ => None,
    }
}

/// Split text into about `parts` chunks of equal length (in characters; empty chunks dropped).
pub fn split_even(text: &str, parts: usize) -> Vec<String> {
    let chars = text.chars().count();
    let size = chars.div_ceil(parts.max(1)).max(1);
    split_every(text, size)
}

/// Split text into chunks of `size` characters (the last may be shorter).
pub fn split_every(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size.max(1)).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(prompt_text: &'a str, history: &'a [Entry]) -> TurnContext<'a> {
        TurnContext {
            prompt_text,
            cwd: "/ws",
            history,
            model: "demo-standard",
            chunk_delay: Duration::ZERO,
            turn_number: 7,
        }
    }

    fn texts(steps: &[Step]) -> String {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn words_are_whole_and_case_insensitive() {
        let slow = |ms| Some(Duration::from_millis(ms));
        let cases: Vec<(&str, Words)> = vec![
            ("hello there", Words::default()),
            ("please be SLOW.", Words { slow: slow(300), ..Words::default() }),
            ("slow=20 please", Words { slow: slow(20), ..Words::default() }),
            ("slow=99999999", Words { slow: slow(60_000), ..Words::default() }),
            ("slow=abc", Words::default()),
            ("slowly longer errors", Words::default()),
            ("an error, then crash!", Words { error: true, ..Words::default() }),
            (" Crash ", Words { crash: true, ..Words::default() }),
            ("crash the car", Words::default()),
            ("Permission\ntools", Words { permission: true, tools: true, ..Words::default() }),
            ("(ext) huge-hang", Words { ext: true, huge: true, hang: true, ..Words::default() }),
            (
                "long empty refuse maxtokens",
                Words { long: true, empty: true, refuse: true, maxtokens: true, ..Words::default() },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_words(text), want, "{text:?}");
        }
    }

    #[test]
    fn split_even_keeps_text_and_makes_about_three_chunks() {
        let cases: [(&str, &[&str]); 4] = [
            ("echo: hi", &["ech", "o: ", "hi"]),
            ("abc", &["a", "b", "c"]),
            ("ab", &["a", "b"]),
            ("héllo wörld", &["héll", "o wö", "rld"]),
        ];
        for (text, want) in cases {
            assert_eq!(split_even(text, 3), want, "{text:?}");
        }
        assert!(split_even("", 3).is_empty());
    }

    #[test]
    fn default_turn_is_the_echo_then_end_turn() {
        let steps = plan_turn(&Words::default(), &ctx("hello world", &[]));
        assert_eq!(texts(&steps), "echo: hello world");
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Text(_))).count(), 3);
        assert_eq!(steps.last(), Some(&Step::Finish(StopReason::EndTurn)));
        assert!(!steps.iter().any(|s| matches!(s, Step::Pause(_))));
    }

    #[test]
    fn chunk_delay_puts_pauses_between_echo_chunks() {
        let mut c = ctx("hello world", &[]);
        c.chunk_delay = Duration::from_millis(40);
        let steps = plan_turn(&Words::default(), &c);
        let pauses = steps.iter().filter(|s| **s == Step::Pause(Duration::from_millis(40)));
        assert_eq!(pauses.count(), 2);
    }

    #[test]
    fn slow_streams_ten_ticks_at_the_interval() {
        let words = parse_words("slow=25");
        let steps = plan_turn(&words, &ctx("slow=25", &[]));
        let want: String = (0..10).map(|i| format!("tick {i} ")).collect();
        assert_eq!(texts(&steps), want);
        let pauses = steps.iter().filter(|s| **s == Step::Pause(Duration::from_millis(25)));
        assert_eq!(pauses.count(), 9);
    }

    #[test]
    fn one_crash_message_crashes_once_and_its_retry_is_answered() {
        let user = |t: &str| Entry { role: Role::User, text: t.into() };
        let agent = |t: &str| Entry { role: Role::Agent, text: t.into() };
        let words = parse_words("crash");
        // First time, and again after an answered `crash` (a new message, not a retry).
        for history in [vec![], vec![user("crash"), agent("echo: crash")], vec![user("hi"), agent("echo: hi")]] {
            let steps = plan_turn(&words, &ctx("crash", &history));
            assert_eq!(steps.last(), Some(&Step::Crash), "{history:?}");
        }
        // The retry of the turn that crashed (the history ends with it, unanswered).
        let history = vec![user("hi"), agent("echo: hi"), user("crash")];
        let steps = plan_turn(&words, &ctx("crash", &history));
        assert_eq!(texts(&steps), "echo: crash");
        assert_eq!(steps.last(), Some(&Step::Finish(StopReason::EndTurn)));
        // A sentence with the word is an ordinary prompt.
        let steps = plan_turn(&parse_words("do not crash please"), &ctx("do not crash please", &[]));
        assert_eq!(texts(&steps), "echo: do not crash please");
    }

    #[test]
    fn stop_reasons_and_endings() {
        let cases = [
            ("refuse", "", Some(StopReason::Refusal)),
            ("maxtokens", "echo: maxtokens", Some(StopReason::MaxTokens)),
            ("empty", "", Some(StopReason::EndTurn)),
            ("crash", "about to crash", None),
            ("hang", "hanging until cancelled", None),
        ];
        for (prompt, want_text, want_stop) in cases {
            let steps = plan_turn(&parse_words(prompt), &ctx(prompt, &[]));
            assert_eq!(texts(&steps), want_text, "{prompt}");
            let last = steps.last().cloned();
            match want_stop {
                Some(stop) => assert_eq!(last, Some(Step::Finish(stop)), "{prompt}"),
                None => assert!(matches!(last, Some(Step::Crash | Step::Hang)), "{prompt}"),
            }
        }
    }

    #[test]
    fn tools_sends_every_update_kind_then_the_echo() {
        let steps = plan_turn(&parse_words("tools"), &ctx("tools", &[]));
        let kinds: Vec<&str> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Update(u) => u["sessionUpdate"].as_str(),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            ["plan", "agent_thought_chunk", "tool_call", "tool_call_update", "current_mode_update", "future_kind_xyz"]
        );
        assert_eq!(
            steps[2].clone(),
            Step::Update(json!({
            "sessionUpdate": "tool_call", "toolCallId": "demo_call_7_read", "title": "Read README.md",
            "kind": "read", "status": "pending", "locations": [{"path": "/ws/README.md"}],
            "rawInput": {"path": "/ws/README.md"}}))
        );
        assert_eq!(texts(&steps), "echo: tools");
    }

    #[test]
    fn permission_turn_asks_and_then_reports() {
        let steps = plan_turn(&parse_words("permission"), &ctx("permission", &[]));
        assert!(matches!(&steps[0], Step::Update(u) if u["sessionUpdate"] == "tool_call"
            && u["kind"] == "execute" && u["status"] == "pending" && u["title"] == TOUCH_TITLE));
        assert_eq!(steps[1], Step::AskPermission { tool_call_id: "demo_call_7_touch".into() });
        assert_eq!(steps[2], Step::Finish(StopReason::EndTurn));
        assert_eq!(steps.len(), 3);
    }

    #[test]
    fn permission_outcomes() {
        let selected = |id: &str| json!({"outcome": {"outcome": "selected", "optionId": id}});
        let granted = |id: &str| PermissionOutcome::Granted(id.to_string());
        let cases = [
            (Some(selected("proceed_once")), granted("proceed_once")),
            (Some(selected("proceed_always")), granted("proceed_always")),
            (Some(selected("cancel")), PermissionOutcome::Denied),
            (Some(selected("made_up")), PermissionOutcome::Denied),
            (Some(json!({"outcome": {"outcome": "cancelled"}})), PermissionOutcome::Denied),
            (Some(json!({})), PermissionOutcome::Denied),
            (None, PermissionOutcome::Denied),
        ];
        for (result, want) in cases {
            assert_eq!(permission_outcome(result.as_ref()), want, "{result:?}");
        }
        let granted_steps = permission_steps("t1", &granted("proceed_once"));
        assert_eq!(texts(&granted_steps), "permission granted: proceed_once");
        assert!(matches!(&granted_steps[0], Step::Update(u) if u["status"] == "completed"));
        let denied = permission_steps("t1", &PermissionOutcome::Denied);
        assert_eq!(texts(&denied), "permission denied");
        assert!(matches!(&denied[0], Step::Update(u) if u["status"] == "failed" && u["toolCallId"] == "t1"));
    }

    #[test]
    fn ext_reports_the_code() {
        assert_eq!(texts(&ext_steps(Some(-32601))), "ext answered -32601");
        assert_eq!(texts(&ext_steps(None)), "ext answered with a result");
    }

    #[test]
    fn commands() {
        let history = vec![
            Entry { role: Role::User, text: "first question".into() },
            Entry { role: Role::Agent, text: "echo: first question".into() },
        ];
        assert_eq!(command_answer("/help", &[], "demo-fast").as_deref(), Some(CHAT_HELP));
        assert_eq!(command_answer("/model", &[], "demo-fast").as_deref(), Some("model: demo-fast"));
        assert_eq!(command_answer("  /JOKE please", &[], "demo-fast").as_deref(), Some(JOKE));
        assert_eq!(
            command_answer("/summary", &history, "demo-fast").as_deref(),
            Some("summary: 1 earlier prompt(s):\n- first question")
        );
        assert_eq!(command_answer("hello /joke", &[], "demo-fast"), None);
        assert_eq!(command_answer("/unknown", &[], "demo-fast"), None);
        let steps = plan_turn(&Words::default(), &ctx("/joke", &[]));
        assert_eq!(texts(&steps), JOKE);
    }

    #[test]
    fn long_answer_shape() {
        let text = long_answer();
        let len = text.chars().count();
        assert!((8500..=9500).contains(&len), "long answer is {len} chars");
        let blocks: Vec<&str> = text.split("```rust\n").skip(1).collect();
        assert_eq!(blocks.len(), 2);
        let first = blocks[0].split("```").next().unwrap();
        let second = blocks[1].split("```").next().unwrap();
        assert!(first.len() > 4096, "first block is {} chars", first.len());
        assert!(second.len() < 4096);
        assert_eq!(text.matches("```").count(), 4);
        let steps = plan_turn(&parse_words("long"), &ctx("long", &[]));
        assert_eq!(texts(&steps), text);
        assert!(steps.iter().filter(|s| matches!(s, Step::Text(_))).count() >= 30);
    }

    #[test]
    fn huge_is_one_chunk_of_two_million_chars() {
        let steps = plan_turn(&parse_words("huge"), &ctx("huge", &[]));
        let chunks: Vec<&String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Text(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), HUGE_CHARS);
        assert!(!chunks[0].contains('\n'));
    }

    #[test]
    fn combined_words_keep_their_order() {
        let steps = plan_turn(&parse_words("tools permission ext slow=5 maxtokens"), &ctx("x", &[]));
        let ask_permission = steps.iter().position(|s| matches!(s, Step::AskPermission { .. }));
        let ask_ext = steps.iter().position(|s| *s == Step::AskExt);
        let first_tick = steps.iter().position(|s| *s == Step::Text("tick 0 ".into()));
        assert!(ask_permission < ask_ext && ask_ext < first_tick, "{steps:?}");
        assert_eq!(steps.last(), Some(&Step::Finish(StopReason::MaxTokens)));
    }

    #[test]
    fn loop_requests_in_plain_words_become_tool_calls() {
        let create = |cron: &str, prompt: &str| Some(("loop_create", json!({"cron": cron, "prompt": prompt})));
        let cases = [
            ("every 1 minutes ping", create("* * * * *", "ping")),
            ("Every 15 minutes check the Deployment\nthanks", create("*/15 * * * *", "check the Deployment")),
            ("please, every 5 minute: say hi", create("*/5 * * * *", ": say hi")),
            ("list my loops", Some(("loop_list", json!({})))),
            ("Cancel loop 3 now", Some(("loop_cancel", json!({"id": 3})))),
            ("every 0 minutes ping", None),
            ("every 60 minutes ping", None),
            ("every 5 hours ping", None),
            ("every 5 minutes", None),
            ("cancel loop x", None),
            ("everyone, hello", None),
            ("ünïcödé every 2 minutes ß ok", create("*/2 * * * *", "ß ok")),
        ];
        for (text, expected) in cases {
            assert_eq!(loop_request(text), expected, "{text}");
        }
        let steps = plan_turn(&parse_words("every 1 minutes ping"), &ctx("every 1 minutes ping", &[]));
        assert_eq!(
            steps,
            vec![
                Step::CallTool {
                    tool: "loop_create".into(),
                    arguments: json!({"cron": "* * * * *", "prompt": "ping"})
                },
                Step::Finish(StopReason::EndTurn),
            ]
        );
    }
}
