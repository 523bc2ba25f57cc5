//! The ACP client protocol as a state machine: core requests in, JSON lines out; agent lines
//! in, core events (and any lines we must answer with) out. No I/O, so every exchange is
//! tested with tables of lines.
//!
//! Wire shapes live only here. Unknown methods, update kinds and fields are tolerated: agents
//! add to the protocol faster than we do.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::event::{AgentCommand, AgentEvent, AgentRequest, SessionKey, TurnOutcome};

/// The protocol version we speak.
pub const PROTOCOL_VERSION: u64 = 1;

/// JSON-RPC "method not found".
const METHOD_NOT_FOUND: i64 = -32601;

/// What one step produced: events for the core and lines to write to the agent's stdin.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub events: Vec<AgentEvent>,
    pub writes: Vec<String>,
}

/// A request of ours the agent has not answered yet.
#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Initialize,
    NewSession { key: SessionKey },
    Prompt { session_id: String },
}

/// One agent connection's protocol state.
#[derive(Debug, Default)]
pub struct Connection {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    ready: bool,
    /// Requests the core sent before `initialize` was answered; sent once it is.
    queued: Vec<AgentRequest>,
}

impl Connection {
    /// The `initialize` request that opens the conversation.
    pub fn start(&mut self) -> Step {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "clientCapabilities": {},
            "clientInfo": {"name": "tether", "version": env!("CARGO_PKG_VERSION")},
        });
        Step { events: Vec::new(), writes: vec![self.call(Pending::Initialize, "initialize", params)] }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Encode a core request; held back until the agent is initialized.
    pub fn request(&mut self, req: AgentRequest) -> Step {
        if !self.ready {
            self.queued.push(req);
            return Step::default();
        }
        let line = match req {
            AgentRequest::NewSession { key, cwd } => {
                let params = json!({"cwd": cwd, "mcpServers": []});
                self.call(Pending::NewSession { key }, "session/new", params)
            }
            AgentRequest::Prompt { session_id, text } => {
                let params = json!({
                    "sessionId": session_id,
                    "prompt": [{"type": "text", "text": text}],
                });
                self.call(Pending::Prompt { session_id }, "session/prompt", params)
            }
            AgentRequest::Cancel { session_id } => notification("session/cancel", json!({"sessionId": session_id})),
        };
        Step { events: Vec::new(), writes: vec![line] }
    }

    /// Decode one line from the agent's stdout.
    pub fn receive(&mut self, line: &str) -> Step {
        let line = line.trim();
        if line.is_empty() {
            return Step::default();
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                log::warn!(target: "acp", "ignoring a line that is not JSON ({e}): {}", preview(line));
                return Step::default();
            }
        };
        let method = msg.get("method").and_then(Value::as_str);
        let id = msg.get("id").filter(|id| !id.is_null());
        match (method, id) {
            (Some(method), Some(id)) => self.agent_request(method, id.clone(), &msg),
            (Some(method), None) => Step { events: agent_notification(method, &msg), writes: Vec::new() },
            (None, Some(id)) => self.response(id, &msg),
            (None, None) => {
                log::warn!(target: "acp", "ignoring a message with neither method nor id: {}", preview(line));
                Step::default()
            }
        }
    }

    fn call(&mut self, pending: Pending, method: &str, params: Value) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
    }

    fn response(&mut self, id: &Value, msg: &Value) -> Step {
        let Some(pending) = id.as_u64().and_then(|id| self.pending.remove(&id)) else {
            log::warn!(target: "acp", "ignoring a response to an unknown request id {id}");
            return Step::default();
        };
        let result = match msg.get("error") {
            Some(error) => Err(describe_error(error)),
            None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
        };
        let mut step = Step::default();
        match (pending, result) {
            (Pending::Initialize, Ok(result)) => {
                self.ready = true;
                let load_session =
                    result.pointer("/agentCapabilities/loadSession").and_then(Value::as_bool).unwrap_or(false);
                step.events.push(AgentEvent::Ready { load_session });
                for req in std::mem::take(&mut self.queued) {
                    step.writes.extend(self.request(req).writes);
                }
            }
            (Pending::Initialize, Err(error)) => {
                step.events.push(AgentEvent::Exited { reason: format!("initialize failed: {error}") });
            }
            (Pending::NewSession { key }, Ok(result)) => match result.get("sessionId").and_then(Value::as_str) {
                Some(session_id) => {
                    step.events.push(AgentEvent::SessionCreated { key, session_id: session_id.to_string() })
                }
                None => step.events.push(AgentEvent::SessionFailed {
                    key,
                    error: "session/new answered without a sessionId".to_string(),
                }),
            },
            (Pending::NewSession { key }, Err(error)) => {
                step.events.push(AgentEvent::SessionFailed { key, error });
            }
            (Pending::Prompt { session_id }, Ok(result)) => {
                let reason = result.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                step.events.push(AgentEvent::TurnEnded { session_id, outcome: stop_reason(reason) });
            }
            (Pending::Prompt { session_id }, Err(error)) => {
                step.events.push(AgentEvent::TurnEnded { session_id, outcome: TurnOutcome::Failed(error) });
            }
        }
        step
    }

    fn agent_request(&mut self, method: &str, id: Value, msg: &Value) -> Step {
        let reply = match method {
            // Until permissions are relayed to chat, refuse: never approve silently.
            "session/request_permission" => {
                log::warn!(target: "acp", "agent asked for a tool permission; refusing (no relay configured)");
                json!({"jsonrpc": "2.0", "id": id, "result": {"outcome": {"outcome": "cancelled"}}})
            }
            _ => {
                log::debug!(target: "acp", "agent called unknown method {method}: answering -32601");
                let _ = msg;
                json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": METHOD_NOT_FOUND,
                    "message": format!("Method not found: {method}"),
                }})
            }
        };
        Step { events: Vec::new(), writes: vec![reply.to_string()] }
    }
}

