//! The demo agent's protocol state machine: JSON-RPC lines and the clock in; protocol lines,
//! log lines and an exit request out. Its only I/O is the optional state directory's session
//! files (through [`Store`]).

use crate::vec_map::VecMap;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::script::{self, Step, StopReason, TurnContext};
use super::store::{Entry, Role, SessionRecord, Store, session_id_for};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
const AUTH_REQUIRED: i64 = -32000;

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One protocol line for stdout (without the newline).
    Line(String),
    /// One diagnostic line for stderr (without the `demo-agent:` prefix).
    Log(String),
    /// Exit the process now with this status; nothing else follows.
    Exit(i32),
    /// Call `tool` of this MCP server (start it, initialize, `tools/call`, stop it) and hand
    /// the result to [`DemoAgent::tool_result`] with `ticket`.
    CallTool { ticket: u64, server: McpServer, tool: String, arguments: Value },
}

/// A stdio MCP server the client gave a session (`mcpServers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The first stdio server of `mcpServers` (one with a `command`).
fn stdio_server(params: &Value) -> Option<McpServer> {
    let servers = params.get("mcpServers")?.as_array()?;
    let server = servers.iter().find(|s| s.get("command").and_then(Value::as_str).is_some())?;
    let strings = |v: Option<&Value>| -> Vec<Value> { v.and_then(Value::as_array).cloned().unwrap_or_default() };
    Some(McpServer {
        command: server.get("command")?.as_str()?.to_string(),
        args: strings(server.get("args")).iter().filter_map(|a| a.as_str().map(str::to_string)).collect(),
        env: strings(server.get("env"))
            .iter()
            .filter_map(|e| Some((e.get("name")?.as_str()?.to_string(), e.get("value")?.as_str()?.to_string())))
            .collect(),
    })
}

/// Said when a turn asks for a loop and the session has no MCP server to make it with.
pub const NO_MCP: &str = "I cannot schedule anything here: the client gave this session no MCP server.";

/// How the demo agent was started (from the command line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Keep session files here, so a restarted agent can load them.
    pub state_dir: Option<PathBuf>,
    /// Pause between the chunks of ordinary answers.
    pub chunk_delay: Duration,
    /// Answer `initialize` with an error.
    pub fail_init: bool,
    /// Fail `session/new` and `session/load` with "Authentication required".
    pub auth_required: bool,
    /// Advertise `promptCapabilities.image` and describe the image blocks received.
    pub images: bool,
}

/// The demo agent: all sessions, running turns and requests awaiting the client's answer.
pub struct DemoAgent {
    settings: Settings,
    store: Option<Store>,
    sessions: VecMap<String, Session>,
    next_session_number: u64,
    /// Ids of our own requests to the client, from 0 like qwen.
    next_request_id: u64,
    turns_started: u64,
    /// Our requests the client has not answered yet, with their ids (unique: a counter). A few
    /// at most, so a list: a map type costs kilobytes of code in the binary.
    pending: Vec<(u64, Pending)>,
    /// Set once a `crash` turn asked the driver to exit: nothing more is produced.
    exited: bool,
    /// Tickets of [`Output::CallTool`].
    next_tool_call: u64,
}

struct Session {
    record: SessionRecord,
    turn: Option<Turn>,
    /// Its MCP server (from session/new or session/load).
    mcp: Option<McpServer>,
}

/// A running `session/prompt`.
struct Turn {
    request_id: Value,
    steps: VecDeque<Step>,
    /// The next step may not run before this.
    wake_at: Option<Instant>,
    waiting: Wait,
    /// Answer text streamed so far (goes into the history when the turn ends).
    answer: String,
    /// A tool call still awaiting permission: reported failed if the turn is cancelled.
    open_tool_call: Option<String>,
}

enum Wait {
    Nothing,
    /// For the client's answer to our request with this id.
    Reply(u64),
    /// Forever (a `hang` turn): only `session/cancel` ends it.
    Forever,
    /// For the result of [`Output::CallTool`] with this ticket.
    Tool(u64),
}

struct Pending {
    session_id: String,
    kind: PendingKind,
}

enum PendingKind {
    Permission { tool_call_id: String },
    Ext,
}

/// How a turn ends from outside its script.
enum TurnEnd {
    Stop(StopReason),
    /// A second prompt arrived on the same session (qwen answers the first with -32603).
    Superseded,
}

