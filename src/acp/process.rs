//! The agent child process and the threads that own its pipes: a writer (stdin, for what
//! the thread that queues a line cannot write at once without blocking), a reader
//! (stdout lines of any length), a stderr reader that logs what the agent says there, and
//! one I/O thread that owns the process (startup deadline, exit) and encodes the requests
//! that read files (prompts with images). The [`Connection`] state machine is shared by the
//! core's [`AgentHandle`], which encodes every other request on the core's thread, the I/O
//! thread, and the stdout reader, which decodes each line and hands the core the events of
//! what one read brought itself: no thread in between either way, since every message is a
//! prompt and a streamed answer is many lines.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::vec_map::VecMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, unbounded};

use crate::acp::connection::{Connection, DecodedLine};
use crate::acp::identity::RunAs;
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
    pub env: VecMap<String, String>,
    /// Variables removed from the agent's environment: every platform secret, by name and
    /// by value, so the agent's shell tool cannot read bot tokens.
    pub scrub_names: Vec<String>,
    pub scrub_values: Vec<String>,
    pub cwd: PathBuf,
    pub startup_timeout: Duration,
    /// Run as this user and group (`agent.user`); `None`: as tether's own user.
    pub run_as: Option<RunAs>,
    /// tether's MCP server for the agent's sessions (the daemon sets it when it serves its
    /// control socket).
    pub mcp: Option<crate::control::McpOffer>,
}

/// The core's side of a running agent.
pub struct AgentHandle {
    /// To the I/O thread: prompts with images (their files are read there), and what follows
    /// them while they wait. Dropping it closes the agent's stdin.
    requests: Sender<AgentRequest>,
    link: Arc<Mutex<Link>>,
    /// To the I/O thread, which stops an agent that does not read its input.
    problems: Sender<FromAgent>,
    pub pid: u32,
}

impl std::fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHandle").field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl AgentHandle {
    /// Pass a request to the agent. It is encoded and queued for the agent's stdin on the
    /// calling thread (the core's): a prompt wakes only the stdin writer, not an I/O thread
    /// and then the writer. A prompt with images goes through the I/O thread, which reads
    /// their files, and so does every request after it until the I/O thread has taken it, so
    /// that the agent gets them in order.
    pub fn send(&self, request: AgentRequest) {
        let mut link = lock(&self.link);
        let reads_files = matches!(&request, AgentRequest::Prompt { images, .. } if !images.is_empty());
        if reads_files || link.queued_for_io > 0 {
            link.queued_for_io += 1;
            drop(link);
            let _ = self.requests.send(request);
            return;
        }
        // Encoded holding the link (the request ids), queued after letting it go: the stdout
        // reader locks the link for each line the agent writes, and queueing a prompt writes
        // it to the pipe then and there. Lines stay in order: only this thread sends directly,
        // and only while the I/O thread holds none of its requests.
        let writes = link.conn.request(request).writes;
        let queue = link.writes.clone();
        drop(link);
        if !push_lines(queue.as_deref(), writes) {
            // Never blocks the core: a full queue already holds what stops the agent.
            let _ = self.problems.try_send(FromAgent::Broken(format!("left {STDIN_QUEUE} lines of input unread")));
        }
    }
}

/// Lines of stderr kept for the message when the agent dies.
const STDERR_TAIL: usize = 8;
/// The longest line the agent may send on stdout. A longer one (or endless output without a
/// newline) means the agent is broken: it is killed, and restarted like after a crash.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// The longest stderr line kept; the rest of a longer one is skipped.
const MAX_STDERR_LINE: usize = 2000;
/// How long the stderr reader waits after a read that emptied the pipe ([`UnhurriedPipe`]),
/// once the agent has answered `initialize`: a start that fails (`tether start --detach`
/// reports it) is seen at once. The lines are only logged and kept for the exit reason, so
/// they can wait; a crash is seen at most this much later, when stderr closes.
const STDERR_PAUSE: Duration = Duration::from_millis(100);
/// Lines waiting to be written to the agent's stdin. An agent that leaves this many unread
/// is not reading its input: it is treated as broken.
const STDIN_QUEUE: usize = 4096;

/// The lines for the agent's stdin. A lock and a condition variable, not a channel: the writer
/// parks as soon as the queue is empty, where a crossbeam receiver first yields the CPU up to
/// four times, once per message here (2.5% of the daemon's CPU under `bench`'s 50 users,
/// `perf` 2026-12-04); std's channel cost 19 KB more code. Dropping it closes stdin.
///
/// A short line with nothing queued before it, the writer thread waiting, is written by the
/// thread that queues it (the core's, for a prompt), through a second, non-blocking handle on
/// the same pipe ([`nonblocking_twin`]): a pipe takes up to `PIPE_BUF` bytes whole or not at
/// all, so that write never blocks the core and never leaves part of a line. A full pipe (the
/// agent is not reading) and every longer line go to the writer thread as before. Waking
/// the writer for each prompt cost a context switch and a `futex` call on each side.
struct StdinQueue {
    shared: Arc<QueuedLines>,
    /// The agent's stdin opened again with `O_NONBLOCK`; `None` where that is not possible
    /// (no /proc), and in tests of the queue alone. Closed with the queue: the agent sees the
    /// end of its input only once every handle on the pipe is closed.
    direct: Option<std::fs::File>,
}

/// The writer's end of a [`StdinQueue`]: the lines in order, each ending in its newline,
/// `None` once the queue is dropped and empty. Dropping it (the writer ended) makes further
/// lines go nowhere.
struct StdinLines(Arc<QueuedLines>);

#[derive(Default)]
struct QueuedLines {
    lines: Mutex<Lines>,
    added: Condvar,
}

#[derive(Default)]
struct Lines {
    /// Each line's bytes with its newline: one write per line, since the pipe is unbuffered,
    /// and a line and its newline written apart wake the agent's reader twice.
    waiting: VecDeque<Vec<u8>>,
    closed: bool,
    /// The writer waits on [`QueuedLines::added`]: only then is it notified (a notification
    /// is a system call even when nobody waits), and only then may a line be written past it.
    writer_waits: bool,
}

