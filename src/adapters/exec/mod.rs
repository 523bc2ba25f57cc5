//! The exec channel: any program that speaks JSON lines on its stdio is a platform (the
//! protocol is docs/plugins.md; `protocol.rs` is its pure part). tether starts the adapter
//! process, writes `hello`, and reads what it writes: `ready` (what it can do), `message`,
//! `callback`, `log`, `health`, and `sent` answers. Replies go through the shared outbox with
//! a courier that writes `send`/`buttons`/`edit`/`typing`/`ack` lines and waits (bounded) for
//! each `sent`.
//!
//! Threads (all through the channel's supervisor): the reader (stdout), the writer (stdin,
//! behind a bounded queue so a stuck adapter never blocks a delivery worker), and the stderr
//! logger. When the adapter exits or closes its stdout, the reader ends and the daemon
//! restarts the whole channel with its backoff (1 s doubling to 60 s, reset after a minute of
//! running): a fresh process gets a fresh `hello`, and unanswered messages stay in the journal.

pub(crate) mod protocol;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, select};
use serde_json::{Map, Value};

use crate::adapters::Fingerprint;
use crate::adapters::outbox::{self, Call, Courier, Failure, Piece};
use crate::adapters::pacing::PacingRules;
use crate::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel, contain};
use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings, Secret, secret_label};
use crate::error::Error;
use crate::event::Inbound;
use crate::health::{Probe, wall_ms};
use crate::journal::{Journal, JournalEntry};
use crate::render::{self, Units};
use crate::vec_map::VecMap;
use protocol::{AdapterCaps, Format, FromAdapter, Line, LineReader, SentResult, Throttle};

/// How long a `send` or `edit` waits for the adapter's `sent`.
const SENT_WAIT: Duration = Duration::from_secs(10);
/// How long a delivery waits for room in the writer's queue.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Lines waiting for the adapter's stdin.
const QUEUE: usize = 256;
/// After the channel is told to stop: queued lines may still be written this long, then
/// stdin closes and the adapter has [`EXIT_GRACE`] to exit before it is killed.
const STOP_DRAIN: Duration = Duration::from_secs(3);
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Bad lines from the adapter are logged at most this often (the rest are counted).
const COMPLAIN_EVERY: Duration = Duration::from_secs(60);
/// The adapter's stderr: lines longer than this are skipped; at most this many lines a
/// minute reach the log.
const STDERR_LINE: usize = 8 * 1024;
const STDERR_LINES_PER_MINUTE: u32 = 120;

/// Exec, as the seam sees it. The capabilities are the most an adapter may declare: what it
/// did not declare in `ready` the courier degrades (an edit becomes a new message, buttons
/// become the question's text, typing is not sent).
pub const PLATFORM: Platform = Platform {
    name: "exec",
    keys: &["command", "args", "env", "format"],
    parse: parse_settings,
    capabilities: Capabilities {
        live_drafts: false,
        edits: true,
        buttons: true,
        max_message_len: protocol::DEFAULT_MAX_LENGTH,
        markup: Markup::Markdown,
        typing_refresh: Some(Duration::from_secs(4)),
        journaled: true,
        addressed_commands: false,
    },
    heartbeats: false,
    spawn,
};

fn parse_settings(keys: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    let command = keys
        .string("command")?
        .ok_or_else(|| keys.error("command", "required for type exec: the adapter program to run, e.g. \"python3\""))?;
    let args = keys.strings("args")?.unwrap_or_default();
    let format = match keys.string("format")?.as_deref() {
        None | Some("markdown") => "markdown",
        Some("plain") => "plain",
        Some(other) => return Err(keys.error("format", format!("\"{other}\" is not one of: markdown, plain"))),
    };
    let mut secrets = VecMap::new();
    let mut plain_env = Map::new();
    keys.nested("env", |env| {
        for name in env.names() {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(env.error(&name, "not a valid environment variable name"));
            }
            // `$NAME` values are secrets (masked by `tether check`, scrubbed from logs).
            match env.raw(&name) {
                Some(Value::String(s)) if s.starts_with('$') => {
                    let secret = env.secret(&name)?.unwrap_or_else(|| Secret::new(String::new(), None));
                    secrets.insert(secret_label(&format!("env.{name}")), secret);
                }
                _ => {
                    plain_env.insert(name.clone(), Value::String(env.string(&name)?.unwrap_or_default()));
                }
            }
        }
        Ok(())
    })?;
    let mut values = VecMap::new();
    values.insert("command", Value::String(command));
    values.insert("args", Value::from(args));
    values.insert("format", Value::String(format.into()));
    if !plain_env.is_empty() {
        values.insert("env", Value::Object(plain_env));
    }
    Ok(PlatformSettings { secrets, values })
}

