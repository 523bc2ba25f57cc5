//! Unit tests of the demo agent's state machine: JSON lines in, JSON lines out, synthetic clock.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{DemoAgent, McpServer, NO_MCP, Output, Settings};
use crate::demo_agent::store::tests::temp_dir;

struct Harness {
    agent: DemoAgent,
    now: Instant,
    next_id: u64,
    logs: Vec<String>,
    /// MCP tool calls the agent asked the driver to make.
    tool_calls: Vec<(u64, McpServer, String, Value)>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Settings::default())
    }

    fn with(settings: Settings) -> Harness {
        Harness {
            agent: DemoAgent::new(settings),
            now: Instant::now(),
            next_id: 100,
            logs: Vec::new(),
            tool_calls: Vec::new(),
        }
    }

    /// Feed raw text; return every output (Exit included).
    fn raw(&mut self, line: &str) -> Vec<Output> {
        self.agent.handle_line(line, self.now)
    }

    fn lines(&mut self, outputs: Vec<Output>) -> Vec<Value> {
        let mut lines = Vec::new();
        for output in outputs {
            match output {
                Output::Line(line) => {
                    assert!(!line.contains('\n'), "a protocol line holds a newline: {line}");
                    lines.push(serde_json::from_str(&line).unwrap());
                }
                Output::Log(message) => self.logs.push(message),
                Output::Exit(status) => panic!("unexpected exit {status}"),
                Output::CallTool { ticket, server, tool, arguments } => {
                    self.tool_calls.push((ticket, server, tool, arguments))
                }
            }
        }
        lines
    }

    fn send(&mut self, message: Value) -> Vec<Value> {
        let outputs = self.raw(&message.to_string());
        self.lines(outputs)
    }

    fn request(&mut self, method: &str, params: Value) -> (u64, Vec<Value>) {
        self.next_id += 1;
        let id = self.next_id;
        let lines = self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        (id, lines)
    }

    fn notify(&mut self, method: &str, params: Value) -> Vec<Value> {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    /// Move the clock forward and run due timers.
    fn after(&mut self, ms: u64) -> Vec<Value> {
        self.now += Duration::from_millis(ms);
        let outputs = self.agent.tick(self.now);
        self.lines(outputs)
    }

    fn new_session(&mut self) -> String {
        let (id, lines) = self.request("session/new", json!({"cwd": "/ws", "mcpServers": []}));
        result(&lines, id)["sessionId"].as_str().unwrap().to_string()
    }

    fn prompt(&mut self, session_id: &str, text: &str) -> (u64, Vec<Value>) {
        let params = json!({"sessionId": session_id, "prompt": [{"type": "text", "text": text}]});
        self.request("session/prompt", params)
    }

    fn cancel(&mut self, session_id: &str) -> Vec<Value> {
        self.notify("session/cancel", json!({"sessionId": session_id}))
    }

    fn answer(&mut self, id: &Value, result: Value) -> Vec<Value> {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }
}

/// The response to request `id` in `lines` (panics if absent or an error).
fn result(lines: &[Value], id: u64) -> &Value {
    let response = lines.iter().find(|l| l["id"] == id && l.get("method").is_none()).unwrap();
    assert!(response.get("error").is_none(), "error response: {response}");
    &response["result"]
}

fn error(lines: &[Value], id: u64) -> &Value {
    let response = lines.iter().find(|l| l["id"] == id && l.get("method").is_none()).unwrap();
    &response["error"]
}

fn has_response(lines: &[Value], id: u64) -> bool {
    lines.iter().any(|l| l["id"] == id && l.get("method").is_none())
}

fn updates(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["method"] == "session/update").map(|l| &l["params"]["update"]).collect()
}

fn kinds(lines: &[Value]) -> Vec<String> {
    updates(lines).iter().map(|u| u["sessionUpdate"].as_str().unwrap().to_string()).collect()
}

/// The answer text streamed in `lines`.
fn text(lines: &[Value]) -> String {
    updates(lines)
        .iter()
        .filter(|u| u["sessionUpdate"] == "agent_message_chunk")
        .map(|u| u["content"]["text"].as_str().unwrap())
        .collect()
}