/// Collects outputs.
#[derive(Default)]
struct Out {
    items: Vec<Output>,
}

impl Out {
    fn send(&mut self, message: Value) {
        self.items.push(Output::Line(message.to_string()));
    }

    fn result(&mut self, id: Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn error(&mut self, id: Value, code: i64, message: &str, data: Option<Value>) {
        let mut error = json!({"code": code, "message": message});
        if let Some(data) = data {
            error["data"] = data;
        }
        self.send(json!({"jsonrpc": "2.0", "id": id, "error": error}));
    }

    fn request(&mut self, id: u64, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    }

    fn update(&mut self, session_id: &str, update: Value) {
        self.send(json!({
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session_id, "update": update},
        }));
    }

    fn log(&mut self, message: impl Into<String>) {
        self.items.push(Output::Log(message.into()));
    }
}

/// At most `max` characters of `text`, on one line, for logs.
fn short(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max).collect();
    cut.push('…');
    cut
}

/// `[image <mimeType> <n> bytes]` for an image block (`[image <mimeType> undecodable]` when
/// its data is not base64).
fn describe_image(block: &Value) -> Option<String> {
    if block.get("type").and_then(Value::as_str) != Some("image") {
        return None;
    }
    let mime = block.get("mimeType").and_then(Value::as_str).unwrap_or("?");
    let data = block.get("data").and_then(Value::as_str).unwrap_or_default();
    Some(match crate::adapters::webchat::decode_base64(data) {
        Some(bytes) => format!("[image {mime} {} bytes]", bytes.len()),
        None => format!("[image {mime} undecodable]"),
    })
}

fn text_chunk(kind: &str, text: &str) -> Value {
    json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}})
}

fn persist(store: Option<&Store>, record: &SessionRecord, out: &mut Out) {
    if let Some(store) = store
        && let Err(e) = store.save(record)
    {
        out.log(e);
    }
}

/// The `cwd` param, which must be an absolute path.
fn required_cwd(params: &Value) -> Result<String, String> {
    match params.get("cwd") {
        None | Some(Value::Null) => Err("cwd is missing: pass the session's absolute working directory".into()),
        Some(Value::String(cwd)) if cwd.starts_with('/') => Ok(cwd.clone()),
        Some(other) => Err(format!("cwd must be an absolute path, got {other}")),
    }
}

fn auth_methods() -> Value {
    json!([{
        "id": "demo-login",
        "name": "Demo login",
        "description": "The demo agent was started with --auth-required; start it without that option",
        "_meta": {"type": "terminal", "args": ["--auth-type=demo"]},
    }])
}

impl DemoAgent {
    pub fn new(settings: Settings) -> DemoAgent {
        let store = settings.state_dir.clone().map(Store::new);
        DemoAgent {
            settings,
            store,
            sessions: VecMap::new(),
            next_session_number: 1,
            next_request_id: 0,
            turns_started: 0,
            pending: Vec::new(),
            exited: false,
            next_tool_call: 1,
        }
    }

    /// Handle one line from the client (without its newline) at time `now`.
    pub fn handle_line(&mut self, line: &str, now: Instant) -> Vec<Output> {
        let mut out = Out::default();
        if self.exited {
            return out.items;
        }
        let line = line.trim();
        if line.is_empty() {
            return out.items;
        }
        match serde_json::from_slice::<Value>(line.as_bytes()) {
            Err(e) => {
                out.log(format!("cannot parse a line from the client: {e}"));
                let data = json!({"details": e.to_string()});
                out.error(Value::Null, PARSE_ERROR, "Parse error", Some(data));
            }
            Ok(Value::Object(message)) => self.handle_message(message, now, &mut out),
            Ok(_) => {
                out.log("the client sent a JSON value that is not an object (batches are not supported)");
                out.error(Value::Null, INVALID_REQUEST, "Invalid Request", None);
            }
        }
        out.items
    }

