//! The daemon's control socket, `TETHER_HOME/control.sock`: how `tether mcp` (started by the
//! agent for one of tether's sessions) reaches the core with a loop tool call. One JSON line
//! in, one JSON line out, per connection. A request names its session and carries that
//! session's token, HMAC-SHA256 of the key under a secret drawn at each start: the token binds
//! the call to the chat of that session, with no table to keep.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use serde_json::{Value, json};

use crate::core::loops::LoopTool;

/// The socket's file in TETHER_HOME.
pub const SOCKET_FILE: &str = "control.sock";
/// The longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its line, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection waits for the core's answer (`tether mcp` waits a little longer).
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// The longest socket path Linux takes (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The secret tokens are made from (32 random bytes, drawn at each start: a restart makes
/// the tokens of the last run worthless, and the sessions get new ones when they are opened
/// or loaded again).
#[derive(Clone)]
pub struct Secret(Arc<[u8; 32]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn draw() -> Result<Secret, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no random bytes from the OS: {e}"))?;
        Ok(Secret(Arc::new(bytes)))
    }

    #[cfg(test)]
    pub fn fixed(bytes: [u8; 32]) -> Secret {
        Secret(Arc::new(bytes))
    }

    fn mac(&self, key: &str) -> Vec<u8> {
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.0.as_slice());
        ring::hmac::sign(&secret, key.as_bytes()).as_ref().to_vec()
    }

    /// The token of session `key`, in hex.
    pub fn token(&self, key: &str) -> String {
        self.mac(key).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is the token of `key` (compared in constant time).
    pub fn verify(&self, key: &str, token: &str) -> bool {
        let expected = self.token(key);
        crate::net::httpd::constant_time_eq(expected.as_bytes(), token.trim().to_ascii_lowercase().as_bytes())
    }
}

/// What an ACP connection offers the agent: tether itself, as `tether mcp`, bound to one
/// session by the environment it passes.
#[derive(Debug, Clone)]
pub struct McpOffer {
    /// This executable.
    pub command: PathBuf,
    pub socket: PathBuf,
    pub secret: Secret,
}

/// The environment variables `tether mcp` reads.
pub const ENV_SOCKET: &str = "TETHER_MCP_SOCKET";
pub const ENV_SESSION: &str = "TETHER_MCP_SESSION";
pub const ENV_TOKEN: &str = "TETHER_MCP_TOKEN";

impl McpOffer {
    /// The variables of session `key`'s server, as (name, value).
    pub fn env(&self, key: &str) -> Vec<(String, String)> {
        vec![
            (ENV_SOCKET.to_string(), self.socket.to_string_lossy().into_owned()),
            (ENV_SESSION.to_string(), key.to_string()),
            (ENV_TOKEN.to_string(), self.secret.token(key)),
        ]
    }
}

/// Who asks through the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `tether mcp` for the session with this key (its token checked): the session's chat only.
    Session(String),
    /// `tether loops cancel` on the service's machine. The socket is private to tether's user
    /// (0600), who may edit `loops.json` anyway; going through the service keeps its own
    /// saves from undoing the change.
    Operator,
}

/// A loop tool call for the core, and where its answer goes.
#[derive(Debug)]
pub struct ControlRequest {
    pub caller: Caller,
    pub tool: LoopTool,
    pub reply: Sender<Result<String, String>>,
}

/// The request line `tether loops cancel ID` sends.
pub fn operator_cancel_line(id: u32) -> String {
    json!({"operator": "loop_cancel", "id": id}).to_string() + "\n"
}