fn stdin_queue(direct: Option<std::fs::File>) -> (StdinQueue, StdinLines) {
    let shared = Arc::new(QueuedLines::default());
    (StdinQueue { shared: shared.clone(), direct }, StdinLines(shared))
}

/// The most a line (with its newline) may be to be written past the writer thread: what a
/// pipe takes whole or not at all (`PIPE_BUF`, 4096 on Linux).
const DIRECT_MAX: usize = 4096;

/// A second handle on the agent's stdin pipe that never blocks: /proc/self/fd opens a new
/// description of the pipe, whose `O_NONBLOCK` leaves the writer thread's handle blocking.
/// `None` when that cannot be done (no /proc; the agent already gone): then every line goes
/// through the writer thread.
fn nonblocking_twin(stdin: &impl std::os::fd::AsRawFd) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", stdin.as_raw_fd()))
        .ok()
}

impl StdinQueue {
    /// Queue one line, or write it now (see [`StdinQueue`]); false when [`STDIN_QUEUE`]
    /// lines already wait.
    fn push(&self, line: String) -> bool {
        let mut lines = lock(&self.shared.lines);
        if lines.closed {
            return true;
        }
        if lines.waiting.len() >= STDIN_QUEUE {
            return false;
        }
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        // Under the lock: the writer takes a line only holding it, so none can go out
        // between the check and the write.
        if lines.writer_waits
            && lines.waiting.is_empty()
            && bytes.len() <= DIRECT_MAX
            && let Some(mut direct) = self.direct.as_ref()
        {
            match direct.write(&bytes) {
                Ok(n) if n == bytes.len() => return true,
                // Not taken (full, or broken: the writer meets that too); a part cannot
                // happen at this size, but would be followed by the rest, not the line again.
                Ok(n) => drop(bytes.drain(..n)),
                Err(_) => {}
            }
        }
        lines.waiting.push_back(bytes);
        let wake = lines.writer_waits;
        // Notified after the lock is let go: a writer woken while it is held wakes only to
        // wait for it (a contended lock, and two more context switches, for every line).
        drop(lines);
        if wake {
            self.shared.added.notify_one();
        }
        true
    }
}

impl Drop for StdinQueue {
    fn drop(&mut self) {
        lock(&self.shared.lines).closed = true;
        self.shared.added.notify_one();
    }
}

impl Iterator for StdinLines {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut lines = lock(&self.0.lines);
        loop {
            if let Some(line) = lines.waiting.pop_front() {
                // A burst of lines leaves no big buffer behind.
                if lines.waiting.is_empty() && lines.waiting.capacity() > 64 {
                    lines.waiting = VecDeque::new();
                }
                return Some(line);
            }
            if lines.closed {
                return None;
            }
            lines.writer_waits = true;
            lines = self.0.added.wait(lines).unwrap_or_else(PoisonError::into_inner);
            lines.writer_waits = false;
        }
    }
}

impl Drop for StdinLines {
    fn drop(&mut self) {
        let mut lines = lock(&self.0.lines);
        lines.closed = true;
        lines.waiting = VecDeque::new();
    }
}

#[cfg(test)]
impl StdinLines {
    fn len(&self) -> usize {
        lock(&self.0.lines).waiting.len()
    }

    /// The queued lines, without their newlines.
    fn take_all(&self) -> Vec<String> {
        let mut lines = lock(&self.0.lines);
        lines
            .waiting
            .drain(..)
            .map(|line| String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned())
            .collect()
    }
}

/// Lines read from the agent (stdout and stderr) waiting for the connection thread; a full
/// queue stops the readers, so the agent waits on its pipe. Small: a bounded channel
/// allocates its slots up front, and the connection thread takes each line at once.
const FROM_AGENT_QUEUE: usize = 64;

/// Events flow to the core tagged with the agent's name.
pub type AgentEvents = Sender<(String, AgentEvent)>;