    /// Run the turns whose next step is due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Out::default();
        let due: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.turn
                    .as_ref()
                    .is_some_and(|t| matches!(t.waiting, Wait::Nothing) && t.wake_at.is_none_or(|at| at <= now))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in due {
            if self.exited {
                break;
            }
            self.advance(&session_id, now, &mut out);
        }
        out.items
    }

    /// When [`DemoAgent::tick`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        self.sessions
            .values()
            .filter_map(|s| s.turn.as_ref())
            .filter(|t| matches!(t.waiting, Wait::Nothing))
            .filter_map(|t| t.wake_at)
            .min()
    }

    fn handle_message(&mut self, message: Map<String, Value>, now: Instant, out: &mut Out) {
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        let method = message.get("method").and_then(Value::as_str);
        match (method, message.get("id")) {
            (Some(method), Some(id)) => self.handle_request(method, id.clone(), &params, now, out),
            (Some(method), None) => self.handle_notification(method, &params, now, out),
            (None, Some(id)) => self.handle_response(id, &message, now, out),
            (None, None) => {
                out.log("the client sent an object with neither method nor id");
                out.error(Value::Null, INVALID_REQUEST, "Invalid Request", None);
            }
        }
    }

    fn handle_request(&mut self, method: &str, id: Value, params: &Value, now: Instant, out: &mut Out) {
        match method {
            "initialize" => self.initialize(id, out),
            "session/new" => self.new_session(id, params, out),
            "session/load" => self.load_session(id, params, out),
            "session/prompt" => self.prompt(id, params, now, out),
            "session/cancel" => {
                self.cancel(params, out);
                out.result(id, Value::Null);
            }
            "session/set_config_option" => self.set_config_option(id, params, out),
            _ => {
                out.log(format!("unknown method {method}: answering -32601"));
                out.error(id, METHOD_NOT_FOUND, &format!("Method not found: {method}"), None);
            }
        }
    }

    fn handle_notification(&mut self, method: &str, params: &Value, _now: Instant, out: &mut Out) {
        match method {
            "session/cancel" => self.cancel(params, out),
            _ => out.log(format!("ignoring notification {method}")),
        }
    }

    fn initialize(&mut self, id: Value, out: &mut Out) {
        if self.settings.fail_init {
            out.log("initialize: failing as asked (--fail-init)");
            let data = json!({"details": "initialize failure requested (--fail-init)"});
            out.error(id, INTERNAL_ERROR, "Internal error", Some(data));
            return;
        }
        let auth = if self.settings.auth_required { auth_methods() } else { json!([]) };
        out.log("initialize");
        out.result(
            id,
            json!({
                "protocolVersion": 1,
                "agentCapabilities": {
                    "loadSession": true,
                    "promptCapabilities": {"image": self.settings.images, "audio": false, "embeddedContext": false},
                    "mcpCapabilities": {},
                },
                "agentInfo": {"name": "tether-demo-agent", "version": env!("CARGO_PKG_VERSION")},
                "authMethods": auth,
            }),
        );
    }

    /// Answer -32000 when started with `--auth-required`; true if it did.
    fn refuse_without_auth(&self, id: &Value, method: &str, out: &mut Out) -> bool {
        if !self.settings.auth_required {
            return false;
        }
        out.log(format!("{method}: authentication required (--auth-required)"));
        let data = json!({"authMethods": auth_methods()});
        out.error(id.clone(), AUTH_REQUIRED, "Authentication required", Some(data));
        true
    }

    fn new_session(&mut self, id: Value, params: &Value, out: &mut Out) {
        if self.refuse_without_auth(&id, "session/new", out) {
            return;
        }
        let cwd = match required_cwd(params) {
            Ok(cwd) => cwd,
            Err(details) => {
                out.log(format!("session/new: {details}"));
                out.error(id, INVALID_PARAMS, "Invalid params", Some(json!({"details": details})));
                return;
            }
        };
        let number = match &self.store {
            None => self.next_session_number,
            Some(store) => match store.claim(self.next_session_number) {
                Ok(number) => number,
                Err(e) => {
                    out.log(format!("session/new: {e}"));
                    out.error(id, INTERNAL_ERROR, "Internal error", Some(json!({"details": e})));
                    return;
                }
            },
        };
        self.next_session_number = number + 1;
        let session_id = session_id_for(number);
        let record = SessionRecord {
            session_id: session_id.clone(),
            cwd,
            history: Vec::new(),
            model: super::store::default_model(),
        };
        persist(self.store.as_ref(), &record, out);
        out.log(format!("session {session_id} created in {}", record.cwd));
        let mcp = stdio_server(params);
        self.sessions.insert(session_id.clone(), Session { record, turn: None, mcp });
        let options = script::config_options(&record_model(&self.sessions, &session_id));
        out.result(id, json!({"sessionId": session_id, "configOptions": options}));
        out.update(
            &session_id,
            json!({"sessionUpdate": "available_commands_update", "availableCommands": script::available_commands()}),
        );
    }

    /// `session/set_config_option` for the one option there is, `model`.
    fn set_config_option(&mut self, id: Value, params: &Value, out: &mut Out) {
        let session_id = params.get("sessionId").and_then(Value::as_str).unwrap_or_default();
        let config_id = params.get("configId").and_then(Value::as_str).unwrap_or_default();
        let value = params.get("value").and_then(Value::as_str).unwrap_or_default();
        let model = value.strip_prefix("demo|").unwrap_or(value);
        let Some(session) = self.sessions.get_mut(session_id) else {
            out.error(id, INVALID_PARAMS, &format!("Session not found: {session_id}"), None);
            return;
        };
        if config_id != "model" || !script::MODELS.contains(&model) {
            let details = format!("unknown option {config_id}={value}; models: {}", script::MODELS.join(", "));
            out.log(format!("session/set_config_option: {details}"));
            out.error(id, INVALID_PARAMS, "Invalid params", Some(json!({"details": details})));
            return;
        }
        session.record.model = model.to_string();
        persist(self.store.as_ref(), &session.record, out);
        out.log(format!("session {session_id}: model {model}"));
        out.result(id, json!({"configOptions": script::config_options(model)}));
    }

    fn load_session(&mut self, id: Value, params: &Value, out: &mut Out) {
        if self.refuse_without_auth(&id, "session/load", out) {
            return;
        }
        let Some(session_id) = params.get("sessionId").and_then(Value::as_str) else {
            let data = json!({"details": "sessionId is missing"});
            out.error(id, INVALID_PARAMS, "Invalid params", Some(data));
            return;
        };
        let cwd = match required_cwd(params) {
            Ok(cwd) => cwd,
            Err(details) => {
                out.log(format!("session/load: {details}"));
                out.error(id, INVALID_PARAMS, "Invalid params", Some(json!({"details": details})));
                return;
            }
        };
        if !self.sessions.contains_key(session_id)
            && let Some(store) = &self.store
        {
            match store.load(session_id) {
                Ok(Some(record)) => {
                    self.sessions.insert(session_id.to_string(), Session { record, turn: None, mcp: None });
                }
                Ok(None) => {}
                Err(e) => {
                    out.log(format!("session/load: {e}"));
                    out.error(id, INTERNAL_ERROR, "Internal error", Some(json!({"details": e})));
                    return;
                }
            }
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            out.log(format!("session/load: no session {session_id}"));
            out.error(id, INVALID_PARAMS, &format!("Session not found: {session_id}"), None);
            return;
        };
        session.record.cwd = cwd;
        session.mcp = stdio_server(params);
        for entry in &session.record.history {
            let kind = match entry.role {
                Role::User => "user_message_chunk",
                Role::Agent => "agent_message_chunk",
            };
            out.update(session_id, text_chunk(kind, &entry.text));
        }
        out.log(format!("session {session_id} loaded: replayed {} entries", session.record.history.len()));
        out.result(id, Value::Null);
    }

    fn prompt(&mut self, id: Value, params: &Value, now: Instant, out: &mut Out) {
        let Some(session_id) = params.get("sessionId").and_then(Value::as_str) else {
            let data = json!({"details": "sessionId is missing"});
            out.error(id, INVALID_PARAMS, "Invalid params", Some(data));
            return;
        };
        let Some(blocks) = params.get("prompt").and_then(Value::as_array) else {
            let data = json!({"details": "prompt must be an array of content blocks"});
            out.error(id, INVALID_PARAMS, "Invalid params", Some(data));
            return;
        };
        if !self.sessions.contains_key(session_id) {
            out.log(format!("session/prompt: no session {session_id}"));
            let data = json!({"details": format!("Session not found: {session_id}")});
            out.error(id, INTERNAL_ERROR, "Internal error", Some(data));
            return;
        }
        let session_id = session_id.to_string();
        let text = blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n");
        let words = script::parse_words(&text);
        // Image blocks are described after the text ("[image image/png 1234 bytes]"), so
        // the echo shows what arrived, in order.
        let images: Vec<String> = blocks.iter().filter_map(describe_image).collect();
        let text = if images.is_empty() { text } else { format!("{text} {}", images.join(" ")) };
        if self.sessions.get(&session_id).is_some_and(|s| s.turn.is_some()) {
            out.log(format!("session {session_id}: a new prompt supersedes the running one"));
            self.end_turn(&session_id, TurnEnd::Superseded, out);
        }
        self.turns_started += 1;
        let turn_number = self.turns_started;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        out.log(format!("session {session_id}: prompt {}: {}", id, short(&text, 60)));
        let steps = (!words.error).then(|| {
            let ctx = TurnContext {
                prompt_text: &text,
                cwd: &session.record.cwd,
                history: &session.record.history,
                model: &session.record.model,
                chunk_delay: self.settings.chunk_delay,
                turn_number,
            };
            script::plan_turn(&words, &ctx)
        });
        session.record.history.push(Entry { role: Role::User, text });
        persist(self.store.as_ref(), &session.record, out);
        let Some(steps) = steps else {
            out.log(format!("session {session_id}: answering the prompt with an error as asked"));
            let data = json!({"details": "demo error requested"});
            out.error(id, INTERNAL_ERROR, "Internal error", Some(data));
            return;
        };
        session.turn = Some(Turn {
            request_id: id,
            steps: steps.into(),
            wake_at: None,
            waiting: Wait::Nothing,
            answer: String::new(),
            open_tool_call: None,
        });
        self.advance(&session_id, now, out);
    }

    fn cancel(&mut self, params: &Value, out: &mut Out) {
        let Some(session_id) = params.get("sessionId").and_then(Value::as_str) else {
            out.log("session/cancel without a sessionId: ignored");
            return;
        };
        if self.sessions.get(session_id).is_some_and(|s| s.turn.is_some()) {
            out.log(format!("session {session_id}: cancelled"));
            self.end_turn(session_id, TurnEnd::Stop(StopReason::Cancelled), out);
        } else {
            out.log(format!("session/cancel for {session_id}: no running turn"));
        }
    }

    /// Run the session's turn until it waits, pauses or ends.
    fn advance(&mut self, session_id: &str, now: Instant, out: &mut Out) {
        loop {
            let Some(session) = self.sessions.get_mut(session_id) else { return };
            let mcp = &session.mcp;
            let Some(turn) = session.turn.as_mut() else {
                return;
            };
            if !matches!(turn.waiting, Wait::Nothing) {
                return;
            }
            if let Some(at) = turn.wake_at {
                if at > now {
                    return;
                }
                turn.wake_at = None;
            }
            let step = turn.steps.pop_front().unwrap_or(Step::Finish(StopReason::EndTurn));
            match step {
                Step::Update(update) => out.update(session_id, update),
                Step::Text(text) => {
                    out.update(session_id, text_chunk("agent_message_chunk", &text));
                    turn.answer.push_str(&text);
                }
                Step::Break => {
                    if !turn.answer.is_empty() {
                        out.update(session_id, text_chunk("agent_message_chunk", "\n\n"));
                        turn.answer.push_str("\n\n");
                    }
                }
                Step::Pause(pause) => turn.wake_at = Some(now + pause),
                Step::AskPermission { tool_call_id } => {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    turn.waiting = Wait::Reply(request_id);
                    turn.open_tool_call = Some(tool_call_id.clone());
                    let params = script::permission_params(session_id, &tool_call_id);
                    let kind = PendingKind::Permission { tool_call_id };
                    let pending = Pending { session_id: session_id.to_string(), kind };
                    self.pending.push((request_id, pending));
                    out.request(request_id, "session/request_permission", params);
                }
                Step::AskExt => {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    turn.waiting = Wait::Reply(request_id);
                    let pending = Pending { session_id: session_id.to_string(), kind: PendingKind::Ext };
                    self.pending.push((request_id, pending));
                    let params = json!({"sessionId": session_id, "todoStopGuardWatchQueuedPrompt": true});
                    out.request(request_id, script::EXT_METHOD, params);
                }
                Step::Crash => {
                    out.log("crashing as asked: exit status 3 in the middle of a turn");
                    out.items.push(Output::Exit(3));
                    self.exited = true;
                    return;
                }
                Step::Hang => {
                    out.log(format!("session {session_id}: hanging until cancelled, as asked"));
                    turn.waiting = Wait::Forever;
                }
                Step::CallTool { tool, arguments } => match mcp {
                    Some(server) => {
                        let ticket = self.next_tool_call;
                        self.next_tool_call += 1;
                        turn.waiting = Wait::Tool(ticket);
                        out.log(format!("session {session_id}: calling MCP tool {tool} (call {ticket})"));
                        out.items.push(Output::CallTool { ticket, server: server.clone(), tool, arguments });
                    }
                    None => {
                        out.update(session_id, text_chunk("agent_message_chunk", NO_MCP));
                        turn.answer.push_str(NO_MCP);
                    }
                },
                Step::Finish(reason) => self.end_turn(session_id, TurnEnd::Stop(reason), out),
            }
        }
    }

    /// End the session's running turn: abandon its requests, keep its answer, answer the prompt.
    fn end_turn(&mut self, session_id: &str, end: TurnEnd, out: &mut Out) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let Some(turn) = session.turn.take() else {
            return;
        };
        self.pending.retain(|(_, p)| p.session_id != session_id);
        if let Some(tool_call_id) = &turn.open_tool_call {
            let detail = "the turn ended before the permission was answered";
            out.update(session_id, script::tool_call_status_update(tool_call_id, "failed", detail));
        }
        if !turn.answer.is_empty() {
            session.record.history.push(Entry { role: Role::Agent, text: turn.answer });
            persist(self.store.as_ref(), &session.record, out);
        }
        match end {
            TurnEnd::Stop(reason) => {
                out.log(format!("session {session_id}: prompt {} ended: {}", turn.request_id, reason.as_str()));
                out.result(turn.request_id, json!({"stopReason": reason.as_str()}));
            }
            TurnEnd::Superseded => {
                out.log(format!("session {session_id}: prompt {} superseded: -32603", turn.request_id));
                out.error(turn.request_id, INTERNAL_ERROR, "Internal error", Some(json!({})));
            }
        }
    }

    /// The MCP tool call `ticket` ended: its text (or why it failed) is the turn's answer.
    pub fn tool_result(&mut self, ticket: u64, result: Result<String, String>, now: Instant) -> Vec<Output> {
        let mut out = Out::default();
        let waiting = self
            .sessions
            .iter_mut()
            .find(|(_, s)| s.turn.as_ref().is_some_and(|t| matches!(t.waiting, Wait::Tool(n) if n == ticket)));
        let Some((session_id, session)) = waiting else {
            out.log(format!("MCP tool call {ticket} ended after its turn did: result dropped"));
            return out.items;
        };
        let session_id = session_id.clone();
        if let Some(turn) = session.turn.as_mut() {
            let text = match result {
                Ok(text) => text,
                Err(e) => format!("The tool call failed: {e}"),
            };
            turn.steps.push_front(Step::Text(text));
            turn.waiting = Wait::Nothing;
        }
        self.advance(&session_id, now, &mut out);
        out.items
    }

    /// The client answered one of our requests.
    fn handle_response(&mut self, id: &Value, message: &Map<String, Value>, now: Instant, out: &mut Out) {
        let at = id.as_u64().and_then(|n| self.pending.iter().position(|(request_id, _)| *request_id == n));
        let Some(pending) = at.map(|at| self.pending.remove(at)) else {
            out.log(format!("ignoring an answer to request {id}: not waiting for it (abandoned or never sent)"));
            return;
        };
        let (request_id, pending) = pending;
        let error = message.get("error");
        let result = if error.is_some() { None } else { message.get("result") };
        if let Some(error) = error {
            out.log(format!("the client answered request {request_id} with an error: {error}"));
        }
        let session_id = pending.session_id;
        let Some(turn) = self.sessions.get_mut(&session_id).and_then(|s| s.turn.as_mut()) else {
            return;
        };
        if !matches!(turn.waiting, Wait::Reply(n) if n == request_id) {
            return;
        }
        let steps = match pending.kind {
            PendingKind::Permission { tool_call_id } => {
                turn.open_tool_call = None;
                let outcome = script::permission_outcome(result);
                out.log(format!("session {session_id}: permission answer: {outcome:?}"));
                script::permission_steps(&tool_call_id, &outcome)
            }
            PendingKind::Ext => {
                let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
                script::ext_steps(code)
            }
        };
        for step in steps.into_iter().rev() {
            turn.steps.push_front(step);
        }
        turn.waiting = Wait::Nothing;
        self.advance(&session_id, now, out);
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

/// The model of a session the agent knows (the default for an unknown one).
fn record_model(sessions: &VecMap<String, Session>, session_id: &str) -> String {
    sessions.get(session_id).map_or_else(super::store::default_model, |s| s.record.model.clone())
}