/// Decode one request line: who asks and for what, or what to answer. A wrong token is
/// refused (and logged, without the token).
pub fn decode(line: &str, secret: &Secret) -> Result<(Caller, LoopTool), String> {
    let request: Value =
        serde_json::from_slice(line.as_bytes()).map_err(|e| format!("the request is not JSON: {e}"))?;
    let text = |name: &str| request.get(name).and_then(Value::as_str);
    if let Some(verb) = text("operator") {
        return match verb {
            "loop_cancel" => Ok((Caller::Operator, decode_tool(verb, &request)?)),
            other => Err(format!("unknown operator request \"{other}\"; the service takes loop_cancel")),
        };
    }
    let (Some(session), Some(token), Some(tool)) = (text("session"), text("token"), text("tool")) else {
        return Err("the request needs \"session\", \"token\" and \"tool\" (strings)".to_string());
    };
    if !secret.verify(session, token) {
        log::warn!(target: "control", "refused a loop tool call for session {session}: wrong token");
        return Err(format!(
            "the token does not match session \"{session}\" (tether was restarted, or the session is not \
             tether's); start a new conversation in the chat"
        ));
    }
    let arguments = request.get("arguments").cloned().unwrap_or(Value::Null);
    Ok((Caller::Session(session.to_string()), decode_tool(tool, &arguments)?))
}

/// The tool and its arguments, as `tools/call` names them.
pub fn decode_tool(tool: &str, arguments: &Value) -> Result<LoopTool, String> {
    let text = |name: &str| arguments.get(name).and_then(Value::as_str);
    match tool {
        "loop_create" => match (text("cron"), text("prompt")) {
            (Some(cron), Some(prompt)) => Ok(LoopTool::Create { cron: cron.to_string(), prompt: prompt.to_string() }),
            _ => Err("loop_create needs \"cron\" (a 5-field cron expression) and \"prompt\" (text)".to_string()),
        },
        "loop_list" => Ok(LoopTool::List),
        "loop_cancel" => {
            let id = arguments.get("id");
            let id =
                id.and_then(Value::as_u64).or_else(|| id.and_then(Value::as_str).and_then(|s| s.trim().parse().ok()));
            match id.and_then(|id| u32::try_from(id).ok()) {
                Some(id) => Ok(LoopTool::Cancel { id }),
                None => Err("loop_cancel needs \"id\": the loop's number, as loop_list shows it".to_string()),
            }
        }
        other => Err(format!("unknown tool \"{other}\"; tether has loop_create, loop_list and loop_cancel")),
    }
}

/// The answer line.
pub fn encode_answer(result: &Result<String, String>) -> String {
    match result {
        Ok(text) => json!({"ok": true, "text": text}),
        Err(text) => json!({"ok": false, "text": text}),
    }
    .to_string()
}

/// The socket, while it serves: its file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    pub path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind `home/control.sock` (a stale one of an earlier run is replaced: the caller holds the
/// service lock) and serve it on its own thread, handing each request to `requests`.
pub fn serve(home: &Path, secret: Secret, requests: Sender<ControlRequest>) -> Result<ControlSocket, String> {
    let path = home.join(SOCKET_FILE);
    let listener = bind(&path)?;
    let served = ControlSocket { path: path.clone() };
    let busy = Arc::new(AtomicUsize::new(0));
    thread::Builder::new()
        .name("control".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            accept_loop(&listener, &secret, &requests, &busy);
            log::warn!(target: "control", "the control socket {} stopped serving: the agent's loop tools are unavailable", path.display());
        })
        .map_err(|e| format!("cannot start the control socket's thread: {e}"))?;
    Ok(served)
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the control socket path {shown} is longer than a Unix socket may be ({MAX_SOCKET_PATH} bytes); \
             use a shorter TETHER_HOME"
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale control socket {shown}: {e}"))?
        }
        Ok(_) => return Err(format!("{shown} exists and is not a socket; move it away")),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on the control socket {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make the control socket {shown} private (0600): {e}"))?;
    Ok(listener)
}