/// Start the agent and its threads. Fails only when the process cannot be spawned; an agent
/// that dies or never answers `initialize` is reported as [`AgentEvent::Exited`].
pub fn spawn(spec: AgentSpec, events: AgentEvents) -> Result<AgentHandle, Error> {
    let mut cmd = Command::new(&spec.command);
    crate::malloc_tuning::untuned_child(&mut cmd);
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
    #[cfg(unix)]
    if let Some(run_as) = &spec.run_as {
        use std::os::unix::process::CommandExt;
        // std also drops the supplementary groups (setgroups) when tether runs as root.
        cmd.uid(run_as.uid).gid(run_as.gid);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if let (Some(run_as), std::io::ErrorKind::PermissionDenied) = (&spec.run_as, e.kind()) {
            &*format!(
                "running it as user \"{}\" (agent.user) needs tether to run as root, and the user to be \
                 allowed to run the command and enter the current directory",
                run_as.user
            )
        } else if e.kind() == std::io::ErrorKind::NotFound {
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

    let (from_agent_tx, from_agent_rx) = bounded::<FromAgent>(FROM_AGENT_QUEUE);
    let (write_tx, write_rx) = stdin_queue(nonblocking_twin(&stdin));
    let (requests_tx, requests_rx) = unbounded::<AgentRequest>();

    let mut conn = Connection::default();
    conn.image_loader = Some(load_image);
    conn.mcp = spec.mcp.clone();
    let mut link = Link { conn, writes: Some(Arc::new(write_tx)), queued_for_io: 0 };
    let start = link.conn.start().writes;
    let broken = !link.send_lines(start);
    let link = Arc::new(Mutex::new(link));
    let exited: ExitGate = Arc::new(Mutex::new(false));

    let tx = from_agent_tx.clone();
    let reader = AgentLines {
        name: spec.name.clone(),
        link: link.clone(),
        exited: exited.clone(),
        events: events.clone(),
        problems: tx.clone(),
        started: Instant::now(),
        held: Vec::new(),
    };
    named(&format!("acp-out-{}", spec.name), move || {
        let closed = ClosedOnDrop(tx);
        let reader = RefCell::new(reader);
        let end = read_lines_then(
            stdout,
            MAX_LINE,
            Overlong::Stop,
            |line| reader.borrow_mut().receive(line),
            || reader.borrow_mut().flush(),
        );
        reader.borrow_mut().flush();
        if end == LinesEnd::TooLong {
            let _ = closed.0.send(FromAgent::Broken(format!("sent a line longer than {} MiB", MAX_LINE >> 20)));
        }
    })?;
    let problems = from_agent_tx.clone();
    let tx = from_agent_tx;
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut stderr_log =
        StderrLog { name: spec.name.clone(), budget: StderrBudget::default(), tail: stderr_tail.clone() };
    let stderr_link = link.clone();
    named(&format!("acp-err-{}", spec.name), move || {
        let _closed = ClosedOnDrop(tx);
        let pause = || {
            if lock(&stderr_link).conn.is_ready() {
                thread::sleep(STDERR_PAUSE);
            }
        };
        let stderr = UnhurriedPipe { pipe: stderr, pause, wait: false };
        read_lines(stderr, MAX_STDERR_LINE, Overlong::Cut, |line| stderr_log.line(line));
    })?;
    named(&format!("acp-in-{}", spec.name), move || write_lines(stdin, write_rx))?;
    let name = spec.name.clone();
    let startup_timeout = spec.startup_timeout;
    let io_link = link.clone();
    named(&format!("acp-{}", spec.name), move || {
        run_io(IoThread {
            name,
            child,
            requests: requests_rx,
            from_agent: from_agent_rx,
            link: io_link,
            exited,
            events,
            startup_timeout,
            stderr_tail,
            broken: broken.then(|| "does not read its input".to_string()),
        })
    })?;
    Ok(AgentHandle { requests: requests_tx, link, problems, pid })
}

/// What the pipe readers tell the I/O thread (the agent's stdout lines go to the core from
/// the reader itself, [`AgentLines`]; its stderr lines are logged by their reader,
/// [`StderrLog`]).
enum FromAgent {
    /// The agent broke the protocol's bounds (why); it is killed.
    Broken(String),
    /// stdout or stderr closed; when both are, the process is exiting.
    Closed,
}

/// Says [`FromAgent::Closed`] when a reader ends, however it ends: a reader that panicked
/// (the stdout reader decodes the agent's lines) must not leave the I/O thread waiting for
/// the pipe forever, the agent never reported gone and never restarted.
struct ClosedOnDrop(Sender<FromAgent>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        if thread::panicking() {
            // The pipe is no longer read: stop the agent, so that it is restarted.
            let _ = self.0.send(FromAgent::Broken("its output could not be read (a tether bug)".into()));
        }
        let _ = self.0.send(FromAgent::Closed);
    }
}

/// The connection and the way to the agent's stdin, shared by the I/O thread and the reader.
struct Link {
    conn: Connection,
    /// The only sender to the stdin writer: `None` once the core is gone, which closes stdin
    /// (the core, the one other holder, holds it only while it queues a request's lines,
    /// which it does without holding the link).
    writes: Option<Arc<StdinQueue>>,
    /// Requests sent to the I/O thread that it has not taken yet ([`AgentHandle::send`]).
    queued_for_io: usize,
}

impl Link {
    /// Queue lines for the agent's stdin; false when [`STDIN_QUEUE`] lines already wait.
    /// A closed queue (the writer ended) is not this function's concern: the exit follows.
    fn send_lines(&self, lines: Vec<String>) -> bool {
        push_lines(self.writes.as_deref(), lines)
    }

    /// Encode a request and queue its lines; false as [`Link::send_lines`].
    fn request(&mut self, request: AgentRequest) -> bool {
        let writes = self.conn.request(request).writes;
        self.send_lines(writes)
    }

    /// [`Link::request`] for one the I/O thread took from [`AgentHandle::send`].
    fn request_from_io(&mut self, request: AgentRequest) -> bool {
        self.queued_for_io = self.queued_for_io.saturating_sub(1);
        self.request(request)
    }
}

/// Queue `lines` for the agent's stdin, unless the core is gone (`None`); false when
/// [`STDIN_QUEUE`] lines already wait. A gone writer takes every line: the agent's exit is
/// noticed elsewhere.
fn push_lines(queue: Option<&StdinQueue>, lines: Vec<String>) -> bool {
    let Some(queue) = queue else { return true };
    lines.into_iter().all(|line| queue.push(line))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True once the I/O thread reported the agent's exit. The reader sends the core a line's
/// events holding it, and the I/O thread sets it before it reports the exit, so no line of a
/// killed agent reaches the core after [`AgentEvent::Exited`]. A lock of its own, not the
/// [`Link`]'s: the reader may wait for room in the core's bounded queue while holding it, and
/// the core locks the link to send a request, so holding the link there could deadlock.
type ExitGate = Arc<Mutex<bool>>;

/// The stdout reader's side: decode each line, and pass the events of the lines one read
/// brought straight to the core.
struct AgentLines {
    name: String,
    link: Arc<Mutex<Link>>,
    exited: ExitGate,
    events: AgentEvents,
    /// To the I/O thread, which kills an agent that stopped reading its input.
    problems: Sender<FromAgent>,
    started: Instant,
    /// Events of the lines read so far, sent when the pipe has nothing more ready
    /// ([`AgentLines::flush`]); text chunks in a row for one session are joined into one.
    held: Vec<AgentEvent>,
}

/// The most text joined into one chunk event before the next one starts. What is held at once
/// is already bounded by one read (the reader's buffer, plus the line in progress); this bounds
/// the text of one event.
const JOINED_TEXT_MAX: usize = 64 * 1024;

impl AgentLines {
    /// Always true: the reader keeps draining stdout until it closes, so an agent writing
    /// into a gone core never blocks on its pipe instead of exiting.
    fn receive(&mut self, line: &str) -> bool {
        if *lock(&self.exited) {
            return true;
        }
        // Decoded before the lock: the core takes it to send a prompt.
        let decoded = DecodedLine::new(line);
        let (events, read_input) = {
            let mut link = lock(&self.link);
            let step = link.conn.receive_decoded(decoded);
            (step.events, link.send_lines(step.writes))
        };
        for event in events {
            self.hold(event);
        }
        if !read_input {
            // The core hears what the agent said before the agent is stopped for it.
            self.flush();
            let _ = self.problems.send(FromAgent::Broken(format!("left {STDIN_QUEUE} lines of input unread")));
        }
        true
    }

    /// Keeps `event` for [`AgentLines::flush`], joined to the chunk before it when both are
    /// text (or both thought) of one session: an agent streams an answer a few words a line,
    /// and each event sent wakes the core and costs it a whole turn of its loop (the bench's
    /// demo agent writes a line a word; joined, a short answer is one event, not five).
    fn hold(&mut self, event: AgentEvent) {
        let joined = match (self.held.last_mut(), &event) {
            (
                Some(AgentEvent::TextChunk { session_id, text }),
                AgentEvent::TextChunk { session_id: next_session, text: next },
            )
            | (
                Some(AgentEvent::Thought { session_id, text }),
                AgentEvent::Thought { session_id: next_session, text: next },
            ) if session_id == next_session && text.len() + next.len() <= JOINED_TEXT_MAX => {
                text.push_str(next);
                true
            }
            _ => false,
        };
        if !joined {
            self.held.push(event);
        }
    }

    /// Sends the held events to the core, in order; called when the pipe has no more lines
    /// ready, so joining adds no wait.
    fn flush(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let exited = lock(&self.exited);
        if *exited {
            self.held.clear();
            return;
        }
        for event in self.held.drain(..) {
            if let AgentEvent::Ready { .. } = event {
                log::info!(target: "acp", "agent \"{}\" ready after {} ms", self.name, self.started.elapsed().as_millis());
            }
            let _ = self.events.send((self.name.clone(), event));
        }
    }
}

struct IoThread {
    name: String,
    child: Child,
    requests: Receiver<AgentRequest>,
    from_agent: Receiver<FromAgent>,
    link: Arc<Mutex<Link>>,
    exited: ExitGate,
    events: AgentEvents,
    startup_timeout: Duration,
    /// The last stderr lines, for the exit reason.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Set when the agent already failed to read its first lines.
    broken: Option<String>,
}

/// The agent's stderr, read with a pause after each read that emptied the pipe: an agent
/// that logs a line or two per prompt woke the reader for each (0.9-1.3 context switches a
/// message under `bench/`, now 0.1); now what it logs within [`STDERR_PAUSE`]
/// comes in one read. A read that fills the buffer is followed at once, so a flood drains at
/// full speed.
struct UnhurriedPipe<R, P> {
    pipe: R,
    pause: P,
    /// The last read was short: pause before the next.
    wait: bool,
}

impl<R: std::io::Read, P: FnMut()> std::io::Read for UnhurriedPipe<R, P> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.wait {
            (self.pause)();
        }
        let n = self.pipe.read(buf)?;
        self.wait = n > 0 && n < buf.len();
        Ok(n)
    }
}