/// What the reader, the writer and the courier share.
struct Shared {
    channel: String,
    format: Format,
    caps: Mutex<AdapterCaps>,
    /// `send`/`edit` calls waiting for their `sent`, by ref.
    pending: Mutex<HashMap<String, Sender<SentResult>>>,
    /// False once the adapter's stdout ended.
    alive: AtomicBool,
    next_ref: AtomicU64,
}

impl Shared {
    fn caps(&self) -> AdapterCaps {
        *self.caps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sender<SentResult>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Start the adapter process and the channel's threads.
fn spawn(channel: &ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let name = channel.name.clone();
    let journal = io.journal.clone().ok_or_else(|| Error::Other(format!("channel \"{name}\": no journal")))?;
    let command_name = channel.setting("command").unwrap_or_default().to_string();
    let mut command = Command::new(&command_name);
    crate::malloc_tuning::untuned_child(&mut command);
    let args = channel.settings.values.get("args").and_then(Value::as_array);
    command.args(args.into_iter().flatten().filter_map(Value::as_str));
    if let Some(Value::Object(env)) = channel.settings.values.get("env") {
        command.envs(env.iter().filter_map(|(k, v)| Some((k, v.as_str()?))));
    }
    for (label, secret) in &channel.settings.secrets {
        if let Some(var) = label.strip_prefix("env.") {
            command.env(var, secret.expose());
        }
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| {
        Error::Other(format!(
            "channel \"{name}\": cannot start the adapter \"{command_name}\": {e}; check \"command\" and \"args\""
        ))
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::Other(format!("channel \"{name}\": the adapter's stdio is not available")));
    };
    log::info!(target: name.as_str(), "started the adapter \"{command_name}\" (pid {})", child.id());
    let child = Arc::new(Mutex::new(child));
    let format = if channel.setting("format") == Some("plain") { Format::Plain } else { Format::Markdown };
    let shared = Arc::new(Shared {
        channel: name.clone(),
        format,
        caps: Mutex::new(AdapterCaps::default()),
        pending: Mutex::new(HashMap::new()),
        alive: AtomicBool::new(true),
        next_ref: AtomicU64::new(1),
    });
    let (lines_tx, lines_rx) = bounded::<String>(QUEUE);
    let _ = lines_tx.try_send(protocol::hello(&name));

    let (writer_child, writer_stop, writer_name) = (child.clone(), io.stop.clone(), name.clone());
    io.supervisor.spawn(format!("exec-write-{name}"), move || {
        write_loop(stdin, &lines_rx, &writer_stop, &writer_child, &writer_name)
    })?;
    let reader = Reader {
        shared: shared.clone(),
        inbound: io.inbound,
        journal: journal.clone(),
        probe: io.probe.clone(),
        child,
        boot_ms: wall_ms(),
        numbered: 0,
        complaints: Throttle::new(COMPLAIN_EVERY),
    };
    io.supervisor.spawn(format!("exec-read-{name}"), move || reader.run(stdout))?;
    let (stderr_stop, stderr_name) = (io.stop.clone(), name.clone());
    io.supervisor.spawn(format!("exec-stderr-{name}"), move || log_stderr(stderr, &stderr_stop, &stderr_name))?;

    let courier = Arc::new(ExecCourier { shared, lines: lines_tx });
    let settle = outbox::Settle { channel: name, journal: Some(journal), probe: io.probe };
    let outbox = outbox::spawn(courier, settle, &io.supervisor)?;
    Ok(RunningChannel::delivering(outbox))
}

/// Writes queued lines to the adapter's stdin until the channel stops (then a short drain),
/// closes it, and sees the process end.
fn write_loop(stdin: ChildStdin, lines: &Receiver<String>, stop: &Receiver<()>, child: &Mutex<Child>, name: &str) {
    let mut pipe = Some(stdin);
    let mut deadline: Option<Instant> = None;
    loop {
        let line = match deadline {
            None => select! {
                recv(lines) -> line => line.ok(),
                recv(stop) -> _ => {
                    deadline = Some(Instant::now() + STOP_DRAIN);
                    continue;
                }
            },
            Some(at) => lines.recv_deadline(at).ok(),
        };
        let Some(line) = line else { break };
        if let Some(stdin) = pipe.as_mut()
            && let Err(e) = stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush())
        {
            // The adapter is gone or closed its stdin: the reader sees it end and the channel
            // restarts. Later lines are dropped (their calls time out as transient failures).
            log::warn!(target: name, "cannot write to the adapter: {e}");
            pipe = None;
        }
    }
    drop(pipe); // EOF: the adapter's signal to exit.
    end_child(child, EXIT_GRACE, name);
}

/// Wait up to `grace` for the adapter to exit, then kill it; returns how it ended.
fn end_child(child: &Mutex<Child>, grace: Duration, name: &str) -> String {
    let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                log::warn!(target: name, "the adapter did not exit within {} ms; killing it", grace.as_millis());
                let _ = child.kill();
                return child.wait().map_or_else(|e| e.to_string(), |s| s.to_string());
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// Logs the adapter's stderr (bounded lines, at most [`STDERR_LINES_PER_MINUTE`]).
fn log_stderr(stderr: std::process::ChildStderr, stop: &Receiver<()>, name: &str) {
    let mut reader = LineReader::new(BufReader::new(stderr), STDERR_LINE);
    let (mut window, mut count, mut held) = (Instant::now(), 0u32, 0u64);
    while let Ok(Some(line)) = reader.next_line() {
        let now = Instant::now();
        if now.saturating_duration_since(window) >= Duration::from_secs(60) {
            if held > 0 {
                log::warn!(target: name, "adapter stderr: {held} lines not logged (more than {STDERR_LINES_PER_MINUTE} a minute)");
            }
            (window, count, held) = (now, 0, 0);
        }
        count += 1;
        if count > STDERR_LINES_PER_MINUTE {
            held += 1;
            continue;
        }
        match line {
            Line::Text(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                log::info!(target: name, "adapter stderr: {}", protocol::cut(&text, 1000));
            }
            Line::TooLong(n) => log::warn!(target: name, "adapter stderr: skipped a line of {n} bytes"),
        }
    }
    // The channel ends when the adapter's stdout does, not here.
    let _ = stop.recv();
}

struct Reader {
    shared: Arc<Shared>,
    inbound: Sender<Inbound>,
    journal: Arc<Journal>,
    probe: Probe,
    child: Arc<Mutex<Child>>,
    /// Numbers messages the adapter gave no id: unique across restarts of tether.
    boot_ms: u64,
    numbered: u64,
    complaints: Throttle,
}

impl Reader {
    fn name(&self) -> &str {
        self.shared.channel.as_str()
    }

    fn run(mut self, stdout: std::process::ChildStdout) {
        let mut lines = LineReader::new(BufReader::new(stdout), protocol::MAX_LINE);
        loop {
            match lines.next_line() {
                Ok(Some(Line::Text(bytes))) => {
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let channel = self.shared.channel.clone();
                    match contain(Fingerprint::of(&[channel.as_bytes(), &bytes]), || protocol::decode(&bytes, &channel))
                    {
                        Some(Ok(decoded)) => {
                            if !self.take(decoded) {
                                break;
                            }
                        }
                        Some(Err(why)) => self.complain(&format!("skipped a line from the adapter: {why}")),
                        None => self.complain("skipped a line from the adapter that could not be decoded"),
                    }
                }
                Ok(Some(Line::TooLong(n))) => self.complain(&format!(
                    "skipped a line of {n} bytes from the adapter (the limit is {} bytes)",
                    protocol::MAX_LINE
                )),
                Ok(None) => break,
                Err(e) => {
                    log::warn!(target: self.name(), "cannot read the adapter's stdout: {e}");
                    break;
                }
            }
        }
        self.shared.alive.store(false, Ordering::SeqCst);
        // Calls waiting for a `sent` fail now (as transient) instead of at their timeout.
        self.shared.pending().clear();
        let status = end_child(&self.child, Duration::from_secs(1), self.name());
        let why = format!("the adapter exited ({status}); the channel restarts it with backoff");
        log::error!(target: self.name(), "{why}");
        self.probe.failed(&why);
    }

    /// Bad input: logged once a minute at most, with how many were not logged.
    fn complain(&mut self, what: &str) {
        if let Some(held) = self.complaints.allow(Instant::now()) {
            let more = if held > 0 { format!(" ({held} more since the last report)") } else { String::new() };
            log::warn!(target: self.name(), "{what}{more}; such lines are reported at most once a minute");
        }
    }

    /// Act on one line; false when the daemon is gone.
    fn take(&mut self, decoded: FromAdapter) -> bool {
        match decoded {
            FromAdapter::Ready(caps) => {
                log::info!(target: self.name(), "adapter ready: edit {}, typing {}, buttons {}, maxLength {}",
                    caps.edit, caps.typing, caps.buttons, caps.max_length);
                *self.shared.caps.lock().unwrap_or_else(PoisonError::into_inner) = caps;
                self.probe.ok();
            }
            FromAdapter::Message(mut message) => {
                if message.message_id.is_none() {
                    self.numbered += 1;
                    message.message_id = Some(format!("tether-{}-{}", self.boot_ms, self.numbered));
                }
                let entry = JournalEntry { sent_at_ms: message.sent_at_ms.unwrap_or_else(wall_ms), message };
                match self.journal.record(vec![entry]) {
                    Ok(fresh) => {
                        for message in fresh {
                            log::debug!(target: self.name(), "message {:?} from {} in {}", message.message_id, message.sender_id, message.chat_id);
                            if self.inbound.send(Inbound::Message(message)).is_err() {
                                return false;
                            }
                        }
                    }
                    Err(e) => {
                        let error = format!(
                            "cannot write the journal {}: {e}; a message was dropped",
                            self.journal.path().display()
                        );
                        if self.probe.failed(&error) {
                            log::error!(target: self.name(), "{error}");
                        }
                    }
                }
            }
            FromAdapter::Callback(press) => {
                log::debug!(target: self.name(), "button {:?} pressed by {} in {}", press.data, press.sender_id, press.chat_id);
                if self.inbound.send(Inbound::Button(press)).is_err() {
                    return false;
                }
            }
            FromAdapter::Log { level, text } => log::log!(target: self.name(), level, "adapter: {text}"),
            FromAdapter::Health { ok: true, .. } => self.probe.ok(),
            FromAdapter::Health { ok: false, error } => {
                let error = format!("the adapter reports trouble: {}", error.as_deref().unwrap_or("no detail"));
                if self.probe.failed(&error) {
                    log::warn!(target: self.name(), "{error}");
                }
            }
            FromAdapter::Sent { reference, result } => match self.shared.pending().remove(&reference) {
                Some(waiting) => {
                    let _ = waiting.send(result);
                }
                None => {
                    log::debug!(target: self.name(), "a \"sent\" for ref {reference:?}, which no call waits for (late?)")
                }
            },
            FromAdapter::Unknown(kind) => {
                log::debug!(target: self.name(), "ignored a line of type {kind:?} (not in protocol version {})", protocol::VERSION)
            }
        }
        true
    }
}

/// Delivers the outbox's calls as lines on the adapter's stdin.
struct ExecCourier {
    shared: Arc<Shared>,
    lines: Sender<String>,
}

impl ExecCourier {
    fn write(&self, line: String) -> Result<(), Failure> {
        if !self.shared.alive.load(Ordering::SeqCst) {
            return Err(Failure::Transient("the adapter is not running".into()));
        }
        self.lines
            .send_timeout(line, QUEUE_WAIT)
            .map_err(|_| Failure::Transient("the adapter is not reading its stdin".into()))
    }

    /// Write a `send`/`buttons`/`edit` line and wait for its `sent`.
    fn call(&self, reference: String, line: String) -> Result<Option<String>, Failure> {
        let (tx, rx) = bounded(1);
        self.shared.pending().insert(reference.clone(), tx);
        let result = self.write(line).and_then(|()| match rx.recv_timeout(SENT_WAIT) {
            Ok(SentResult::Ok(id)) => Ok(id),
            Ok(SentResult::Failed { error, retry_after: Some(wait), .. }) => {
                log::debug!(target: self.shared.channel.as_str(), "the adapter is rate limited: {error}");
                Err(Failure::RateLimited(wait))
            }
            Ok(SentResult::Failed { error, retry: true, .. }) => Err(Failure::Transient(error)),
            Ok(SentResult::Failed { error, .. }) => Err(Failure::Rejected(error)),
            Err(RecvTimeoutError::Timeout) => {
                Err(Failure::Transient(format!("the adapter did not answer \"sent\" within {} s", SENT_WAIT.as_secs())))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Failure::Transient("the adapter exited".into())),
        });
        self.shared.pending().remove(&reference);
        result
    }

    fn next_ref(&self) -> String {
        format!("r{}", self.shared.next_ref.fetch_add(1, Ordering::SeqCst))
    }
}

fn format_of(piece: &Piece) -> Format {
    if piece.formatted { Format::Markdown } else { Format::Plain }
}

impl Courier for ExecCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        let max = self.shared.caps().max_length;
        match self.shared.format {
            Format::Markdown => render::chunk_markdown(markdown, max, Units::Chars)
                .into_iter()
                .filter(|text| !text.trim().is_empty())
                .map(|text| Piece { text, formatted: true })
                .collect(),
            Format::Plain => render::plain_chunks(markdown, max, Units::Chars)
                .into_iter()
                .filter(|text| !text.trim().is_empty())
                .map(|text| Piece { text, formatted: false })
                .collect(),
        }
    }

