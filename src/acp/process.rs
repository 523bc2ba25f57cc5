//! The agent child process and the threads that own its pipes: a writer (stdin), a reader
//! (stdout lines of any length), a stderr drain, and one I/O thread that runs the
//! [`Connection`] state machine between the core and those pipes.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, unbounded};

use crate::acp::connection::Connection;
use crate::error::Error;
use crate::event::{AgentEvent, AgentRequest};

/// Everything needed to start one agent process.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The agent's name in the config (log target and event tag).
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Variables added to the agent's environment (the config's `env` section, then the
    /// agent's own `env`).
    pub env: BTreeMap<String, String>,
    /// Variables removed from the agent's environment: every platform secret, by name and
    /// by value, so the agent's shell tool cannot read bot tokens.
    pub scrub_names: Vec<String>,
    pub scrub_values: Vec<String>,
    pub cwd: PathBuf,
    pub startup_timeout: Duration,
}

/// The core's side of a running agent.
#[derive(Debug)]
pub struct AgentHandle {
    pub requests: Sender<AgentRequest>,
    pub pid: u32,
}

/// Lines of stderr kept for the message when the agent dies.
const STDERR_TAIL: usize = 8;

/// Events flow to the core tagged with the agent's name.
pub type AgentEvents = Sender<(String, AgentEvent)>;

/// Start the agent and its threads. Fails only when the process cannot be spawned; an agent
/// that dies or never answers `initialize` is reported as [`AgentEvent::Exited`].
pub fn spawn(spec: AgentSpec, events: AgentEvents) -> Result<AgentHandle, Error> {
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args).current_dir(&spec.cwd).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in std::env::vars_os() {
        let secret_value = value.to_str().is_some_and(|v| spec.scrub_values.iter().any(|s| s == v));
        if secret_value {
            cmd.env_remove(name);
        }
    }
    for (name, value) in &spec.env {
        if !spec.scrub_values.contains(value) {
            cmd.env(name, value);
        }
    }
    for name in &spec.scrub_names {
        cmd.env_remove(name);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "is it installed and on PATH? Set agent.command in the config, or run `tether demo` to try the built-in demo agent"
        } else {
            "check agent.command and agent.args in the config"
        };
        Error::Agent(format!("cannot start agent \"{}\" (`{}`): {e}; {hint}", spec.name, command_line(&spec)))
    })?;
    let pid = child.id();
    let (stdin, stdout, stderr) = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(i), Some(o), Some(e)) => (i, o, e),
        _ => return Err(Error::Agent(format!("agent \"{}\": its pipes could not be opened", spec.name))),
    };
    log::info!(target: "acp", "started agent \"{}\" (`{}`, pid {pid})", spec.name, command_line(&spec));

    let (from_agent_tx, from_agent_rx) = bounded::<FromAgent>(256);
    let (write_tx, write_rx) = unbounded::<String>();
    let (requests_tx, requests_rx) = unbounded::<AgentRequest>();

    let tx = from_agent_tx.clone();
    named(&format!("acp-out-{}", spec.name), move || {
        read_lines(stdout, |line| tx.send(FromAgent::Line(line)).is_ok());
        let _ = tx.send(FromAgent::Closed);
    })?;
    let tx = from_agent_tx;
    named(&format!("acp-err-{}", spec.name), move || {
        read_lines(stderr, |line| tx.send(FromAgent::Stderr(line)).is_ok());
        let _ = tx.send(FromAgent::Closed);
    })?;
    named(&format!("acp-in-{}", spec.name), move || write_lines(stdin, write_rx))?;
    let name = spec.name.clone();
    let startup_timeout = spec.startup_timeout;
    named(&format!("acp-{}", spec.name), move || {
        run_io(IoThread {
            name,
            child,
            requests: requests_rx,
            from_agent: from_agent_rx,
            writes: write_tx,
            events,
            startup_timeout,
        })
    })?;
    Ok(AgentHandle { requests: requests_tx, pid })
}

enum FromAgent {
    Line(String),
    Stderr(String),
    /// stdout or stderr closed; when both are, the process is exiting.
    Closed,
}