/// The stderr reader's side: each line logged (within a budget) as it comes, the last ones
/// kept for the exit reason.
struct StderrLog {
    name: String,
    budget: StderrBudget,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl StderrLog {
    /// Always true: stderr is drained until it closes.
    fn line(&mut self, line: &str) -> bool {
        let line = clean_stderr_line(line);
        match self.budget.take(Instant::now()) {
            StderrVerdict::Log { suppressed: 0 } => log::info!(target: "acp", "{}: {}", self.name, line),
            StderrVerdict::Log { suppressed } => {
                log::info!(target: "acp", "{}: ({suppressed} stderr lines not logged) {}", self.name, line)
            }
            StderrVerdict::Quiet => {}
        }
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
        true
    }
}

fn run_io(mut io: IoThread) {
    let startup_deadline = after(io.startup_timeout);
    let mut requests = io.requests.clone();
    let mut open_pipes = 2;
    let mut startup_over = false;
    let mut broken: Option<String> = io.broken.take();
    let reason = loop {
        if let Some(why) = broken.take() {
            let _ = io.child.kill();
            let _ = io.child.wait();
            break format!("{why}; treated as broken and stopped");
        }
        // The reader makes the connection ready without waking this thread: the deadline
        // stays armed until it fires or a request comes, and is checked against readiness then.
        let startup = if startup_over || lock(&io.link).conn.is_ready() { never() } else { startup_deadline.clone() };
        select! {
            recv(requests) -> req => match req {
                Ok(req) => {
                    if !lock(&io.link).request_from_io(req) {
                        broken = Some(format!("left {STDIN_QUEUE} lines of input unread"));
                    }
                }
                // The core is gone: close stdin so the agent exits, then reap it below.
                Err(_) => {
                    requests = never();
                    lock(&io.link).writes = None;
                }
            },
            recv(io.from_agent) -> msg => match msg {
                Ok(FromAgent::Broken(why)) => broken = Some(why),
                Ok(FromAgent::Closed) => {
                    open_pipes -= 1;
                    if open_pipes == 0 {
                        break reap(&mut io.child);
                    }
                }
                Err(_) => break reap(&mut io.child),
            },
            recv(startup) -> _ => {
                startup_over = true;
                if lock(&io.link).conn.is_ready() {
                    continue;
                }
                let _ = io.child.kill();
                let _ = io.child.wait();
                break format!("did not answer initialize within {} ms", io.startup_timeout.as_millis());
            }
        }
    };
    let mut reason = reason;
    let stderr_tail = std::mem::take(&mut *io.stderr_tail.lock().unwrap_or_else(PoisonError::into_inner));
    // Each stderr line was logged as it came; repeat the last ones only when that log is off.
    if !stderr_tail.is_empty() && !log::log_enabled!(target: "acp", log::Level::Info) {
        reason.push_str("; last stderr: ");
        reason.push_str(&Vec::from(stderr_tail).join(" | "));
    }
    // Not a warning here: the daemon knows whether this exit is a crash or a clean stop.
    log::debug!(target: "acp", "agent \"{}\" {reason}", io.name);
    let mut exited = lock(&io.exited);
    *exited = true;
    drop(exited);
    let _ = io.events.send((io.name, AgentEvent::Exited { reason }));
}

/// Largest image sent to the agent as an image block.
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;

/// An image file for an ACP image block: its type sniffed from its bytes (never from its
/// name or what the sender claimed), at most [`MAX_IMAGE_BYTES`].
fn load_image(path: &std::path::Path) -> Result<(&'static str, Vec<u8>), String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(format!("larger than {}", crate::media::size_text(MAX_IMAGE_BYTES)));
    }
    let mime = crate::media::sniff_image(&bytes).ok_or("not a PNG, JPEG, GIF or WebP image")?;
    Ok((mime, bytes))
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

/// A stderr line made safe for the log: control characters (terminal escapes, carriage
/// returns, NULs) become `\u{..}` text, so the agent cannot rewrite what a terminal shows.
fn clean_stderr_line(line: &str) -> String {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return line.to_string(); // The usual line, copied whole rather than a char at a time.
    }
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Stderr lines logged per [`STDERR_WINDOW`]; past it they are counted, and the count is
/// logged with the next line that gets through. Pure.
const STDERR_LINES_PER_WINDOW: u32 = 50;
const STDERR_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct StderrBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum StderrVerdict {
    /// Log the line; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Quiet,
}

impl StderrBudget {
    fn take(&mut self, now: Instant) -> StderrVerdict {
        let fresh = self.window_start.is_none_or(|start| now.saturating_duration_since(start) >= STDERR_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= STDERR_LINES_PER_WINDOW {
            self.suppressed += 1;
            return StderrVerdict::Quiet;
        }
        self.logged += 1;
        StderrVerdict::Log { suppressed: std::mem::take(&mut self.suppressed) }
    }
}

fn write_lines(mut stdin: impl Write, lines: StdinLines) {
    for line in lines {
        let ok = stdin.write_all(&line);
        if let Err(e) = ok {
            log::debug!(target: "acp", "agent stdin closed: {e}");
            return;
        }
    }
    // Dropping stdin here closes it: the agent sees EOF and exits.
}

/// Capacity of the line buffer kept between lines; a longer line's buffer is freed after it.
const LINE_BUFFER_KEPT: usize = 64 * 1024;

/// What to do with a line longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlong {
    /// Stop reading: the stream is broken.
    Stop,
    /// Pass on its first `max` bytes and skip the rest up to the newline.
    Cut,
}

/// How [`read_lines`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinesEnd {
    /// End of file, a read error, or the consumer said stop.
    Done,
    /// A line passed `max` bytes without a newline (with [`Overlong::Stop`]).
    TooLong,
}

