//! `tether mcp`: the MCP server (stdio, newline-delimited JSON-RPC 2.0) tether offers the
//! agent in each session's `mcpServers`, so the agent can manage loops in plain language.
//! Its tools (`loop_create`, `loop_list`, `loop_cancel`) are forwarded to the running service
//! through its control socket (`control.rs`), with the session and token the service put in
//! this process's environment: they act on the chat of that session.
//!
//! [`answer`] is the protocol, pure (the tool call is passed in); [`run`] does the I/O.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::control::{ENV_SESSION, ENV_SOCKET, ENV_TOKEN, MAX_REQUEST};

/// MCP versions this server speaks; a client asking for another gets the first.
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// The longest line read from the client; a longer one is answered with a parse error.
pub const MAX_LINE: usize = 1024 * 1024;
/// How long a tool call may wait for the service (it waits 10 s for its core).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// `tether mcp --help`, and what a person who starts it by hand sees.
pub const HELP: &str = "\
tether mcp: tether's MCP server for the agent (stdio)

The agent starts it for tether's sessions (tether passes it in session/new's mcpServers when
the agent advertises MCP support). It offers loop_create, loop_list and loop_cancel, which act
on the loops of the chat of that session, through the running service's control socket.
It needs TETHER_MCP_SOCKET, TETHER_MCP_SESSION and TETHER_MCP_TOKEN, which tether sets.
";

/// The tools, as `tools/list` gives them.
pub fn tools() -> Value {
    json!([
        {
            "name": "loop_create",
            "description": "Schedule a prompt that runs again and again, on a cron schedule, for the person in \
                this chat (a 'loop'). Each run is a fresh conversation with you that gets only the prompt, so \
                write it self-contained; its answer is sent to this chat, marked [loop N]. The schedule is a \
                5-field cron expression in the machine's local time: minute hour day-of-month month \
                day-of-week, e.g. \"*/15 * * * *\" (every 15 minutes), \"0 9 * * mon-fri\" (9:00 on weekdays); \
                @hourly and @daily work too. At most 10 loops per chat, prompts up to 4000 characters.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "cron": {"type": "string", "description": "5-field cron expression, local time, e.g. \"*/15 * * * *\""},
                    "prompt": {"type": "string", "description": "What to do at each run (self-contained)"},
                },
                "required": ["cron", "prompt"],
            },
        },
        {
            "name": "loop_list",
            "description": "List the loops of this chat: ids, schedules, next runs, prompts.",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "loop_cancel",
            "description": "Cancel (delete) a loop of this chat by its id, as loop_list shows it; a run in \
                progress stops.",
            "inputSchema": {
                "type": "object",
                "properties": {"id": {"type": "integer", "description": "The loop's id"}},
                "required": ["id"],
            },
        },
    ])
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The answer to one message from the client (`None`: a notification or a response, which
/// get none). `call` runs a tool: its text, or why it failed.
pub fn answer(message: &Value, call: &mut dyn FnMut(&str, &Value) -> Result<String, String>) -> Option<Value> {
    let Some(object) = message.as_object() else {
        return Some(error(Value::Null, INVALID_REQUEST, "Invalid Request: not an object (batches are not supported)"));
    };
    let id = object.get("id").filter(|id| !id.is_null())?.clone();
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        // A response to a request of ours: we send none.
        return None;
    };
    let params = object.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked.filter(|v| VERSIONS.contains(v)).unwrap_or(VERSIONS[0]);
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "tether", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "Use these tools when the user asks for something to be done on a schedule \
                    or repeatedly (\"every 15 minutes check ...\"), or asks about or wants to stop such loops.",
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Some(error(id, INVALID_PARAMS, "Invalid params: tools/call needs \"name\""));
            };
            let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
            let (text, is_error) = match call(name, &arguments) {
                Ok(text) => (text, false),
                Err(text) => (text, true),
            };
            json!({"content": [{"type": "text", "text": text}], "isError": is_error})
        }
        other => return Some(error(id, METHOD_NOT_FOUND, &format!("Method not found: {other}"))),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// What one line from the client gets (`None`: nothing).
