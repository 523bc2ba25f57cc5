//! Exec adapters end to end: tether runs the example adapter (examples/plugins/tcp_bridge.py,
//! written from docs/plugins.md) and the demo agent; a test client talks to the adapter's
//! socket like a person would.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Service, TempDir, demo_agent, read_status, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins/tcp_bridge.py")
}

fn bridge_config(home: &TempDir) -> Value {
    json!({
        "agent": demo_agent(),
        "channels": {"local": {
            "type": "exec",
            "command": "python3",
            "args": [example()],
            "env": {"BRIDGE_LISTEN": "127.0.0.1:0", "BRIDGE_PORT_FILE": home.path().join("bridge.port")},
            "senderPolicy": "allowlist",
            "allowedUsers": ["ann"],
        }},
    })
}

/// The bridge's (port, pid), once it has written them (and they differ from `not`).
fn bridge_port(home: &TempDir, not: Option<(u16, u32)>) -> (u16, u32) {
    let path = home.path().join("bridge.port");
    let mut found = None;
    let ok = wait_until(WAIT, || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut parts = text.split_whitespace().map(str::parse::<u32>);
        if let (Some(Ok(port)), Some(Ok(pid))) = (parts.next(), parts.next()) {
            let pair = (u16::try_from(port).unwrap(), pid);
            if Some(pair) != not {
                found = Some(pair);
                return true;
            }
        }
        false
    });
    assert!(ok, "the bridge did not write {}", path.display());
    found.unwrap()
}

/// A person at the bridge's socket.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16, user: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut client = Client { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
        client.say(&format!("/as {user}"));
        client
    }

    fn say(&mut self, line: &str) {
        self.writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// The next message from the bot (its lines up to the "." line), within `within`.
    fn next_message(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        while Instant::now() < deadline {
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    let text = line.trim_end_matches(['\r', '\n']).to_string();
                    line.clear();
                    if text == "." {
                        return Some(lines.join("\n"));
                    }
                    lines.push(text);
                }
                Err(_) => continue, // The read timeout: look at the deadline again.
            }
        }
        None
    }

    /// Messages until one contains `needle`; all of them.
    fn wait_for(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.next_message(deadline - Instant::now()) {
                let done = m.contains(needle);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!("no message with {needle:?}; got {seen:?}");
    }
}

#[test]
fn the_example_plugin_answers_gates_strangers_and_shows_buttons() {
    let home = TempDir::new("plugin");
    home.write_config(&bridge_config(&home));
    let service = Service::start(&home, &[]);
    let (port, _) = bridge_port(&home, None);
    let mut ann = Client::connect(port, "ann");
    let sent = Instant::now();
    ann.say("hello plugin");
    assert_eq!(ann.next_message(WAIT).as_deref(), Some("echo: hello plugin"), "log:\n{}", service.log());
    eprintln!("exec round trip (first message, session opened): {} ms", sent.elapsed().as_millis());
    let sent = Instant::now();
    ann.say("again");
    assert_eq!(ann.next_message(WAIT).as_deref(), Some("echo: again"), "log:\n{}", service.log());
    eprintln!("exec round trip (session open): {} ms", sent.elapsed().as_millis());

    // A stranger is gated by the channel's allowlist like on any platform.
    let mut eve = Client::connect(port, "eve");
    eve.say("let me in");
    assert_eq!(eve.next_message(Duration::from_millis(1500)), None);
    assert!(service.wait_for_log("sender not in allowedUsers", WAIT), "log:\n{}", service.log());

    // A permission request comes with buttons (the adapter declared them); a press answers it.
    ann.say("permission please");
    let seen = ann.wait_for("[buttons]");
    let question = seen.last().unwrap();
    assert!(question.contains("perm:1:once"), "{question}");
    ann.say("!press perm:1:once");
    let seen = ann.wait_for("permission granted: proceed_once");
    // The question was edited in place (the adapter declared edits).
    assert!(seen.iter().any(|m| m.starts_with("(edited ")), "{seen:?}\nlog:\n{}", service.log());
    // The adapter's own log lines reach tether's log.
    assert!(service.log().contains("adapter: listening on 127.0.0.1:"), "log:\n{}", service.log());
}