fn stop_reason(lines: &[Value], id: u64) -> String {
    result(lines, id)["stopReason"].as_str().unwrap().to_string()
}

/// The first agent→client request in `lines`.
fn outgoing_request(lines: &[Value]) -> &Value {
    lines.iter().find(|l| l.get("method").is_some() && l.get("id").is_some()).unwrap()
}

#[test]
fn initialize_answers_version_capabilities_and_info() {
    let mut h = Harness::new();
    let (id, lines) = h.request("initialize", json!({"protocolVersion": 1, "clientCapabilities": {}}));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["jsonrpc"], "2.0");
    assert_eq!(
        *result(&lines, id),
        json!({
            "protocolVersion": 1,
            "agentCapabilities": {"loadSession": true,
                "promptCapabilities": {"image": false, "audio": false, "embeddedContext": false},
                "mcpCapabilities": {}},
            "agentInfo": {"name": "tether-demo-agent", "version": env!("CARGO_PKG_VERSION")},
            "authMethods": [],
        })
    );
}

#[test]
fn fail_init_answers_initialize_with_an_error() {
    let mut h = Harness::with(Settings { fail_init: true, ..Settings::default() });
    let (id, lines) = h.request("initialize", json!({"protocolVersion": 1}));
    assert_eq!(error(&lines, id)["code"], -32603);
}

#[test]
fn session_new_answers_an_id_then_announces_commands() {
    let mut h = Harness::new();
    let (id, lines) = h.request("session/new", json!({"cwd": "/ws", "mcpServers": []}));
    assert_eq!(lines.len(), 2);
    assert_eq!(result(&lines[..1], id)["sessionId"], "demo-1");
    assert_eq!(result(&lines[..1], id)["configOptions"][0]["category"], "model");
    assert_eq!(lines[1]["params"]["sessionId"], "demo-1");
    let update = &lines[1]["params"]["update"];
    assert_eq!(update["sessionUpdate"], "available_commands_update");
    let names: Vec<&str> =
        update["availableCommands"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["help", "words", "summary", "joke", "model"]);
    assert_eq!(h.new_session(), "demo-2");
}

#[test]
fn model_config_option_is_set_per_session() {
    let mut h = Harness::new();
    let (first, second) = (h.new_session(), h.new_session());
    let params = json!({"sessionId": first, "configId": "model", "value": "demo|demo-fast"});
    let (id, lines) = h.request("session/set_config_option", params);
    assert_eq!(result(&lines, id)["configOptions"][0]["currentValue"], "demo|demo-fast");
    let (_, lines) = h.prompt(&first, "/model");
    assert_eq!(text(&lines), "model: demo-fast");
    let (_, lines) = h.prompt(&second, "/model");
    assert_eq!(text(&lines), "model: demo-standard");
    let bad = json!({"sessionId": second, "configId": "model", "value": "gpt-99"});
    let (id, lines) = h.request("session/set_config_option", bad);
    assert_eq!(error(&lines, id)["code"], -32602);
}

#[test]
fn session_new_rejects_a_missing_or_relative_cwd() {
    let cases = [json!({"mcpServers": []}), json!({"cwd": "ws"}), json!({"cwd": 5}), json!({"cwd": null})];
    for params in cases {
        let mut h = Harness::new();
        let (id, lines) = h.request("session/new", params.clone());
        assert_eq!(lines.len(), 1, "{params}");
        assert_eq!(error(&lines, id)["code"], -32602, "{params}");
        assert!(error(&lines, id)["data"]["details"].as_str().unwrap().contains("cwd"), "{params}");
    }
}

#[test]
fn prompt_streams_the_echo_in_chunks_then_ends_the_turn() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "hello world");
    assert_eq!(kinds(&lines), ["agent_message_chunk"; 3]);
    assert!(updates(&lines).iter().all(|u| u["content"]["type"] == "text"));
    assert!(lines[..3].iter().all(|l| l["params"]["sessionId"] == session.as_str()));
    assert_eq!(text(&lines), "echo: hello world");
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["id"], id);
    assert_eq!(stop_reason(&lines, id), "end_turn");
    assert_eq!(h.agent.next_deadline(), None);
}