pub fn answer_line(line: &str, call: &mut dyn FnMut(&str, &Value) -> Result<String, String>) -> Option<Value> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    match serde_json::from_slice::<Value>(line.as_bytes()) {
        Ok(message) => answer(&message, call),
        Err(e) => Some(error(Value::Null, PARSE_ERROR, &format!("Parse error: {e}"))),
    }
}

/// Where the service is and which session this server acts for (from the environment).
struct Binding {
    socket: String,
    session: String,
    token: String,
}

/// Run the server on stdin/stdout; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return 0;
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(socket), Some(session), Some(token)) = (var(ENV_SOCKET), var(ENV_SESSION), var(ENV_TOKEN)) else {
        eprintln!(
            "tether mcp is started by the agent for tether's sessions; it needs {ENV_SOCKET}, {ENV_SESSION} and \
             {ENV_TOKEN}, which tether passes in session/new's mcpServers. See `tether mcp --help`."
        );
        return 2;
    };
    let binding = Binding { socket, session, token };
    let mut call = |tool: &str, arguments: &Value| call_service(&binding, tool, arguments);
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    serve(stdin.lock(), &mut stdout.lock(), &mut call)
}

/// Answer the client's lines until its input ends; 0 then, 1 if the streams fail.
fn serve(
    mut input: impl BufRead,
    out: &mut impl Write,
    call: &mut dyn FnMut(&str, &Value) -> Result<String, String>,
) -> i32 {
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut input).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
        let answer = match read {
            Ok(0) => return 0,
            Ok(_) if line.len() > MAX_LINE && line.last() != Some(&b'\n') => {
                // Skip the rest of the line, then say so once.
                if let Err(e) = skip_line(&mut input) {
                    eprintln!("tether mcp: cannot read stdin: {e}");
                    return 1;
                }
                Some(error(
                    Value::Null,
                    PARSE_ERROR,
                    &format!("Parse error: a line longer than {} MiB", MAX_LINE >> 20),
                ))
            }
            Ok(_) => answer_line(&String::from_utf8_lossy(&line), call),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("tether mcp: cannot read stdin: {e}");
                return 1;
            }
        };
        if let Some(answer) = answer {
            let written = writeln!(out, "{answer}").and_then(|()| out.flush());
            if let Err(e) = written {
                eprintln!("tether mcp: cannot write to stdout: {e}");
                return 1;
            }
        }
    }
}

/// Read and drop the rest of a line.
fn skip_line(input: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(at) => {
                input.consume(at + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                input.consume(n);
            }
        }
    }
}