/// Read newline-terminated lines of at most `max` bytes, never holding more than that; stop
/// at EOF, on a read error, when the consumer says so, or at an overlong line as `overlong`
/// says.
/// The pipe buffer of a reader of lines up to `max` bytes. Each reader keeps it for good,
/// and a long answer touches all of it: 16 KiB reads a 2 MB line in 128 calls (64 KiB kept
/// 48 KiB more resident after one), and short lines (stderr's) need no more than 4 KiB.
fn read_buffer_size(max: usize) -> usize {
    max.clamp(4 * 1024, 16 * 1024)
}

pub(crate) fn read_lines(
    pipe: impl std::io::Read,
    max: usize,
    overlong: Overlong,
    each: impl FnMut(&str) -> bool,
) -> LinesEnd {
    read_lines_then(pipe, max, overlong, each, || {})
}

/// [`read_lines`], calling `drained` whenever every line read so far was passed to `each`
/// and the next one needs another read from the pipe (which may wait).
pub(crate) fn read_lines_then(
    pipe: impl std::io::Read,
    max: usize,
    overlong: Overlong,
    mut each: impl FnMut(&str) -> bool,
    mut drained: impl FnMut(),
) -> LinesEnd {
    let mut reader = BufReader::with_capacity(read_buffer_size(max), pipe);
    let mut buf: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        if reader.buffer().is_empty() {
            drained();
        }
        let available = match reader.fill_buf() {
            Ok([]) | Err(_) => {
                if !buf.is_empty() && !skipping {
                    each(&finish_line(&buf));
                }
                return LinesEnd::Done;
            }
            Ok(bytes) => bytes,
        };
        let newline = available.iter().position(|b| *b == b'\n');
        let ended = newline.is_some();
        let take = newline.map_or(available.len(), |at| at + 1);
        let content = &available[..newline.unwrap_or(available.len())];
        if !skipping {
            let room = max.saturating_sub(buf.len());
            let fits = content.len() <= room;
            buf.extend_from_slice(&content[..content.len().min(room)]);
            if !fits {
                reader.consume(take);
                if overlong == Overlong::Stop {
                    return LinesEnd::TooLong;
                }
                if !each(&finish_line(&buf)) {
                    return LinesEnd::Done;
                }
                buf.clear();
                skipping = !ended;
                continue;
            }
        }
        reader.consume(take);
        if ended {
            if skipping {
                skipping = false;
            } else {
                let more = each(&finish_line(&buf));
                buf.clear();
                if !more {
                    return LinesEnd::Done;
                }
                // One long line (a 2 MB answer in one chunk) must not keep its size
                // allocated for as long as the agent runs.
                if buf.capacity() > LINE_BUFFER_KEPT {
                    buf = Vec::new();
                }
            }
        }
    }
}