#[test]
fn prompt_joins_text_blocks_and_skips_others() {
    let mut h = Harness::new();
    let session = h.new_session();
    let prompt = json!([
        {"type": "text", "text": "one"},
        {"type": "resource_link", "uri": "file:///x", "name": "x"},
        {"type": "text", "text": "two"},
    ]);
    let (id, lines) = h.request("session/prompt", json!({"sessionId": session, "prompt": prompt}));
    assert_eq!(text(&lines), "echo: one\ntwo");
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn image_blocks_are_advertised_on_request_and_described_in_the_echo() {
    let mut h = Harness::with(Settings { images: true, ..Settings::default() });
    let (id, lines) = h.request("initialize", json!({"protocolVersion": 1}));
    assert_eq!(result(&lines, id)["agentCapabilities"]["promptCapabilities"]["image"], true);
    let session = h.new_session();
    let prompt = json!([
        {"type": "text", "text": "what is this?"},
        {"type": "image", "mimeType": "image/png", "data": "cG5nIQ=="},
        {"type": "image", "mimeType": "image/jpeg", "data": "not base64!"},
    ]);
    let (_, lines) = h.request("session/prompt", json!({"sessionId": session, "prompt": prompt}));
    assert_eq!(text(&lines), "echo: what is this? [image image/png 4 bytes] [image image/jpeg undecodable]");
}

#[test]
fn chunk_delay_spreads_the_echo_over_time() {
    let settings = Settings { chunk_delay: Duration::from_millis(50), ..Settings::default() };
    let mut h = Harness::with(settings);
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "abcdef");
    assert_eq!(text(&lines), "echo");
    assert!(!has_response(&lines, id));
    assert_eq!(h.agent.next_deadline(), Some(h.now + Duration::from_millis(50)));
    assert!(h.after(49).is_empty());
    assert_eq!(text(&h.after(1)), ": ab");
    let lines = h.after(50);
    assert_eq!(text(&lines), "cdef");
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn slow_ticks_on_the_clock_and_cancel_stops_it_at_once() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "be SLOW");
    assert_eq!(text(&lines), "tick 0 ");
    assert!(!has_response(&lines, id));
    assert_eq!(h.agent.next_deadline(), Some(h.now + Duration::from_millis(300)));
    assert!(h.after(299).is_empty());
    assert_eq!(text(&h.after(1)), "tick 1 ");
    assert!(h.after(100).is_empty());
    let lines = h.cancel(&session);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(stop_reason(&lines, id), "cancelled");
    assert_eq!(h.agent.next_deadline(), None);
    assert!(h.after(1000).is_empty());
    let (id2, lines) = h.prompt(&session, "again");
    assert_eq!(text(&lines), "echo: again");
    assert_eq!(stop_reason(&lines, id2), "end_turn");
}

#[test]
fn slow_runs_ten_ticks_to_the_end() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, mut lines) = h.prompt(&session, "slow=10");
    for _ in 0..9 {
        lines.extend(h.after(10));
    }
    let want: String = (0..10).map(|i| format!("tick {i} ")).collect();
    assert_eq!(text(&lines), want);
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn error_word_answers_with_internal_error() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "please ERROR now");
    assert_eq!(lines.len(), 1);
    assert_eq!(
        *error(&lines, id),
        json!({"code": -32603, "message": "Internal error", "data": {"details": "demo error requested"}})
    );
    assert_eq!(h.agent.next_deadline(), None);
    let (id2, lines) = h.prompt(&session, "fine");
    assert_eq!(stop_reason(&lines, id2), "end_turn");
}

#[test]
fn stop_reason_words() {
    let cases = [
        ("empty", "", "end_turn"),
        ("refuse", "", "refusal"),
        ("maxtokens", "echo: maxtokens", "max_tokens"),
        ("refuse maxtokens", "", "refusal"),
    ];
    for (prompt, want_text, want_stop) in cases {
        let mut h = Harness::new();
        let session = h.new_session();
        let (id, lines) = h.prompt(&session, prompt);
        assert_eq!(text(&lines), want_text, "{prompt}");
        assert_eq!(stop_reason(&lines, id), want_stop, "{prompt}");
        if want_text.is_empty() {
            assert_eq!(lines.len(), 1, "{prompt}: {lines:?}");
        }
    }
}