fn agent_notification(method: &str, msg: &Value) -> Vec<AgentEvent> {
    if method != "session/update" {
        return Vec::new();
    }
    let params = msg.get("params").unwrap_or(&Value::Null);
    let Some(session_id) = params.get("sessionId").and_then(Value::as_str) else {
        return Vec::new();
    };
    let update = params.get("update").unwrap_or(&Value::Null);
    match update.get("sessionUpdate").and_then(Value::as_str) {
        Some("agent_message_chunk") => {
            let content = update.get("content").unwrap_or(&Value::Null);
            match (content.get("type").and_then(Value::as_str), content.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(text)) if !text.is_empty() => {
                    vec![AgentEvent::TextChunk { session_id: session_id.to_string(), text: text.to_string() }]
                }
                _ => Vec::new(),
            }
        }
        Some("available_commands_update") => {
            let commands = update.get("availableCommands").and_then(Value::as_array).map(Vec::as_slice);
            let commands = commands.unwrap_or_default().iter().filter_map(agent_command).collect();
            vec![AgentEvent::CommandsAvailable { session_id: session_id.to_string(), commands }]
        }
        _ => Vec::new(),
    }
}

/// One entry of `availableCommands`; entries without a usable name are skipped.
fn agent_command(entry: &Value) -> Option<AgentCommand> {
    let name = entry.get("name").and_then(Value::as_str)?.trim().trim_start_matches('/');
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return None;
    }
    let description = entry.get("description").and_then(Value::as_str).unwrap_or("").trim();
    Some(AgentCommand { name: name.to_string(), description: description.to_string() })
}

fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

fn stop_reason(reason: &str) -> TurnOutcome {
    match reason {
        "end_turn" => TurnOutcome::EndTurn,
        "max_tokens" => TurnOutcome::MaxTokens,
        "max_turn_requests" => TurnOutcome::MaxTurnRequests,
        "refusal" => TurnOutcome::Refusal,
        "cancelled" => TurnOutcome::Cancelled,
        other => TurnOutcome::Other(other.to_string()),
    }
}

/// A JSON-RPC error object as one line for logs and users: code, message, and the details
/// agents tuck into `data`.
fn describe_error(error: &Value) -> String {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
    match error.get("data").and_then(|d| d.get("details")).and_then(Value::as_str) {
        Some(details) => format!("{message} ({code}): {details}"),
        None => format!("{message} ({code})"),
    }
}