/// A line as text, without its line ending. Valid UTF-8 (nearly every line) is borrowed from
/// the read buffer, not copied (the demo agent writes a line a word); only a line with invalid
/// bytes takes the lossy path.
fn finish_line(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = bytes.iter().rposition(|b| !matches!(b, b'\r' | b'\n')).map_or(0, |last| last + 1);
    let line = bytes.get(..end).unwrap_or_default();
    // Checked first: `from_utf8_lossy` alone walks valid text a few times slower.
    match std::str::from_utf8(line) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_readers_keep_small_buffers() {
        assert_eq!(read_buffer_size(MAX_LINE), 16 * 1024);
        assert_eq!(read_buffer_size(MAX_STDERR_LINE), 4 * 1024);
    }

    #[test]
    fn stderr_is_read_with_a_pause_after_a_short_read_only() {
        /// A pipe that gives one write per read, as much of it as fits.
        struct Writes(VecDeque<Vec<u8>>);
        impl std::io::Read for Writes {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some(mut write) = self.0.pop_front() else { return Ok(0) };
                if write.len() > buf.len() {
                    self.0.push_front(write.split_off(buf.len()));
                }
                buf[..write.len()].copy_from_slice(&write);
                Ok(write.len())
            }
        }
        let flood = format!("{}\n", "x".repeat(5000));
        let writes = Writes(["one\n", "two\n", flood.as_str()].map(|w| w.as_bytes().to_vec()).into());
        let pauses = std::cell::Cell::new(0);
        let stderr = UnhurriedPipe { pipe: writes, pause: || pauses.set(pauses.get() + 1), wait: false };
        let mut lines = Vec::new();
        read_lines(stderr, MAX_STDERR_LINE, Overlong::Cut, |line| {
            lines.push(line.len());
            true
        });
        assert_eq!(lines, [3, 3, MAX_STDERR_LINE]);
        // Before "two" (after "one"), before the flood's first 4 KiB (after "two"), none
        // before its rest (the buffer was filled), and before the end (after the rest).
        assert_eq!(pauses.get(), 3);
    }

    #[test]
    fn the_queue_from_the_agent_preallocates_little() {
        let slot = std::mem::size_of::<FromAgent>() + std::mem::size_of::<usize>();
        assert!(FROM_AGENT_QUEUE * slot <= 4096, "{} bytes allocated per agent at start", FROM_AGENT_QUEUE * slot);
    }

    #[test]
    fn the_stdin_queue_is_bounded_without_preallocating() {
        let (writes, mut waiting) = stdin_queue(None);
        let mut link = Link { conn: Connection::default(), writes: Some(Arc::new(writes)), queued_for_io: 0 };
        assert!(link.send_lines(vec!["x".to_string(); STDIN_QUEUE - 1]));
        assert!(link.send_lines(vec!["last".to_string()]), "exactly STDIN_QUEUE lines fit");
        assert!(!link.send_lines(vec!["one too many".to_string()]));
        assert_eq!(waiting.len(), STDIN_QUEUE);
        waiting.by_ref().take(10).for_each(drop);
        assert!(link.send_lines(vec!["read again".to_string(); 10]), "room once the agent reads");
        assert!(!link.send_lines(vec!["full".to_string()]));
        // The core gone: the link drops the only sender, so the writer ends and stdin closes,
        // though the reader still holds the link.
        link.writes = None;
        assert!(link.send_lines(vec!["dropped".to_string()]));
        assert_eq!(waiting.count(), STDIN_QUEUE, "every queued line, then the end: stdin closes");
    }

    #[test]
    fn a_waiting_writer_is_woken_for_each_line_and_at_the_end() {
        let (writes, written) = stdin_queue(None);
        let (got_tx, got) = crossbeam_channel::unbounded();
        let writer = std::thread::spawn(move || written.for_each(|line| drop(got_tx.send(line))));
        for n in 0..20 {
            // Let the writer wait first, mostly: then only a notification wakes it.
            std::thread::sleep(Duration::from_millis(2));
            assert!(writes.push(format!("line {n}")));
            assert_eq!(got.recv_timeout(Duration::from_secs(5)), Ok(format!("line {n}\n").into_bytes()));
        }
        drop(writes);
        assert_eq!(got.recv_timeout(Duration::from_secs(5)), Err(crossbeam_channel::RecvTimeoutError::Disconnected));
        writer.join().unwrap();
    }

    /// The queue of a writer thread waiting for lines (none runs: only a line written past it
    /// reaches the pipe), on a real pipe.
    fn queue_on_a_pipe() -> (StdinQueue, StdinLines, std::io::PipeReader, std::io::PipeWriter) {
        let (reader, pipe) = std::io::pipe().unwrap();
        let (writes, written) = stdin_queue(nonblocking_twin(&pipe));
        assert!(writes.direct.is_some(), "/proc/self/fd opens the pipe again");
        lock(&writes.shared.lines).writer_waits = true;
        (writes, written, reader, pipe)
    }

    #[test]
    fn a_short_line_is_written_past_a_waiting_writer() {
        use std::io::Read;
        let (writes, written, mut reader, _pipe) = queue_on_a_pipe();
        assert!(writes.push("prompt".to_string()));
        assert_eq!(written.len(), 0, "nothing queued, the writer not woken");
        // Read on a thread of its own, so that a line that never came fails the test in
        // bounded time instead of hanging it.
        let (got_tx, got) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut line = [0; 7];
            let _ = got_tx.send(reader.read_exact(&mut line).map(|()| line));
        });
        let line = got.recv_timeout(Duration::from_secs(10)).expect("the line reached the pipe").unwrap();
        assert_eq!(&line, b"prompt\n");
        // Too long to be taken whole by a pipe: the writer's.
        assert!(writes.push("x".repeat(DIRECT_MAX)));
        assert_eq!(written.len(), 1);
        // Behind a queued line, a short one waits its turn.
        assert!(writes.push("after".to_string()));
        assert_eq!(written.take_all(), ["x".repeat(DIRECT_MAX), "after".to_string()]);
        // A writer at work (not waiting) may be writing a line taken from the queue.
        lock(&writes.shared.lines).writer_waits = false;
        assert!(writes.push("later".to_string()));
        assert_eq!(written.take_all(), ["later"]);
    }

    #[test]
    fn a_full_pipe_leaves_lines_to_the_writer_in_order_and_stdin_still_closes() {
        use std::io::Read;
        let (writes, written, mut reader, pipe) = queue_on_a_pipe();
        // An agent that does not read: the pipe fills, and the line that does not fit whole
        // waits for the writer, with the ones after it.
        let mut sent = 0;
        while written.len() == 0 {
            assert!(writes.push(format!("{sent:04}{}", "y".repeat(3000))));
            sent += 1;
            assert!(sent < 1000, "the pipe never filled");
        }
        for _ in 0..3 {
            assert!(writes.push(format!("{sent:04}")));
            sent += 1;
        }
        assert_eq!(written.len(), 4);
        let (read_tx, read) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let mut all = String::new();
            let _ = read_tx.send(reader.read_to_string(&mut all).map(|_| all));
        });
        let writer = std::thread::spawn(move || write_lines(pipe, written));
        // Dropping the queue closes its own handle on the pipe; the writer, once done, the
        // other: only then does the agent see the end of its input.
        drop(writes);
        let all = read.recv_timeout(Duration::from_secs(10)).expect("stdin closed").unwrap();
        writer.join().unwrap();
        let numbers: Vec<usize> = all.lines().map(|line| line[..4].parse().unwrap()).collect();
        assert_eq!(numbers, (0..sent).collect::<Vec<_>>());
    }

    #[test]
    fn requests_after_a_prompt_with_images_wait_behind_it() {
        let (writes, written) = stdin_queue(None);
        let (requests, to_io) = unbounded();
        let (problems, _) = unbounded();
        let mut conn = Connection::default();
        let initialize: serde_json::Value = serde_json::from_str(&conn.start().writes[0]).unwrap();
        conn.receive(
            &serde_json::json!({"jsonrpc": "2.0", "id": initialize["id"], "result": {"protocolVersion": 1}})
                .to_string(),
        );
        assert!(conn.is_ready());
        let link = Link { conn, writes: Some(Arc::new(writes)), queued_for_io: 0 };
        let handle = AgentHandle { requests, link: Arc::new(Mutex::new(link)), problems, pid: 0 };
        let cancel = || AgentRequest::Cancel { session_id: "s1".into() };
        let pictures =
            AgentRequest::Prompt { session_id: "s1".into(), text: "look".into(), images: vec!["a.png".into()] };
        handle.send(cancel());
        assert_eq!((written.len(), to_io.len()), (1, 0), "written on the caller's thread");
        handle.send(pictures);
        handle.send(cancel());
        assert_eq!((written.len(), to_io.len()), (1, 2), "the cancel waits behind the prompt with images");
        // The I/O thread takes both, in order.
        for request in to_io.try_iter() {
            assert!(lock(&handle.link).request_from_io(request));
        }
        handle.send(cancel());
        assert_eq!(to_io.len(), 0, "once the I/O thread caught up, requests are written directly again");
        let methods: Vec<String> = written
            .take_all()
            .into_iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap()["method"].to_string())
            .collect();
        assert_eq!(methods, ["\"session/cancel\"", "\"session/prompt\"", "\"session/cancel\"", "\"session/cancel\""]);
    }

    #[test]
    fn a_reader_that_ends_in_a_panic_still_reports_and_stops_the_agent() {
        let (tx, rx) = unbounded();
        let _ = thread::spawn(move || {
            let _closed = ClosedOnDrop(tx);
            panic!("a reader bug");
        })
        .join();
        assert!(matches!(rx.try_recv(), Ok(FromAgent::Broken(_))));
        assert!(matches!(rx.try_recv(), Ok(FromAgent::Closed)));
        let (tx, rx) = unbounded();
        drop(ClosedOnDrop(tx));
        assert!(matches!(rx.try_recv(), Ok(FromAgent::Closed)), "a normal end is only Closed");
    }

    #[test]
    fn no_agent_line_reaches_the_core_after_the_exit_was_reported() {
        let (writes, _waiting) = stdin_queue(None);
        let mut link = Link { conn: Connection::default(), writes: Some(Arc::new(writes)), queued_for_io: 0 };
        let initialize: serde_json::Value = serde_json::from_str(&link.conn.start().writes[0]).unwrap();
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": initialize["id"], "result": {"protocolVersion": 1}});
        let link = Arc::new(Mutex::new(link));
        let (events, to_core) = unbounded();
        let (problems, _) = unbounded();
        let exited: ExitGate = Arc::new(Mutex::new(false));
        let mut reader = AgentLines {
            name: "a".into(),
            link,
            exited: exited.clone(),
            events,
            problems,
            started: Instant::now(),
            held: Vec::new(),
        };
        *lock(&exited) = true;
        assert!(reader.receive(&answer.to_string()), "the reader keeps draining");
        reader.flush();
        assert!(to_core.try_recv().is_err(), "a killed agent's late answer was passed on");
        *lock(&exited) = false;
        reader.receive(&answer.to_string());
        assert!(to_core.try_recv().is_err(), "held until the pipe has no more lines ready");
        reader.flush();
        assert!(matches!(to_core.try_recv(), Ok((_, AgentEvent::Ready { .. }))));
    }

    /// The bench's 50 users at once found this: the reader waiting for room in the core's
    /// full queue must not hold what the core needs to send a request.
    #[test]
    fn the_core_can_send_while_the_reader_waits_for_room_in_its_queue() {
        let (writes, _waiting) = stdin_queue(None);
        let mut link = Link { conn: Connection::default(), writes: Some(Arc::new(writes)), queued_for_io: 0 };
        let initialize: serde_json::Value = serde_json::from_str(&link.conn.start().writes[0]).unwrap();
        let answer = serde_json::json!({"jsonrpc": "2.0", "id": initialize["id"], "result": {"protocolVersion": 1}});
        let link = Arc::new(Mutex::new(link));
        let (events, to_core) = bounded(1);
        events.send(("a".to_string(), AgentEvent::Exited { reason: "fills the queue".into() })).unwrap();
        let (problems, _) = bounded(1);
        let mut reader = AgentLines {
            name: "a".into(),
            link: link.clone(),
            exited: Arc::new(Mutex::new(false)),
            events,
            problems: problems.clone(),
            started: Instant::now(),
            held: Vec::new(),
        };
        let reading = thread::spawn(move || {
            reader.receive(&answer.to_string());
            reader.flush();
            true
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !link.try_lock().is_ok_and(|link| link.conn.is_ready()) {
            assert!(Instant::now() < deadline, "the reader keeps the link locked while its queue is full");
            thread::sleep(Duration::from_millis(5));
        }
        let (requests, _to_io) = unbounded();
        let handle = AgentHandle { requests, link, problems, pid: 0 };
        let (done, sent) = bounded(1);
        thread::spawn(move || {
            handle.send(AgentRequest::Cancel { session_id: "s1".into() });
            let _ = done.send(());
        });
        assert!(sent.recv_timeout(Duration::from_secs(5)).is_ok(), "the core could not send a request");
        assert!(matches!(to_core.recv_timeout(Duration::from_secs(5)), Ok((_, AgentEvent::Exited { .. }))));
        assert!(matches!(to_core.recv_timeout(Duration::from_secs(5)), Ok((_, AgentEvent::Ready { .. }))));
        assert!(reading.join().unwrap());
    }

    #[test]
    fn text_chunks_in_a_row_for_one_session_reach_the_core_as_one() {
        let (events, to_core) = unbounded();
        let (problems, _) = unbounded();
        let link = Link { conn: Connection::default(), writes: None, queued_for_io: 0 };
        let mut reader = AgentLines {
            name: "a".into(),
            link: Arc::new(Mutex::new(link)),
            exited: Arc::new(Mutex::new(false)),
            events,
            problems,
            started: Instant::now(),
            held: Vec::new(),
        };
        let chunk = |session: &str, kind: &str, text: &str| {
            serde_json::json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": session,
                "update": {"sessionUpdate": kind, "content": {"type": "text", "text": text}}}})
            .to_string()
        };
        let text = |session: &str, text: &str| AgentEvent::TextChunk { session_id: session.into(), text: text.into() };
        let thought = |session: &str, text: &str| AgentEvent::Thought { session_id: session.into(), text: text.into() };
        let long = "x".repeat(JOINED_TEXT_MAX);
        type Lines<'a> = &'a [(&'a str, &'a str, &'a str)];
        let table: &[(Lines, Vec<AgentEvent>)] = &[
            (
                &[("s1", "agent_message_chunk", "echo: "), ("s1", "agent_message_chunk", "hi")],
                vec![text("s1", "echo: hi")],
            ),
            (
                &[
                    ("s1", "agent_thought_chunk", "hm "),
                    ("s1", "agent_thought_chunk", "ok"),
                    ("s1", "agent_message_chunk", "a "),
                    ("s2", "agent_message_chunk", "b"),
                    ("s1", "agent_message_chunk", "c"),
                    ("s1", "agent_message_chunk", "d"),
                ],
                vec![thought("s1", "hm ok"), text("s1", "a "), text("s2", "b"), text("s1", "cd")],
            ),
            (
                &[("s1", "agent_message_chunk", "y"), ("s1", "agent_message_chunk", &long)],
                vec![text("s1", "y"), text("s1", &long)],
            ),
        ];
        for (lines, expected) in table {
            for (session, kind, words) in *lines {
                reader.receive(&chunk(session, kind, words));
            }
            assert!(to_core.try_recv().is_err(), "sent before the pipe had nothing more ready");
            reader.flush();
            let got: Vec<AgentEvent> = to_core.try_iter().map(|(_, event)| event).collect();
            assert_eq!(&got, expected, "{lines:?}");
        }
    }

    #[test]
    fn drained_is_called_whenever_the_next_line_needs_another_read() {
        struct Pieces(Vec<&'static [u8]>);
        impl std::io::Read for Pieces {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let piece = self.0.remove(0);
                buf[..piece.len()].copy_from_slice(piece);
                Ok(piece.len())
            }
        }
        let calls = RefCell::new(Vec::new());
        let pipe = Pieces(vec![b"one\ntwo\n", b"thr", b"ee\nfour\nfi", b"ve\n"]);
        let end = read_lines_then(
            pipe,
            1024,
            Overlong::Stop,
            |line| {
                calls.borrow_mut().push(line.to_string());
                true
            },
            || calls.borrow_mut().push("-".into()),
        );
        assert_eq!(end, LinesEnd::Done);
        assert_eq!(calls.into_inner(), ["-", "one", "two", "-", "-", "three", "four", "-", "five", "-"]);
    }

    fn lines(input: &[u8], max: usize, overlong: Overlong) -> (Vec<String>, LinesEnd) {
        let mut got = Vec::new();
        let end = read_lines(input, max, overlong, |l| {
            got.push(l.to_string());
            true
        });
        (got, end)
    }

    #[test]
    fn finish_line_table() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"\r\n", ""),
            (b"{\"a\":1}\n", "{\"a\":1}"),
            (b"line\r\n\r\n", "line"),
            (b"in\rside\n", "in\rside"),
            ("caf\u{e9} \u{1F600}\n".as_bytes(), "caf\u{e9} \u{1F600}"),
            (b"bad \xff byte\n", "bad \u{FFFD} byte"),
            (b"cut \xe2\x82\r\n", "cut \u{FFFD}"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(finish_line(bytes), *expected, "{bytes:?}");
        }
    }

    #[test]
    fn read_lines_table() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(lines(b"a\nbb\r\nccc", 3, Overlong::Stop), (s(&["a", "bb", "ccc"]), LinesEnd::Done));
        assert_eq!(lines(b"abc\nabcd\nx\n", 3, Overlong::Stop), (s(&["abc"]), LinesEnd::TooLong));
        assert_eq!(lines(b"abc\nabcdef\nx\n", 3, Overlong::Cut), (s(&["abc", "abc", "x"]), LinesEnd::Done));
        assert_eq!(lines(b"", 3, Overlong::Cut), (s(&[]), LinesEnd::Done));
    }

    /// A 200 MB stdout line without a newline: reading stops after 16 MiB (memory stays
    /// bounded) and the stream is reported broken.
    #[test]
    fn an_endless_line_is_cut_off_at_the_limit() {
        struct Endless(usize);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0);
                buf[..n].fill(b'x');
                self.0 -= n;
                Ok(n)
            }
        }
        let mut source = Endless(200 * 1024 * 1024);
        let mut got = 0;
        let end = read_lines(&mut source, MAX_LINE, Overlong::Stop, |_| {
            got += 1;
            true
        });
        assert_eq!((end, got), (LinesEnd::TooLong, 0));
        let read = 200 * 1024 * 1024 - source.0;
        assert!(read <= MAX_LINE + 64 * 1024, "read {read} bytes before giving up");
    }

    #[test]
    fn stderr_is_cleaned_and_rate_limited() {
        assert_eq!(clean_stderr_line("ok\tfine"), "ok\tfine");
        assert_eq!(clean_stderr_line("\u{1b}[2J\rfake\u{0}"), "\\u{1b}[2J\\u{d}fake\\u{0}");
        let t0 = Instant::now();
        let mut budget = StderrBudget::default();
        let logged = (0..10_000).filter(|_| budget.take(t0) != StderrVerdict::Quiet).count();
        assert_eq!(logged, STDERR_LINES_PER_WINDOW as usize);
        assert_eq!(budget.take(t0 + STDERR_WINDOW), StderrVerdict::Log { suppressed: 10_000 - 50 });
    }
}