#[test]
fn unknown_method_gets_32601_and_unknown_notification_is_ignored() {
    let mut h = Harness::new();
    let (id, lines) = h.request("session/set_mode", json!({"sessionId": "x", "modeId": "y"}));
    assert_eq!(*error(&lines, id), json!({"code": -32601, "message": "Method not found: session/set_mode"}));
    assert!(h.notify("qwen/notify/whatever", json!({})).is_empty());
    assert!(h.logs.iter().any(|l| l.contains("qwen/notify/whatever")));
}

#[test]
fn malformed_lines() {
    let mut h = Harness::new();
    let outputs = h.raw("{not json");
    let lines = h.lines(outputs);
    assert_eq!(lines[0]["id"], Value::Null);
    assert_eq!(lines[0]["error"]["code"], -32700);
    let outputs = h.raw("[1,2]");
    let lines = h.lines(outputs);
    assert_eq!(lines[0]["error"]["code"], -32600);
    assert!(h.raw("   ").is_empty());
    let outputs = h.raw("{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}");
    assert!(h.lines(outputs).is_empty());
    assert!(h.logs.iter().any(|l| l.contains("request 7")));
}

#[test]
fn unknown_sessions() {
    let mut h = Harness::new();
    let (id, lines) = h.prompt("nope", "hi");
    assert_eq!(
        *error(&lines, id),
        json!({"code": -32603, "message": "Internal error", "data": {"details": "Session not found: nope"}})
    );
    let (id, lines) = h.request("session/load", json!({"sessionId": "nope", "cwd": "/ws", "mcpServers": []}));
    assert_eq!(*error(&lines, id), json!({"code": -32602, "message": "Session not found: nope"}));
    assert!(h.cancel("nope").is_empty());
}

#[test]
fn second_prompt_while_busy_ends_the_first_with_32603_like_qwen() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (first, _) = h.prompt(&session, "slow");
    h.after(300);
    let (second, lines) = h.prompt(&session, "second");
    let first_at = lines.iter().position(|l| l["id"] == first).unwrap();
    assert_eq!(first_at, 0, "{lines:?}");
    assert_eq!(*error(&lines, first), json!({"code": -32603, "message": "Internal error", "data": {}}));
    assert_eq!(text(&lines), "echo: second");
    assert_eq!(stop_reason(&lines, second), "end_turn");
    assert!(h.after(1000).is_empty(), "the first turn kept ticking");
}

#[test]
fn turns_of_different_sessions_run_side_by_side() {
    let mut h = Harness::new();
    let a = h.new_session();
    let b = h.new_session();
    let (slow_id, _) = h.prompt(&a, "slow=100");
    let (echo_id, lines) = h.prompt(&b, "hi");
    assert_eq!(stop_reason(&lines, echo_id), "end_turn");
    let lines = h.after(100);
    assert_eq!(text(&lines), "tick 1 ");
    assert_eq!(lines[0]["params"]["sessionId"], a.as_str());
    assert!(!has_response(&lines, slow_id));
}

