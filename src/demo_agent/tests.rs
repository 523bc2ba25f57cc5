//! Tests of the demo agent's command line and I/O loop ([`serve`] over in-memory streams).

use std::io::{BufReader, Cursor, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Value, json};

use super::*;

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn command_line() {
    let run = |settings| Ok(Command::Run { settings, exit_at_start: false });
    let dir = |d: &str| Some(PathBuf::from(d));
    type Case<'a> = (Vec<String>, Option<&'a str>, Result<Command, ()>);
    let cases: Vec<Case> = vec![
        (args(&[]), None, run(Settings::default())),
        (args(&["--help"]), None, Ok(Command::Help)),
        (args(&["--fail-init", "-h"]), None, Ok(Command::Help)),
        (args(&["--state", "/s"]), Some("/env"), run(Settings { state_dir: dir("/s"), ..Settings::default() })),
        (args(&["--state=/s"]), None, run(Settings { state_dir: dir("/s"), ..Settings::default() })),
        (args(&[]), Some("/env"), run(Settings { state_dir: dir("/env"), ..Settings::default() })),
        (args(&[]), Some(""), run(Settings::default())),
        (
            args(&["--chunk-delay", "40", "--fail-init", "--auth-required"]),
            None,
            run(Settings {
                chunk_delay: Duration::from_millis(40),
                fail_init: true,
                auth_required: true,
                ..Settings::default()
            }),
        ),
        (args(&["--images"]), None, run(Settings { images: true, ..Settings::default() })),
        (args(&["--exit-at-start"]), None, Ok(Command::Run { settings: Settings::default(), exit_at_start: true })),
        (args(&["--chunk-delay", "soon"]), None, Err(())),
        (args(&["--state"]), None, Err(())),
        (args(&["--bogus"]), None, Err(())),
        (args(&["stray"]), None, Err(())),
    ];
    for (argv, env, want) in cases {
        let got = parse_args(&argv, env.map(String::from)).map_err(|_| ());
        assert_eq!(got, want, "{argv:?} env {env:?}");
    }
    let message = parse_args(&args(&["--bogus"]), None).unwrap_err();
    assert!(message.contains("--bogus"), "{message}");
}

#[test]
fn help_and_exit_at_start_do_not_read_stdin() {
    assert_eq!(run(&args(&["--help"])), 0);
    assert_eq!(run(&args(&["--exit-at-start"])), 3);
    assert_eq!(run(&args(&["--nope"])), 2);
}

#[test]
fn help_names_every_word_and_option() {
    let words = [
        "slow",
        "slow=MS",
        "long",
        "empty",
        "error",
        "refuse",
        "maxtokens",
        "permission",
        "tools",
        "ext",
        "huge",
        "crash",
        "hang",
    ];
    for word in words {
        assert!(HELP.contains(&format!("\n  {word} ")) || HELP.contains(word), "{word}");
    }
    for option in ["--state DIR", "--chunk-delay MS", "--exit-at-start", "--fail-init", "--auth-required", "--help"] {
        assert!(HELP.contains(option), "{option}");
    }
    assert!(HELP.contains(STATE_ENV));
    assert!(HELP.lines().all(|l| l.chars().count() <= 100), "a help line is too long");
}

