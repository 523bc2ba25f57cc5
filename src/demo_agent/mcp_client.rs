//! The demo agent's MCP client: one tool call through a session's stdio MCP server (start it,
//! `initialize`, `notifications/initialized`, `tools/call`, stop it), every wait bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use serde_json::{Value, json};

use super::machine::McpServer;

/// The whole call, from start to answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest line read from the server.
const MAX_LINE: u64 = 1024 * 1024;

/// Call `tool` with `arguments`: the text of its answer, or why not (an `isError` answer too).
pub fn call(server: &McpServer, tool: &str, arguments: &Value) -> Result<String, String> {
    let mut child = Command::new(&server.command)
        .args(&server.args)
        .envs(server.env.iter().map(|(n, v)| (n, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the MCP server `{}`: {e}", server.command))?;
    let result = exchange(&mut child, tool, arguments);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn exchange(child: &mut std::process::Child, tool: &str, arguments: &Value) -> Result<String, String> {
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the MCP server's pipes could not be opened".to_string());
    };
    let (tx, rx) = bounded::<Value>(16);
    std::thread::Builder::new()
        .name("demo-mcp-out".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Ok(message) = serde_json::from_slice::<Value>(&line)
                            && tx.send(message).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").and_then(|()| stdin.flush()).map_err(|e| format!("the MCP server closed: {e}"))
    };
    let wait_for = |id: u64| -> Result<Value, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = rx.recv_timeout(left).map_err(|_| "the MCP server did not answer in time".to_string())?;
            if message.get("id").and_then(Value::as_u64) == Some(id) {
                return match message.get("error") {
                    Some(error) => Err(format!("the MCP server answered with an error: {error}")),
                    None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
            }
        }
    };
    let client = json!({"name": "tether-demo-agent", "version": env!("CARGO_PKG_VERSION")});
    let params = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client});
    send(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}))?;
    wait_for(0)?;
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
    let params = json!({"name": tool, "arguments": arguments});
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))?;
    let result = wait_for(1)?;
    let text = result
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        })
        .unwrap_or_default();
    match result.get("isError").and_then(Value::as_bool) {
        Some(true) => Err(text),
        _ => Ok(text),
    }
}