#[test]
fn load_replays_history_in_order_then_answers_null() {
    let mut h = Harness::new();
    let session = h.new_session();
    h.prompt(&session, "first");
    let (slow, _) = h.prompt(&session, "slow");
    h.after(300);
    h.cancel(&session);
    h.prompt(&session, "empty");
    let (id, lines) = h.request("session/load", json!({"sessionId": session, "cwd": "/ws", "mcpServers": []}));
    let replay: Vec<(String, String)> = updates(&lines)
        .iter()
        .map(|u| (u["sessionUpdate"].as_str().unwrap().into(), u["content"]["text"].as_str().unwrap().into()))
        .collect();
    let want = [
        ("user_message_chunk", "first"),
        ("agent_message_chunk", "echo: first"),
        ("user_message_chunk", "slow"),
        ("agent_message_chunk", "tick 0 tick 1 "),
        ("user_message_chunk", "empty"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect();
    assert_eq!(replay, want);
    let last = lines.last().unwrap();
    assert_eq!(last["id"], id);
    assert_eq!(last["result"], Value::Null);
    assert!(last.as_object().unwrap().contains_key("result"));
    assert!(slow < id);
}

#[test]
fn a_restarted_agent_loads_sessions_from_the_state_directory() {
    let dir = temp_dir("machine-restart");
    let settings = Settings { state_dir: Some(dir.clone()), ..Settings::default() };
    let mut first = Harness::with(settings.clone());
    let session = first.new_session();
    first.prompt(&session, "remember me");
    let crash = json!({"jsonrpc": "2.0", "id": 1, "method": "session/prompt",
        "params": {"sessionId": session, "prompt": [{"type": "text", "text": "crash"}]}});
    assert_eq!(first.raw(&crash.to_string()).last(), Some(&Output::Exit(3)));
    drop(first);

    let mut second = Harness::with(settings);
    let (id, lines) = second.request("session/load", json!({"sessionId": session, "cwd": "/ws", "mcpServers": []}));
    let texts: Vec<&str> = updates(&lines).iter().map(|u| u["content"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["remember me", "echo: remember me", "crash"]);
    assert_eq!(result(&lines, id), &Value::Null);
    assert_ne!(second.new_session(), session, "a new process reused a session id");
    let (id, lines) = second.prompt(&session, "after restart");
    assert_eq!(stop_reason(&lines, id), "end_turn");
    let (id, lines) = second.request("session/load", json!({"sessionId": "../etc", "cwd": "/ws"}));
    assert_eq!(error(&lines, id)["code"], -32602);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn crashonce_crashes_the_first_time_and_answers_the_retry() {
    let dir = temp_dir("machine-crashonce");
    let settings = Settings { state_dir: Some(dir.clone()), ..Settings::default() };
    let mut first = Harness::with(settings.clone());
    let session = first.new_session();
    let crash = json!({"jsonrpc": "2.0", "id": 1, "method": "session/prompt",
        "params": {"sessionId": session, "prompt": [{"type": "text", "text": "crashonce now"}]}});
    assert_eq!(first.raw(&crash.to_string()).last(), Some(&Output::Exit(3)));
    drop(first);
    let mut second = Harness::with(settings);
    second.request("session/load", json!({"sessionId": session, "cwd": "/ws", "mcpServers": []}));
    let (id, lines) = second.prompt(&session, "crashonce now");
    assert_eq!(text(&lines), "echo: crashonce now");
    assert_eq!(stop_reason(&lines, id), "end_turn");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn permission_granted_flow() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "ask permission please");
    assert_eq!(kinds(&lines), ["tool_call"]);
    let tool_call = updates(&lines)[0].clone();
    assert_eq!(tool_call["kind"], "execute");
    assert_eq!(tool_call["status"], "pending");
    assert_eq!(tool_call["title"], "touch demo.txt");
    let request = outgoing_request(&lines).clone();
    assert_eq!(request["method"], "session/request_permission");
    assert_eq!(request["id"], 0);
    assert_eq!(request["params"]["sessionId"], session.as_str());
    assert_eq!(
        request["params"]["options"],
        json!([
            {"optionId": "proceed_always", "name": "Always allow", "kind": "allow_always"},
            {"optionId": "proceed_once", "name": "Allow", "kind": "allow_once"},
            {"optionId": "cancel", "name": "Reject", "kind": "reject_once"},
        ])
    );
    assert_eq!(
        request["params"]["toolCall"],
        json!({"toolCallId": tool_call["toolCallId"], "title": "touch demo.txt", "kind": "execute",
               "status": "pending", "rawInput": {"command": "touch demo.txt"}})
    );
    assert!(!has_response(&lines, id));
    assert_eq!(h.agent.next_deadline(), None);
    // Other traffic is handled while the permission is pending.
    let (init, lines) = h.request("initialize", json!({"protocolVersion": 1}));
    assert!(has_response(&lines, init));

    let lines = h.answer(&request["id"], json!({"outcome": {"outcome": "selected", "optionId": "proceed_once"}}));
    assert_eq!(kinds(&lines), ["tool_call_update", "agent_message_chunk"]);
    assert_eq!(updates(&lines)[0]["status"], "completed");
    assert_eq!(updates(&lines)[0]["toolCallId"], tool_call["toolCallId"]);
    assert_eq!(text(&lines), "permission granted: proceed_once");
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn permission_denied_flows() {
    let answers = [
        json!({"result": {"outcome": {"outcome": "selected", "optionId": "cancel"}}}),
        json!({"result": {"outcome": {"outcome": "cancelled"}}}),
        json!({"error": {"code": -32603, "message": "Internal error"}}),
    ];
    for answer in answers {
        let mut h = Harness::new();
        let session = h.new_session();
        let (id, lines) = h.prompt(&session, "permission");
        let mut reply = answer.clone();
        reply["jsonrpc"] = json!("2.0");
        reply["id"] = outgoing_request(&lines)["id"].clone();
        let lines = h.send(reply);
        assert_eq!(updates(&lines)[0]["status"], "failed", "{answer}");
        assert_eq!(text(&lines), "permission denied", "{answer}");
        assert_eq!(stop_reason(&lines, id), "end_turn", "{answer}");
    }
}

#[test]
fn cancel_abandons_a_pending_permission_request() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "permission");
    let request_id = outgoing_request(&lines)["id"].clone();
    let lines = h.cancel(&session);
    assert_eq!(kinds(&lines), ["tool_call_update"]);
    assert_eq!(updates(&lines)[0]["status"], "failed");
    assert_eq!(stop_reason(&lines, id), "cancelled");
    let lines = h.answer(&request_id, json!({"outcome": {"outcome": "cancelled"}}));
    assert!(lines.is_empty(), "{lines:?}");
    // The next permission request gets a fresh id.
    let (_, lines) = h.prompt(&session, "permission");
    assert_eq!(outgoing_request(&lines)["id"], 1);
}

#[test]
fn ext_reports_the_clients_error_code() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "ext");
    let request = outgoing_request(&lines).clone();
    assert_eq!(request["method"], "craft/drainMidTurnQueue");
    assert_eq!(request["params"]["sessionId"], session.as_str());
    let reply = json!({"jsonrpc": "2.0", "id": request["id"],
        "error": {"code": -32601, "message": "Method not found: craft/drainMidTurnQueue"}});
    let lines = h.send(reply);
    assert_eq!(text(&lines), "ext answered -32601");
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn tools_sends_each_update_kind_then_the_echo() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "tools");
    let want = [
        "plan",
        "agent_thought_chunk",
        "tool_call",
        "tool_call_update",
        "current_mode_update",
        "future_kind_xyz",
        "agent_message_chunk",
        "agent_message_chunk",
        "agent_message_chunk",
    ];
    assert_eq!(kinds(&lines), want);
    assert_eq!(text(&lines), "echo: tools");
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn permission_then_ext_then_slow_combine() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "permission ext slow=10");
    let lines = h.answer(
        &outgoing_request(&lines)["id"].clone(),
        json!({"outcome": {"outcome": "selected", "optionId": "proceed_always"}}),
    );
    let ext = outgoing_request(&lines)["id"].clone();
    let mut lines = h.send(json!({"jsonrpc": "2.0", "id": ext, "result": null}));
    for _ in 0..9 {
        lines.extend(h.after(10));
    }
    let ticks: String = (0..10).map(|i| format!("tick {i} ")).collect();
    assert_eq!(text(&lines), format!("\n\next answered with a result\n\n{ticks}"));
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn huge_is_one_two_megabyte_line() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "huge");
    assert_eq!(kinds(&lines), ["agent_message_chunk"]);
    assert_eq!(text(&lines).len(), 2_000_000);
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn long_streams_many_chunks() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "long");
    assert!(kinds(&lines).len() >= 30);
    assert_eq!(text(&lines), crate::demo_agent::texts::long_answer());
    assert_eq!(stop_reason(&lines, id), "end_turn");
}