#[test]
fn a_crashed_plugin_is_restarted_and_answers_again() {
    let home = TempDir::new("plugin-crash");
    home.write_config(&bridge_config(&home));
    let service = Service::start(&home, &[]);
    let first = bridge_port(&home, None);
    let killed = Instant::now();
    let status = std::process::Command::new("kill").args(["-9", &first.1.to_string()]).status().unwrap();
    assert!(status.success());
    assert!(service.wait_for_log("the adapter exited (signal: 9", WAIT), "log:\n{}", service.log());
    let (port, pid) = bridge_port(&home, Some(first));
    eprintln!("exec adapter killed to new adapter listening: {} ms", killed.elapsed().as_millis());
    assert_ne!(pid, first.1);
    let mut ann = Client::connect(port, "ann");
    ann.say("are you back?");
    assert_eq!(ann.next_message(WAIT).as_deref(), Some("echo: are you back?"), "log:\n{}", service.log());
    let restarts = read_status(home.path()).and_then(|s| s.pointer("/channels/local/restarts").and_then(Value::as_u64));
    assert_eq!(restarts, Some(1), "{:?}", read_status(home.path()));

    // Stopping tether stops the adapter too (its stdin closes).
    let mut service = service;
    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "log:\n{}", service.log());
    let gone = wait_until(WAIT, || {
        !std::process::Command::new("kill").args(["-0", &pid.to_string()]).status().unwrap().success()
    });
    assert!(gone, "the adapter {pid} outlived tether");
}

/// An adapter that writes junk before a good message, and records what tether writes to it.
const MESSY_ADAPTER: &str = r#"
import json, sys
record = open(sys.argv[1], "a")
def out(text):
    sys.stdout.write(text + "\n"); sys.stdout.flush()
out(json.dumps({"v": 1, "type": "ready", "capabilities": {"maxLength": 500}}))
for i in range(50):
    out("garbage %d {{{" % i)
out("x" * (2 * 1024 * 1024))
out("[1, 2, 3]")
out(json.dumps({"v": 9, "type": "message", "chatId": "c", "senderId": "ann", "text": "future"}))
out(json.dumps({"v": 1, "type": "message", "chatId": "c", "senderId": {"bad": 1}, "text": "bad id"}))
out(json.dumps({"v": 1, "type": "presence", "status": "online"}))
out(json.dumps({"v": 1, "type": "message", "messageId": 1, "chatId": "c", "senderId": "ann", "text": "after garbage", "extra": [1]}))
out(json.dumps({"v": 1, "type": "message", "messageId": 1, "chatId": "c", "senderId": "ann", "text": "after garbage"}))
for line in sys.stdin:
    record.write(line); record.flush()
    req = json.loads(line)
    if req.get("type") == "send":
        out(json.dumps({"v": 1, "type": "sent", "ref": req["ref"], "messageId": "s1"}))
"#;

#[test]
fn garbage_and_huge_lines_from_a_plugin_are_skipped_and_reported_once() {
    let home = TempDir::new("plugin-messy");
    let script = home.path().join("messy.py");
    std::fs::write(&script, MESSY_ADAPTER).unwrap();
    let record = home.path().join("written.jsonl");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"messy": {
            "type": "exec", "command": "python3", "args": [script, record],
            "senderPolicy": "allowlist", "allowedUsers": ["ann"],
        }},
    }));
    let service = Service::start(&home, &[]);
    let written = || std::fs::read_to_string(&record).unwrap_or_default();
    assert!(wait_until(WAIT, || written().contains("echo: after garbage")), "{}\nlog:\n{}", written(), service.log());
    let lines: Vec<Value> = written().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "hello");
    assert_eq!(lines[0]["v"], 1);
    // The message sent twice with the same id was answered once.
    std::thread::sleep(Duration::from_millis(500));
    let answers = written().matches("echo: after garbage").count();
    assert_eq!(answers, 1, "{}", written());
    let log = service.log();
    assert_eq!(log.matches("such lines are reported at most once a minute").count(), 1, "log:\n{log}");
    assert!(log.contains("skipped a line from the adapter: not JSON"), "log:\n{log}");
    assert!(!log.contains("future"), "the version-9 message was skipped");
    assert!(!log.contains("the adapter exited"), "log:\n{log}");
    // It declared no typing: none was written to it.
    assert!(!written().contains(r#""type":"typing""#), "{}", written());
}