fn request(id: u64, method: &str, params: Value) -> String {
    format!("{}\n", json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

fn prompt(id: u64, session: &str, text: &str) -> String {
    request(id, "session/prompt", json!({"sessionId": session, "prompt": [{"type": "text", "text": text}]}))
}

fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "output does not end with a newline");
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Run [`serve`] over a fixed input; returns (status, stdout lines, stderr text).
fn serve_bytes(settings: Settings, input: String) -> (i32, Vec<Value>, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = serve(DemoAgent::new(settings), Cursor::new(input.into_bytes()), &mut out, &mut err);
    (status, parse_lines(&out), String::from_utf8(err).unwrap())
}

#[test]
fn serve_runs_a_crash_script_and_exits_3_without_answering() {
    let input = [
        request(1, "initialize", json!({"protocolVersion": 1})),
        request(2, "session/new", json!({"cwd": "/ws", "mcpServers": []})),
        prompt(3, "demo-1", "hello"),
        prompt(4, "demo-1", "crash"),
        prompt(5, "demo-1", "never read"),
    ]
    .concat();
    let (status, lines, err) = serve_bytes(Settings::default(), input);
    assert_eq!(status, 3);
    let ids: Vec<&Value> = lines.iter().filter(|l| l.get("method").is_none()).map(|l| &l["id"]).collect();
    assert_eq!(ids, [1, 2, 3]);
    let last = lines.last().unwrap();
    assert_eq!(last["params"]["update"]["content"]["text"], "about to crash");
    assert!(!err.contains("never read"));
    assert!(err.lines().all(|l| l.starts_with("demo-agent: ")), "{err}");
    assert!(err.contains("crash"), "{err}");
}

#[test]
fn serve_exits_0_at_end_of_input_and_reads_lines_of_any_length() {
    let big = "x".repeat(3_000_000);
    let input = [
        request(2, "session/new", json!({"cwd": "/ws", "mcpServers": []})),
        prompt(3, "demo-1", &big),
        "\n".to_string(),
        request(4, "no/such", json!({})),
    ]
    .concat();
    // The last line has no newline: it still counts.
    let input = input.trim_end().to_string();
    let (status, lines, err) = serve_bytes(Settings::default(), input);
    assert_eq!(status, 0);
    let echo: String = lines
        .iter()
        .filter(|l| l["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
        .map(|l| l["params"]["update"]["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echo.len(), "echo: ".len() + big.len());
    assert_eq!(lines[lines.len() - 2]["result"]["stopReason"], "end_turn");
    assert_eq!(lines[lines.len() - 1]["error"]["code"], -32601);
    assert!(err.contains("stdin closed"), "{err}");
}

/// A reader fed by the test, chunk by chunk; EOF when the sender is dropped.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(bytes) => {
                    self.buf = bytes;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A writer whose bytes the test receives.
struct ChannelWriter(Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(bytes.to_vec());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects the agent's output into lines.
struct Lines {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl Lines {
    /// The next line, waiting at most `timeout`.
    fn next(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let bytes = self.rx.recv_deadline(deadline).expect("no line from the demo agent in time");
            self.pending.extend(bytes);
        }
    }
}

#[test]
fn serve_streams_slow_ticks_on_time_and_cancel_answers_at_once() {
    let (in_tx, in_rx) = crossbeam_channel::unbounded();
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let reader = BufReader::new(ChannelReader { rx: in_rx, buf: Vec::new(), pos: 0 });
    let agent = std::thread::spawn(move || {
        let mut out = ChannelWriter(out_tx);
        serve(DemoAgent::new(Settings::default()), reader, &mut out, &mut std::io::sink())
    });
    let mut lines = Lines { rx: out_rx, pending: Vec::new() };
    let wait = Duration::from_secs(5);

    in_tx.send(request(1, "session/new", json!({"cwd": "/ws", "mcpServers": []})).into_bytes()).unwrap();
    assert_eq!(lines.next(wait)["result"]["sessionId"], "demo-1");
    assert_eq!(lines.next(wait)["params"]["update"]["sessionUpdate"], "available_commands_update");

    let started = Instant::now();
    in_tx.send(prompt(2, "demo-1", "slow please").into_bytes()).unwrap();
    assert_eq!(lines.next(wait)["params"]["update"]["content"]["text"], "tick 0 ");
    assert_eq!(lines.next(wait)["params"]["update"]["content"]["text"], "tick 1 ");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "tick 1 came after {elapsed:?}");

    let cancelled_at = Instant::now();
    let cancel = json!({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": "demo-1"}});
    in_tx.send(format!("{cancel}\n").into_bytes()).unwrap();
    let answer = lines.next(wait);
    let latency = cancelled_at.elapsed();
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["result"]["stopReason"], "cancelled");
    assert!(latency < Duration::from_millis(150), "cancel took {latency:?}");

    drop(in_tx);
    let status = agent.join().unwrap();
    assert_eq!(status, 0);
    assert!(lines.rx.try_recv().is_err(), "output after the cancelled answer");
}
