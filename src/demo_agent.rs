//! The built-in ACP demo agent (`tether demo-agent`): the agent a newcomer chats with in
//! `tether demo`, and the scriptable fake agent the integration tests spawn. This file owns the
//! command line and the I/O loop; the protocol lives in [`machine`], the turn scripts in
//! [`script`], the session files in [`store`].

mod machine;
mod mcp_client;
mod script;
mod store;
mod texts;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

pub use machine::{DemoAgent, Output, Settings};

/// Environment variable naming the state directory when `--state` is not given.
pub const STATE_ENV: &str = "TETHER_DEMO_AGENT_STATE";

/// Longest wait for stdin while idle before looping (nothing else bounds it: an agent waits
/// for its client as long as the client lives).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Lines read ahead from stdin before the reader waits for the main loop.
const READ_AHEAD: usize = 256;

/// `tether demo-agent --help`.
pub const HELP: &str = "\
tether demo-agent: the built-in ACP demo agent on stdin/stdout

Usage: tether demo-agent [OPTIONS]

Speaks ACP (JSON-RPC 2.0, one message per line) on stdin/stdout and writes one diagnostic
line per event to stderr. It answers a prompt with \"echo: <prompt text>\" in a few chunks.
Words in the prompt (any case, whole words, combinable) change that:
  slow          stream \"tick 0 \" .. \"tick 9 \", one every 300 ms; slow=MS sets the interval
                (with long: the pause between its chunks)
  long          about 9000 characters of Markdown with two ```rust blocks, one over 4096
                characters, in many chunks
  empty         stream nothing; stop reason end_turn
  error         answer the prompt with error -32603, data {\"details\":\"demo error requested\"}
  refuse        stop reason refusal
  maxtokens     the echo, then stop reason max_tokens
  permission    tool call \"touch demo.txt\" and a session/request_permission; then
                \"permission granted: <optionId>\" or \"permission denied\"
  tools         a plan, a thought, a read tool call, a mode update and an update of unknown
                kind future_kind_xyz, then the echo
  ext           send the client the request craft/drainMidTurnQueue and report the error code
                it answered (\"ext answered -32601\")
  huge          one agent_message_chunk of 2,000,000 characters
  flood         40,000 one-character agent_message_chunks, as fast as they can be written
  crash         stream \"about to crash\", then exit with status 3 without answering
  crashonce     like crash, unless this same prompt is already in the session's history:
                with --state, the retry after a restart answers with the echo
  hang          stream one chunk, then never answer (session/cancel still ends the turn)
Loops asked in plain words are made through the session's MCP server (tether's `tether mcp`,
from mcpServers; initialize advertises mcpCapabilities) and answered with the tool's text:
  every N minutes TASK   loop_create with \"*/N * * * *\" (\"* * * * *\" for 1) and TASK
  list my loops          loop_list
  cancel loop N          loop_cancel
A prompt sent while another runs on the same session ends the first with error -32603 (as
qwen does). session/cancel ends a turn at once with stop reason cancelled. Prompts starting
with /help, /summary or /joke get canned answers; /model says which model answers. Sessions
offer a `model` config option (demo-standard, demo-fast, demo-careful) that
session/set_config_option changes.

Options:
  --state DIR          keep each session's history in DIR/<sessionId>.json, so a restarted
                       demo agent can session/load it (default: $TETHER_DEMO_AGENT_STATE,
                       else memory only)
  --chunk-delay MS     pause MS milliseconds between the chunks of ordinary answers (default 0)
  --exit-at-start      write one line to stderr and exit with status 3 before reading anything
  --fail-init          answer initialize with error -32603
  --auth-required      advertise a login method, and fail session/new and session/load with
                       error -32000 \"Authentication required\" (data.authMethods, like qwen)
  --images             advertise promptCapabilities.image; the echo then describes each
                       image block after the text: \"[image image/png 1234 bytes]\"
  -h, --help           print this help and exit
";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    Run { settings: Settings, exit_at_start: bool },
}

fn parse_args(args: &[String], state_env: Option<String>) -> Result<Command, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args.iter());
    let mut settings = Settings::default();
    let mut exit_at_start = false;
    let mut state_arg = None;
    let bad = |e: lexopt::Error| e.to_string();
    while let Some(arg) = parser.next().map_err(bad)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("state") => state_arg = Some(PathBuf::from(parser.value().map_err(bad)?)),
            Long("chunk-delay") => {
                let ms: u64 = parser.value().map_err(bad)?.parse().map_err(bad)?;
                settings.chunk_delay = Duration::from_millis(ms);
            }
            Long("exit-at-start") => exit_at_start = true,
            Long("fail-init") => settings.fail_init = true,
            Long("auth-required") => settings.auth_required = true,
            Long("images") => settings.images = true,
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    settings.state_dir = state_arg.or_else(|| state_env.filter(|s| !s.is_empty()).map(PathBuf::from));
    Ok(Command::Run { settings, exit_at_start })
}

/// Run the demo agent on stdin/stdout; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let mut stderr = std::io::stderr();
    let command = match parse_args(args, std::env::var(STATE_ENV).ok()) {
        Ok(command) => command,
        Err(e) => {
            let _ = writeln!(stderr, "demo-agent: {e}; see `tether demo-agent --help`");
            return 2;
        }
    };
    let (settings, exit_at_start) = match command {
        Command::Help => {
            print!("{HELP}");
            return 0;
        }
        Command::Run { settings, exit_at_start } => (settings, exit_at_start),
    };
    if exit_at_start {
        let _ = writeln!(stderr, "demo-agent: exiting at start as asked (--exit-at-start)");
        return 3;
    }
    if let Some(dir) = &settings.state_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        let _ = writeln!(
            stderr,
            "demo-agent: cannot create state directory {}: {e}; pass a writable --state DIR or set {STATE_ENV}",
            dir.display()
        );
        return 1;
    }
    let agent = DemoAgent::new(settings);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serve(agent, BufReader::new(std::io::stdin()), &mut out, &mut stderr)
}

/// What the reader thread (and a finished MCP tool call) hands the main loop.
enum Incoming {
    Line(String),
    /// [`Output::CallTool`] `ticket` ended.
    Tool {
        ticket: u64,
        result: Result<String, String>,
    },
    Eof,
    Failed(std::io::Error),
}

/// Read `\n`-terminated lines of any length (invalid UTF-8 replaced) until EOF or an error.
fn read_lines(mut input: impl BufRead, tx: Sender<Incoming>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let incoming = match input.read_until(b'\n', &mut buf) {
            Ok(0) => Incoming::Eof,
            Ok(_) => Incoming::Line(String::from_utf8_lossy(&buf).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Incoming::Failed(e),
        };
        let last = !matches!(incoming, Incoming::Line(_));
        if tx.send(incoming).is_err() || last {
            return;
        }
    }
}

/// Drive the agent: lines from `input` (read on their own thread) and the agent's timers in,
/// protocol lines to `out` (flushed one by one), diagnostics to `err`. Returns the exit status:
/// 0 at the end of input, 3 for a `crash` turn, 1 if the streams fail.
pub fn serve<R, W, E>(mut agent: DemoAgent, input: R, out: &mut W, err: &mut E) -> i32
where
    R: BufRead + Send + 'static,
    W: Write,
    E: Write,
{
    let (tx, rx): (Sender<Incoming>, Receiver<Incoming>) = crossbeam_channel::bounded(READ_AHEAD);
    let tools = tx.clone();
    let spawned = std::thread::Builder::new().name("demo-agent-stdin".into()).spawn(move || read_lines(input, tx));
    if let Err(e) = spawned {
        let _ = writeln!(err, "demo-agent: cannot start the stdin reader thread: {e}");
        return 1;
    }
    let _ = writeln!(err, "demo-agent: ready (tether {})", env!("CARGO_PKG_VERSION"));
    loop {
        let now = Instant::now();
        let wait = agent.next_deadline().map_or(IDLE_WAIT, |at| at.saturating_duration_since(now)).min(IDLE_WAIT);
        let outputs = match rx.recv_timeout(wait) {
            Ok(Incoming::Line(line)) => {
                let now = Instant::now();
                let mut outputs = agent.handle_line(&line, now);
                outputs.extend(agent.tick(now));
                outputs
            }
            Ok(Incoming::Tool { ticket, result }) => agent.tool_result(ticket, result, Instant::now()),
            Ok(Incoming::Eof) | Err(RecvTimeoutError::Disconnected) => {
                let _ = writeln!(err, "demo-agent: stdin closed, exiting");
                return 0;
            }
            Ok(Incoming::Failed(e)) => {
                let _ = writeln!(err, "demo-agent: cannot read stdin: {e}; exiting");
                return 1;
            }
            Err(RecvTimeoutError::Timeout) => agent.tick(Instant::now()),
        };
        if let Some(status) = emit(outputs, out, err, &tools) {
            return status;
        }
    }
}

/// Write outputs in order; `Some(status)` when the process must exit.
fn emit(outputs: Vec<Output>, out: &mut impl Write, err: &mut impl Write, tools: &Sender<Incoming>) -> Option<i32> {
    for output in outputs {
        match output {
            Output::Line(line) => {
                let written =
                    out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
                if let Err(e) = written {
                    let _ = writeln!(err, "demo-agent: cannot write to stdout: {e}; exiting");
                    return Some(1);
                }
            }
            Output::Log(message) => {
                // One line per event, whatever the message holds, in one write: stderr is
                // unbuffered, and `writeln!` writes each piece on its own, which woke tether's
                // stderr reader three times per line (a real agent writing whole lines does
                // not; the bench would have measured the demo agent's habit).
                let line = format!("demo-agent: {}\n", message.replace(['\n', '\r'], " "));
                let _ = err.write_all(line.as_bytes());
            }
            Output::CallTool { ticket, server, tool, arguments } => {
                // On its own thread: the agent goes on while the tool runs.
                let tools = tools.clone();
                let spawned = std::thread::Builder::new().name("demo-agent-mcp".into()).spawn(move || {
                    let result = mcp_client::call(&server, &tool, &arguments);
                    let _ = tools.send(Incoming::Tool { ticket, result });
                });
                if let Err(e) = spawned {
                    let _ = writeln!(err, "demo-agent: cannot start an MCP call's thread: {e}");
                }
            }
            Output::Exit(status) => {
                let _ = err.flush();
                return Some(status);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests;