/// One tool call through the service's control socket.
fn call_service(binding: &Binding, tool: &str, arguments: &Value) -> Result<String, String> {
    let socket = Path::new(&binding.socket);
    let unreachable =
        |e: std::io::Error| format!("tether's service is not reachable at {} ({e}); is it running?", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(unreachable)?;
    stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(unreachable)?;
    let request = json!({"session": binding.session, "token": binding.token, "tool": tool, "arguments": arguments});
    let line = request.to_string() + "\n";
    if line.len() > MAX_REQUEST {
        return Err(format!("the call is longer than {} KiB", MAX_REQUEST / 1024));
    }
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = Vec::new();
    BufReader::new(stream.take(MAX_REQUEST as u64)).read_until(b'\n', &mut answer).map_err(unreachable)?;
    let answer: Value = serde_json::from_slice(&answer)
        .map_err(|_| "tether's service gave no answer in time (it may be busy); try again".to_string())?;
    let text = answer.get("text").and_then(Value::as_str).unwrap_or_default().to_string();
    match answer.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(text),
        _ => Err(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool call that records what it was asked and answers from a table.
    fn fake(calls: &mut Vec<(String, Value)>) -> impl FnMut(&str, &Value) -> Result<String, String> + '_ {
        move |tool: &str, arguments: &Value| {
            calls.push((tool.to_string(), arguments.clone()));
            match tool {
                "loop_list" => Ok("No loops in this chat.".to_string()),
                _ => Err(format!("unknown tool \"{tool}\"")),
            }
        }
    }

    #[test]
    fn the_protocol_as_a_table() {
        let mut calls = Vec::new();
        let mut call = fake(&mut calls);
        let cases: Vec<(&str, Option<Value>)> = vec![
            (
                r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"qwen","version":"1"}}}"#,
                Some(json!({"jsonrpc": "2.0", "id": 0, "result": {
                    "protocolVersion": "2025-03-26", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "tether", "version": env!("CARGO_PKG_VERSION")},
                }})),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"protocolVersion":"2099-01-01"}}"#,
                Some(json!({"jsonrpc": "2.0", "id": "a", "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "tether", "version": env!("CARGO_PKG_VERSION")},
                }})),
            ),
            (r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, None),
            (r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#, None),
            (r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, None),
            ("", None),
            (r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#, Some(json!({"jsonrpc": "2.0", "id": 2, "result": {}}))),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"loop_list","arguments":{}}}"#,
                Some(json!({"jsonrpc": "2.0", "id": 3, "result": {
                    "content": [{"type": "text", "text": "No loops in this chat."}], "isError": false,
                }})),
            ),
            (
                r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"rm"}}"#,
                Some(json!({"jsonrpc": "2.0", "id": 4, "result": {
                    "content": [{"type": "text", "text": "unknown tool \"rm\""}], "isError": true,
                }})),
            ),
            (
                r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{}}"#,
                Some(error(json!(5), INVALID_PARAMS, "Invalid params: tools/call needs \"name\"")),
            ),
            (
                r#"{"jsonrpc":"2.0","id":6,"method":"resources/list"}"#,
                Some(error(json!(6), METHOD_NOT_FOUND, "Method not found: resources/list")),
            ),
            (
                "[1]",
                Some(error(Value::Null, INVALID_REQUEST, "Invalid Request: not an object (batches are not supported)")),
            ),
        ];
        for (line, expected) in cases {
            let mut got = answer_line(line, &mut call);
            if let Some(result) = got.as_mut().and_then(|g| g.get_mut("result")).and_then(Value::as_object_mut) {
                result.remove("instructions");
            }
            assert_eq!(got, expected, "{line}");
        }
        let parse = answer_line("{nope", &mut call).unwrap();
        assert_eq!(parse["error"]["code"], PARSE_ERROR);
        assert_eq!(parse["id"], Value::Null);
        drop(call);
        assert_eq!(calls, vec![("loop_list".to_string(), json!({})), ("rm".to_string(), json!({}))]);
    }

    #[test]
    fn tools_list_names_three_tools_with_schemas() {
        let mut call = |_: &str, _: &Value| Ok(String::new());
        let listed = answer(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), &mut call).unwrap();
        let tools = listed["result"]["tools"].as_array().unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["loop_create", "loop_list", "loop_cancel"]);
        for tool in tools {
            assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
            assert!(tool["description"].as_str().unwrap().len() > 20);
        }
        assert_eq!(tools[0]["inputSchema"]["required"], json!(["cron", "prompt"]));
        assert_eq!(tools[2]["inputSchema"]["properties"]["id"]["type"], "integer");
    }

    #[test]
    fn an_overlong_line_is_answered_with_a_parse_error_and_skipped() {
        let mut input = "x".repeat(MAX_LINE + 100);
        input.push('\n');
        input.push_str(r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#);
        input.push('\n');
        let mut out = Vec::new();
        let mut call = |_: &str, _: &Value| Ok(String::new());
        assert_eq!(serve(input.as_bytes(), &mut out, &mut call), 0);
        let lines: Vec<Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["error"]["code"], PARSE_ERROR);
        assert_eq!(lines[1], json!({"jsonrpc": "2.0", "id": 9, "result": {}}));
    }
}