fn accept_loop(listener: &UnixListener, secret: &Secret, requests: &Sender<ControlRequest>, busy: &Arc<AtomicUsize>) {
    let mut failures = 0u32;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => {
                failures = 0;
                stream
            }
            Err(e) => {
                failures += 1;
                log::warn!(target: "control", "accepting a connection failed: {e}");
                if failures >= 100 {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            log::warn!(target: "control", "{MAX_CONNECTIONS} connections already; one was closed");
            continue;
        }
        let (secret, requests, done) = (secret.clone(), requests.clone(), Arc::clone(busy));
        let spawned = thread::Builder::new().name("control-conn".into()).stack_size(256 * 1024).spawn(move || {
            serve_one(stream, &secret, &requests);
            done.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::SeqCst);
            log::warn!(target: "control", "cannot start a connection's thread: {e}");
        }
    }
}

/// Read one line, answer one line.
fn serve_one(stream: UnixStream, secret: &Secret, requests: &Sender<ControlRequest>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let result = match read_request(&stream) {
        Ok(line) => match decode(&line, secret) {
            Ok((caller, tool)) => ask_core(caller, tool, requests),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let mut stream = stream;
    let line = encode_answer(&result) + "\n";
    if let Err(e) = stream.write_all(line.as_bytes()).and_then(|()| stream.flush()) {
        log::debug!(target: "control", "could not answer a request: {e}");
    }
}

fn read_request(stream: &UnixStream) -> Result<String, String> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    let mut bytes = Vec::new();
    reader.read_until(b'\n', &mut bytes).map_err(|e| format!("the request could not be read: {e}"))?;
    if bytes.len() > MAX_REQUEST {
        return Err(format!("the request is longer than {} KiB", MAX_REQUEST / 1024));
    }
    String::from_utf8(bytes).map_err(|_| "the request is not UTF-8".to_string())
}

fn ask_core(caller: Caller, tool: LoopTool, requests: &Sender<ControlRequest>) -> Result<String, String> {
    let (reply, answer) = bounded(1);
    let busy = "tether is busy (or stopping); try again in a moment".to_string();
    let deadline = std::time::Instant::now() + ANSWER_WAIT;
    requests.send_deadline(ControlRequest { caller, tool, reply }, deadline).map_err(|_| busy.clone())?;
    answer.recv_deadline(deadline).map_err(|_| busy)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::fixed([7; 32])
    }

    fn line(session: &str, token: &str, tool: &str, arguments: Value) -> String {
        json!({"session": session, "token": token, "tool": tool, "arguments": arguments}).to_string()
    }

    #[test]
    fn tokens_bind_a_session_and_a_start() {
        let s = secret();
        let token = s.token("tg:111:111");
        assert_eq!(token.len(), 64);
        assert!(s.verify("tg:111:111", &token));
        assert!(s.verify("tg:111:111", &token.to_uppercase()));
        assert!(!s.verify("tg:222:222", &token), "another session");
        assert!(!Secret::fixed([8; 32]).verify("tg:111:111", &token), "another start");
        assert!(!s.verify("tg:111:111", ""));
        // HMAC-SHA256 of the key under the secret (Python's hmac module gave this value).
        let known = Secret::fixed([0x0b; 32]).token("tg:1:1");
        assert_eq!(known, "28e8f5e59ec7abc9732b88943e894b1e138d9158deaac08570c46a32fd839b77");
    }

    #[test]
    fn requests_decode_to_tools_or_say_what_is_wrong() {
        let s = secret();
        let token = s.token("k");
        let create = line("k", &token, "loop_create", json!({"cron": "* * * * *", "prompt": "ping"}));
        let ok: Vec<(String, LoopTool)> = vec![
            (create, LoopTool::Create { cron: "* * * * *".into(), prompt: "ping".into() }),
            (line("k", &token, "loop_list", json!({})), LoopTool::List),
            (line("k", &token, "loop_list", Value::Null), LoopTool::List),
            (line("k", &token, "loop_cancel", json!({"id": 3})), LoopTool::Cancel { id: 3 }),
            (line("k", &token, "loop_cancel", json!({"id": "4"})), LoopTool::Cancel { id: 4 }),
        ];
        for (input, tool) in ok {
            assert_eq!(decode(&input, &s), Ok((Caller::Session("k".to_string()), tool)), "{input}");
        }
        // The operator's cancel needs no session: the socket's 0600 is its check.
        assert_eq!(decode(operator_cancel_line(7).trim(), &s), Ok((Caller::Operator, LoopTool::Cancel { id: 7 })));
        let bad: Vec<(String, &str)> = vec![
            ("{".into(), "the request is not JSON"),
            (json!({"session": "k"}).to_string(), "the request needs"),
            (line("k", "00", "loop_list", json!({})), "the token does not match session \"k\""),
            (line("other", &token, "loop_list", json!({})), "the token does not match"),
            (line("k", &token, "loop_create", json!({"cron": "* * * * *"})), "loop_create needs"),
            (line("k", &token, "loop_cancel", json!({"id": -1})), "loop_cancel needs"),
            (line("k", &token, "loop_cancel", json!({"id": 1u64 << 40})), "loop_cancel needs"),
            (line("k", &token, "rm_rf", json!({})), "unknown tool \"rm_rf\""),
            (json!({"operator": "loop_create", "cron": "* * * * *"}).to_string(), "unknown operator request"),
            (json!({"operator": "loop_cancel"}).to_string(), "loop_cancel needs"),
        ];
        for (input, start) in bad {
            let error = decode(&input, &s).unwrap_err();
            assert!(error.starts_with(start), "{input}: {error}");
            assert!(!error.contains(&token), "the token is never echoed");
        }
    }

    fn exchange(path: &Path, request: &str) -> Value {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // One write, and its error left to the answer: the socket answers an overlong request
        // and closes it, which can come before the client is done writing.
        let _ = stream.write_all(format!("{request}\n").as_bytes());
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[test]
    fn the_socket_is_private_refuses_a_wrong_token_and_hands_good_calls_to_the_core() {
        let home = std::env::temp_dir().join(format!("tether-control-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        // A stale socket of an earlier run is replaced.
        let stale = UnixListener::bind(home.join(SOCKET_FILE)).unwrap();
        drop(stale);
        let s = secret();
        let (tx, rx) = bounded::<ControlRequest>(4);
        let socket = serve(&home, s.clone(), tx).unwrap();
        let mode = std::fs::metadata(&socket.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let refused = exchange(&socket.path, &line("tg:1:1", "feed", "loop_list", json!({})));
        assert_eq!(refused["ok"], false);
        assert!(refused["text"].as_str().unwrap().starts_with("the token does not match"), "{refused}");
        assert!(rx.try_recv().is_err(), "a refused call never reaches the core");

        let core = thread::spawn(move || {
            let request = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!((&request.caller, &request.tool), (&Caller::Session("tg:1:1".into()), &LoopTool::List));
            request.reply.send(Ok("No loops in this chat.".into())).unwrap();
        });
        let answered = exchange(&socket.path, &line("tg:1:1", &s.token("tg:1:1"), "loop_list", json!({})));
        assert_eq!(answered, json!({"ok": true, "text": "No loops in this chat."}));
        core.join().unwrap();

        let long = format!("{}\n", "x".repeat(MAX_REQUEST + 10));
        let too_long = exchange(&socket.path, &long);
        assert_eq!(too_long["ok"], false, "{too_long}");

        let path = socket.path.clone();
        drop(socket);
        assert!(!path.exists(), "the file goes with the socket");
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn a_path_too_long_for_a_socket_or_a_file_in_the_way_is_a_clear_error() {
        let (tx, _rx) = bounded::<ControlRequest>(1);
        let deep = PathBuf::from(format!("/tmp/{}", "d".repeat(120)));
        let error = serve(&deep, secret(), tx.clone()).unwrap_err();
        assert!(error.contains("longer than a Unix socket may be"), "{error}");
        let home = std::env::temp_dir().join(format!("tether-control-file-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(SOCKET_FILE), "not a socket").unwrap();
        let error = serve(&home, secret(), tx).unwrap_err();
        assert!(error.ends_with("exists and is not a socket; move it away"), "{error}");
        let _ = std::fs::remove_dir_all(&home);
    }
}