#[test]
fn crash_streams_one_chunk_then_asks_to_exit_3() {
    let mut h = Harness::new();
    let session = h.new_session();
    let line = json!({"jsonrpc": "2.0", "id": 9, "method": "session/prompt",
        "params": {"sessionId": session, "prompt": [{"type": "text", "text": "crash"}]}});
    let outputs = h.raw(&line.to_string());
    assert_eq!(outputs.last(), Some(&Output::Exit(3)));
    let lines: Vec<&String> =
        outputs.iter().filter_map(|o| if let Output::Line(l) = o { Some(l) } else { None }).collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("about to crash"));
    assert!(h.raw(&json!({"jsonrpc": "2.0", "id": 10, "method": "initialize"}).to_string()).is_empty());
    assert!(h.agent.tick(h.now + Duration::from_secs(5)).is_empty());
}

#[test]
fn hang_never_answers_until_cancelled() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (id, lines) = h.prompt(&session, "hang");
    assert_eq!(text(&lines), "hanging until cancelled");
    assert!(!has_response(&lines, id));
    assert_eq!(h.agent.next_deadline(), None);
    assert!(h.after(60_000).is_empty());
    let lines = h.cancel(&session);
    assert_eq!(stop_reason(&lines, id), "cancelled");
}

#[test]
fn cancel_sent_as_a_request_is_answered_too() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (prompt, _) = h.prompt(&session, "hang");
    let (cancel, lines) = h.request("session/cancel", json!({"sessionId": session}));
    assert_eq!(stop_reason(&lines, prompt), "cancelled");
    assert_eq!(*result(&lines, cancel), Value::Null);
}