/// The start of a long line, for logs.
fn preview(line: &str) -> String {
    let mut s: String = line.chars().take(200).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ready() -> Connection {
        let mut c = Connection::default();
        c.start();
        c.receive(
            r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":1,"agentCapabilities":{"loadSession":true}}}"#,
        );
        c
    }

    fn lines(step: &Step) -> Vec<Value> {
        step.writes.iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn initialize_then_queued_requests_flow() {
        let mut c = Connection::default();
        let start = c.start();
        let init = &lines(&start)[0];
        assert_eq!(init["method"], "initialize");
        assert_eq!(init["params"]["protocolVersion"], 1);
        assert_eq!(init["params"]["clientInfo"]["name"], "tether");

        let held = c.request(AgentRequest::NewSession { key: "k".into(), cwd: PathBuf::from("/w") });
        assert!(held.writes.is_empty(), "nothing is sent before initialize is answered");

        let step = c.receive(r#"{"jsonrpc":"2.0","id":0,"result":{"agentCapabilities":{"loadSession":true}}}"#);
        assert_eq!(step.events, vec![AgentEvent::Ready { load_session: true }]);
        let sent = lines(&step);
        assert_eq!(sent[0]["method"], "session/new");
        assert_eq!(sent[0]["params"]["cwd"], "/w");
        assert_eq!(sent[0]["params"]["mcpServers"], json!([]));
    }

    #[test]
    fn table_of_agent_lines() {
        // (line from the agent, expected events, expected number of lines written back)
        let cases: Vec<(&str, Vec<AgentEvent>, usize)> = vec![
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"hi"}}}}"#,
                vec![AgentEvent::TextChunk { session_id: "s".into(), text: "hi".into() }],
                0,
            ),
            // Empty chunks (qwen sends one carrying usage) and non-text content are not text.
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":""},"_meta":{"usage":{}}}}}"#,
                vec![],
                0,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"agent_message_chunk","content":{"type":"image","data":"AA=="}}}}"#,
                vec![],
                0,
            ),
            // Unknown update kinds and unknown notifications are ignored.
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"future_kind"}}}"#,
                vec![],
                0,
            ),
            (r#"{"jsonrpc":"2.0","method":"qwen/notify/session/mode-update","params":{"v":1}}"#, vec![], 0),
            // The agent's slash commands: a whole list each time; nameless entries skipped.
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"available_commands_update","availableCommands":[{"name":"summary","description":"Summarise","input":null},{"name":"/joke"},{"description":"no name"},{"name":"two words"}]}}}"#,
                vec![AgentEvent::CommandsAvailable {
                    session_id: "s".into(),
                    commands: vec![
                        AgentCommand { name: "summary".into(), description: "Summarise".into() },
                        AgentCommand { name: "joke".into(), description: String::new() },
                    ],
                }],
                0,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{"sessionUpdate":"available_commands_update","availableCommands":[]}}}"#,
                vec![AgentEvent::CommandsAvailable { session_id: "s".into(), commands: vec![] }],
                0,
            ),
            // Not JSON, or neither request nor response: ignored.
            ("garbage", vec![], 0),
            ("{}", vec![], 0),
            // A response to nothing we asked.
            (r#"{"jsonrpc":"2.0","id":99,"result":{}}"#, vec![], 0),
            // Non-spec agent requests get -32601.
            (r#"{"jsonrpc":"2.0","id":1,"method":"craft/drainMidTurnQueue","params":{}}"#, vec![], 1),
        ];
        for (line, events, n_writes) in cases {
            let mut c = ready();
            let step = c.receive(line);
            assert_eq!(step.events, events, "line: {line}");
            assert_eq!(step.writes.len(), n_writes, "line: {line}");
        }
    }

    #[test]
    fn unknown_method_is_answered_method_not_found_with_its_id() {
        let mut c = ready();
        let step = c.receive(r#"{"jsonrpc":"2.0","id":"x7","method":"craft/drainMidTurnQueue","params":{}}"#);
        let reply = &lines(&step)[0];
        assert_eq!(reply["id"], "x7");
        assert_eq!(reply["error"]["code"], -32601);
    }

    #[test]
    fn permission_requests_are_refused_not_approved() {
        let mut c = ready();
        let step = c.receive(r#"{"jsonrpc":"2.0","id":0,"method":"session/request_permission","params":{"sessionId":"s","options":[{"optionId":"proceed_once","kind":"allow_once","name":"Allow"}],"toolCall":{"toolCallId":"t"}}}"#);
        assert_eq!(lines(&step)[0]["result"]["outcome"]["outcome"], "cancelled");
    }

    #[test]
    fn session_and_prompt_responses() {
        let mut c = ready();
        let step = c.request(AgentRequest::NewSession { key: "tg:1:1".into(), cwd: PathBuf::from("/w") });
        let id = lines(&step)[0]["id"].as_u64().unwrap();
        let step = c.receive(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"sessionId":"abc"}}}}"#));
        assert_eq!(step.events, vec![AgentEvent::SessionCreated { key: "tg:1:1".into(), session_id: "abc".into() }]);

        let step = c.request(AgentRequest::Prompt { session_id: "abc".into(), text: "hello".into() });
        let sent = &lines(&step)[0];
        assert_eq!(sent["params"]["prompt"][0]["text"], "hello");
        let id = sent["id"].as_u64().unwrap();
        let step = c.receive(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"stopReason":"cancelled"}}}}"#));
        assert_eq!(
            step.events,
            vec![AgentEvent::TurnEnded { session_id: "abc".into(), outcome: TurnOutcome::Cancelled }]
        );

        let step = c.request(AgentRequest::Prompt { session_id: "abc".into(), text: "again".into() });
        let id = lines(&step)[0]["id"].as_u64().unwrap();
        let step = c.receive(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"Internal error","data":{{"details":"boom"}}}}}}"#
        ));
        assert_eq!(
            step.events,
            vec![AgentEvent::TurnEnded {
                session_id: "abc".into(),
                outcome: TurnOutcome::Failed("Internal error (-32603): boom".into())
            }]
        );
    }

    #[test]
    fn session_new_errors_carry_the_agent_message() {
        let mut c = ready();
        let step = c.request(AgentRequest::NewSession { key: "k".into(), cwd: PathBuf::from("/w") });
        let id = lines(&step)[0]["id"].as_u64().unwrap();
        let step = c.receive(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32000,"message":"Authentication required: Use Qwen Code CLI to authenticate first."}}}}"#
        ));
        assert_eq!(
            step.events,
            vec![AgentEvent::SessionFailed {
                key: "k".into(),
                error: "Authentication required: Use Qwen Code CLI to authenticate first. (-32000)".into()
            }]
        );
    }

    #[test]
    fn cancel_is_a_notification() {
        let mut c = ready();
        let step = c.request(AgentRequest::Cancel { session_id: "abc".into() });
        let sent = &lines(&step)[0];
        assert_eq!(sent["method"], "session/cancel");
        assert!(sent.get("id").is_none());
    }
}