    fn plain(&self, _piece: &Piece) -> Option<Piece> {
        None // The protocol has no "markup refused": an adapter converts what it cannot show.
    }

    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        let caps = self.shared.caps();
        match call {
            Call::Typing(chat) if caps.typing => self.write(protocol::typing(chat)).map(|()| None),
            Call::Typing(_) => Ok(None),
            // Files are named in the text for an adapter (attachments by path are inbound only).
            Call::SendFile { .. } => Err(Failure::Rejected("exec adapters take no files yet".into())),
            Call::Ack { callback_id, text } => self.write(protocol::ack(callback_id, text)).map(|()| None),
            Call::Send { chat, piece, buttons } => {
                let reference = self.next_ref();
                let line = if caps.buttons && !buttons.is_empty() {
                    protocol::buttons(&reference, chat, &piece.text, format_of(piece), buttons)
                } else {
                    protocol::send(&reference, chat, &piece.text, format_of(piece))
                };
                self.call(reference, line)
            }
            Call::Edit { chat, message_id, piece } => {
                let reference = self.next_ref();
                let line = if caps.edit {
                    protocol::edit(&reference, chat, message_id, &piece.text, format_of(piece))
                } else {
                    protocol::send(&reference, chat, &piece.text, format_of(piece))
                };
                self.call(reference, line)
            }
        }
    }

    fn pacing(&self) -> PacingRules {
        // A local process: pacing is the adapter's business; this only keeps a runaway turn
        // from flooding it.
        PacingRules {
            chat_burst: 10,
            chat_refill: Duration::from_millis(100),
            bot_limit: 100,
            bot_window: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::config::Config;

    fn parse(exec: Value) -> Result<Config, ConfigError> {
        let text = json!({"channels": {"local": exec}}).to_string();
        crate::config::parse_for_tests(&text, crate::adapters::PLATFORMS, &[("BRIDGE_TOKEN", "token-from-env-1234")])
    }

    #[test]
    fn keys_are_read_and_env_references_are_secrets() {
        let config = parse(json!({
            "type": "exec", "command": "python3", "args": ["a.py", ""], "format": "plain",
            "env": {"PORT": "7010", "TOKEN": "$BRIDGE_TOKEN"}
        }))
        .unwrap();
        let c = &config.channels["local"];
        assert_eq!((c.setting("command"), c.setting("format")), (Some("python3"), Some("plain")));
        assert_eq!(c.settings.values["args"], json!(["a.py", ""]));
        assert_eq!(c.settings.values["env"], json!({"PORT": "7010"}));
        assert_eq!(c.secret("env.TOKEN").map(Secret::expose), Some("token-from-env-1234"));
        let cases = [
            (json!({"type": "exec"}), "key \"command\": required for type exec"),
            (json!({"type": "exec", "command": "x", "args": "a b"}), "key \"args\": expected an array"),
            (json!({"type": "exec", "command": "x", "format": "html"}), "\"html\" is not one of"),
            (json!({"type": "exec", "command": "x", "env": {"A": 1}}), "key \"env.A\": expected a string"),
            (json!({"type": "exec", "command": "x", "env": {"A": "$MISSING"}}), "MISSING is not set"),
        ];
        for (exec, expected) in cases {
            let error = parse(exec.clone()).expect_err(&exec.to_string()).to_string();
            assert!(error.contains(expected), "{exec}: {error}");
        }
    }
}