#[test]
fn auth_required_fails_new_and_load_with_32000() {
    let mut h = Harness::with(Settings { auth_required: true, ..Settings::default() });
    let (id, lines) = h.request("initialize", json!({"protocolVersion": 1}));
    assert_eq!(result(&lines, id)["authMethods"][0]["id"], "demo-login");
    for method in ["session/new", "session/load"] {
        let (id, lines) = h.request(method, json!({"sessionId": "demo-1", "cwd": "/ws", "mcpServers": []}));
        let error = error(&lines, id);
        assert_eq!(error["code"], -32000, "{method}");
        assert_eq!(error["message"], "Authentication required", "{method}");
        assert_eq!(error["data"]["authMethods"][0]["id"], "demo-login", "{method}");
    }
}

#[test]
fn a_loop_asked_in_plain_words_is_made_with_the_sessions_mcp_server() {
    let mut h = Harness::new();
    let tether = json!({"name": "tether", "command": "/bin/tether", "args": ["mcp"],
        "env": [{"name": "TETHER_MCP_SESSION", "value": "tg:1:1"}]});
    let (id, lines) = h.request("session/new", json!({"cwd": "/ws", "mcpServers": [tether]}));
    let session = result(&lines, id)["sessionId"].as_str().unwrap().to_string();
    let (prompt, lines) = h.prompt(&session, "every 15 minutes check the deployment");
    assert!(!has_response(&lines, prompt), "the turn waits for the tool");
    let server = McpServer {
        command: "/bin/tether".into(),
        args: vec!["mcp".into()],
        env: vec![("TETHER_MCP_SESSION".into(), "tg:1:1".into())],
    };
    let arguments = json!({"cron": "*/15 * * * *", "prompt": "check the deployment"});
    assert_eq!(h.tool_calls, vec![(1, server, "loop_create".to_string(), arguments)]);
    // A result for no waiting turn is dropped.
    assert!(h.agent.tool_result(99, Ok("x".into()), h.now).iter().all(|o| matches!(o, Output::Log(_))));
    let outputs = h.agent.tool_result(1, Ok("Loop 1 added".into()), h.now);
    let lines = h.lines(outputs);
    assert_eq!(text(&lines), "Loop 1 added");
    assert_eq!(stop_reason(&lines, prompt), "end_turn");
    // A failed call is said so.
    let (prompt, _) = h.prompt(&session, "cancel loop 7");
    assert_eq!(h.tool_calls[1].2, "loop_cancel");
    let outputs = h.agent.tool_result(2, Err("There is no loop 7 in this chat".into()), h.now);
    let lines = h.lines(outputs);
    assert_eq!(text(&lines), "The tool call failed: There is no loop 7 in this chat");
    assert_eq!(stop_reason(&lines, prompt), "end_turn");
}

#[test]
fn without_an_mcp_server_the_agent_says_it_cannot_schedule() {
    let mut h = Harness::new();
    let session = h.new_session();
    let (prompt, lines) = h.prompt(&session, "every 1 minutes ping");
    assert_eq!(text(&lines), NO_MCP);
    assert_eq!(stop_reason(&lines, prompt), "end_turn");
    assert!(h.tool_calls.is_empty());
}