struct IoThread {
    name: String,
    child: Child,
    requests: Receiver<AgentRequest>,
    from_agent: Receiver<FromAgent>,
    writes: Sender<String>,
    events: AgentEvents,
    startup_timeout: Duration,
}

fn run_io(mut io: IoThread) {
    let mut conn = Connection::default();
    let mut stderr_tail: VecDeque<String> = VecDeque::new();
    let started = Instant::now();
    let startup_deadline = after(io.startup_timeout);
    let mut requests = io.requests.clone();
    let mut open_pipes = 2;
    send_lines(&io.writes, conn.start().writes);
    let reason = loop {
        let startup = if conn.is_ready() { never() } else { startup_deadline.clone() };
        select! {
            recv(requests) -> req => match req {
                Ok(req) => send_lines(&io.writes, conn.request(req).writes),
                // The core is gone: close stdin so the agent exits, then reap it below.
                Err(_) => {
                    requests = never();
                    let (dead_tx, _) = unbounded();
                    io.writes = dead_tx;
                }
            },
            recv(io.from_agent) -> msg => match msg {
                Ok(FromAgent::Line(line)) => {
                    let step = conn.receive(&line);
                    send_lines(&io.writes, step.writes);
                    for event in step.events {
                        if let AgentEvent::Ready { .. } = event {
                            log::info!(target: "acp", "agent \"{}\" ready after {} ms", io.name, started.elapsed().as_millis());
                        }
                        let _ = io.events.send((io.name.clone(), event));
                    }
                }
                Ok(FromAgent::Stderr(line)) => {
                    log::info!(target: "acp", "{}: {}", io.name, line);
                    if stderr_tail.len() == STDERR_TAIL {
                        stderr_tail.pop_front();
                    }
                    stderr_tail.push_back(line);
                }
                Ok(FromAgent::Closed) => {
                    open_pipes -= 1;
                    if open_pipes == 0 {
                        break reap(&mut io.child);
                    }
                }
                Err(_) => break reap(&mut io.child),
            },
            recv(startup) -> _ => {
                let _ = io.child.kill();
                let _ = io.child.wait();
                break format!("did not answer initialize within {} ms", io.startup_timeout.as_millis());
            }
        }
    };
    let mut reason = reason;
    // Each stderr line was logged as it came; repeat the last ones only when that log is off.
    if !stderr_tail.is_empty() && !log::log_enabled!(target: "acp", log::Level::Info) {
        reason.push_str("; last stderr: ");
        reason.push_str(&Vec::from(stderr_tail).join(" | "));
    }
    // Not a warning here: the daemon knows whether this exit is a crash or a clean stop.
    log::debug!(target: "acp", "agent \"{}\" {reason}", io.name);
    let _ = io.events.send((io.name, AgentEvent::Exited { reason }));
}

/// Wait a bounded time for an exiting child, then kill it; describe how it ended.
fn reap(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match status.code() {
                    Some(code) => format!("exited with status {code}"),
                    None => format!("was killed ({status})"),
                };
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "closed its output and was killed".to_string();
            }
        }
    }
}

fn send_lines(writes: &Sender<String>, lines: Vec<String>) {
    for line in lines {
        let _ = writes.send(line);
    }
}

fn write_lines(mut stdin: std::process::ChildStdin, lines: Receiver<String>) {
    for line in lines {
        let ok = stdin.write_all(line.as_bytes()).and_then(|()| stdin.write_all(b"\n")).and_then(|()| stdin.flush());
        if let Err(e) = ok {
            log::debug!(target: "acp", "agent stdin closed: {e}");
            return;
        }
    }
    // Dropping stdin here closes it: the agent sees EOF and exits.
}

/// Read newline-terminated lines of any length; stop at EOF, on a read error, or when the
/// consumer says so.
fn read_lines(pipe: impl std::io::Read, mut each: impl FnMut(String) -> bool) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                if !each(line) {
                    return;
                }
            }
        }
    }
}

fn named(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(f)
        .map(|_| ())
        .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
}

fn command_line(spec: &AgentSpec) -> String {
    std::iter::once(spec.command.as_str()).chain(spec.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}
