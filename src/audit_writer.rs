//! The audit log's writer thread: takes [`AuditEvent`]s from a bounded queue, formats them
//! (`audit.rs`), appends them to the file (0600) and fsyncs once per batch, rotating by size.
//! Recording never blocks its caller: when the queue is full or the disk fails, the events
//! are counted as dropped (shown in `status.json` and `tether status`) and the service goes on.
//!
//! The daemon installs one writer for the process ([`install`]); any thread records through
//! [`record`], as it would log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditConfig, AuditEvent};

/// Events waiting for the writer at most; more are dropped (and counted). Counted on an
/// unbounded channel: a `bounded` one allocates every slot up front, about 750 KB held for
/// as long as tether runs for a queue that is almost always empty. Several threads record,
/// so a burst may pass the bound by one event per thread.
const QUEUE: usize = 4096;
/// Events written per fsync at most.
const BATCH: usize = 512;
/// How long stopping waits for the queue to drain.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What health shows of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    pub path: String,
    pub content: String,
    pub written: u64,
    /// Events lost: the queue was full or the file could not be written.
    pub dropped: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, lost: usize, why: String) {
        self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() != Some(why.as_str()) {
            log::error!(target: "audit", "{why}; {lost} audit event(s) dropped");
        }
        *last = Some(why);
    }
}

/// A handle to record events (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuditSink {
    queue: Sender<(u64, AuditEvent)>,
    counters: Arc<Counters>,
    config: AuditConfig,
}

impl AuditSink {
    /// Queue `event`, stamped now; never waits.
    pub fn record(&self, event: AuditEvent) {
        if self.queue.len() >= QUEUE {
            self.counters.fail(1, "the audit queue is full".to_string());
        } else if self.queue.send((crate::health::wall_ms(), event)).is_err() {
            self.counters.fail(1, "the audit writer stopped".to_string());
        }
    }

    pub fn status(&self) -> AuditStatus {
        AuditStatus {
            path: self.config.path.display().to_string(),
            content: self.config.content.name().to_string(),
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            last_error: self.counters.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}

/// The running writer: dropping the sink and calling [`AuditWriter::stop`] drains and ends it.
pub struct AuditWriter {
    sink: AuditSink,
    done: Receiver<()>,
}

impl AuditWriter {
    /// Start the writer thread for `config`. Opening the file happens there: a file that
    /// cannot be written is a health problem, not a reason not to start.
    pub fn start(config: &AuditConfig) -> std::io::Result<AuditWriter> {
        let (queue, events) = unbounded();
        let counters = Arc::new(Counters::default());
        let (done_tx, done) = bounded::<()>(0);
        let (config_, counters_) = (config.clone(), counters.clone());
        std::thread::Builder::new().name("audit".into()).spawn(move || {
            let _done = done_tx;
            write_loop(&config_, &events, &counters_);
        })?;
        Ok(AuditWriter { sink: AuditSink { queue, counters, config: config.clone() }, done })
    }

    pub fn sink(&self) -> AuditSink {
        self.sink.clone()
    }

    /// Let the thread write what is queued and end (bounded wait). Every other sink must be
    /// gone (see [`install`]).
    pub fn stop(self) {
        let AuditWriter { sink, done } = self;
        drop(sink);
        let _ = done.recv_timeout(STOP_WAIT);
    }
}

static INSTALLED: RwLock<Option<AuditSink>> = RwLock::new(None);

/// Make `sink` the process's audit log (`None`: none).
pub fn install(sink: Option<AuditSink>) {
    *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = sink;
}

/// Record `event` in the installed audit log, if there is one.
pub fn record(event: AuditEvent) {
    if let Some(sink) = INSTALLED.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
        sink.record(event);
    }
}

/// The installed log's counters, for health.
pub fn status() -> Option<AuditStatus> {
    INSTALLED.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(AuditSink::status)
}

/// Append one event to the log from another process (`tether pairing …`): one write of a
/// whole line (O_APPEND keeps it whole beside the service's lines), fsynced; no rotation.
pub fn append_once(config: &AuditConfig, event: &AuditEvent) -> std::io::Result<()> {
    let clean = |line: &str| crate::redact::clean(line).into_owned();
    let mut line = audit::format_line(event, crate::health::wall_ms(), config.content, &clean);
    line.push('\n');
    let mut file = open(&config.path)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// The open live file and its size.
struct Live {
    file: File,
    size: u64,
}

fn write_loop(config: &AuditConfig, events: &Receiver<(u64, AuditEvent)>, counters: &Counters) {
    let clean = |line: &str| crate::redact::clean(line).into_owned();
    let mut live: Option<Live> = None;
    while let Ok(first) = events.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let lines: Vec<String> = batch
            .iter()
            .map(|(at_ms, event)| audit::format_line(event, *at_ms, config.content, &clean) + "\n")
            .collect();
        let written = match write_batch(config, &mut live, &lines) {
            Ok(()) => lines.len(),
            Err((written, e)) => {
                // Opened again for the next batch (the disk may have room by then).
                live = None;
                let lost = lines.len() - written;
                counters.fail(lost, format!("cannot write the audit log {}: {e}", config.path.display()));
                written
            }
        };
        counters.written.fetch_add(written as u64, Ordering::Relaxed);
    }
    if let Some(live) = live {
        let _ = live.file.sync_data();
    }
}

/// Append a batch of lines and fsync them; the live file is rotated before a line would take
/// it past `maxBytes` (a file holds at least one line, however long). On an error, how many
/// lines were written before it.
fn write_batch(config: &AuditConfig, live: &mut Option<Live>, lines: &[String]) -> Result<(), (usize, std::io::Error)> {
    let (mut buffer, mut buffered, mut written) = (Vec::new(), 0, 0);
    for line in lines {
        let file = live_file(config, live).map_err(|e| (written, e))?;
        let before = file.size + buffer.len() as u64;
        if before > 0 && before + line.len() as u64 > config.max_bytes {
            flush(file, &mut buffer).map_err(|e| (written, e))?;
            written += std::mem::take(&mut buffered);
            *live = None;
            rotate(&config.path, config.max_files).map_err(|e| (written, e))?;
        }
        buffer.extend_from_slice(line.as_bytes());
        buffered += 1;
    }
    let file = live_file(config, live).map_err(|e| (written, e))?;
    flush(file, &mut buffer).map_err(|e| (written, e))?;
    Ok(())
}

/// The live file, opened (or created) when it is not.
fn live_file<'a>(config: &AuditConfig, live: &'a mut Option<Live>) -> std::io::Result<&'a mut Live> {
    if live.is_none() {
        let file = open(&config.path)?;
        let size = file.metadata()?.len();
        *live = Some(Live { file, size });
    }
    live.as_mut().ok_or_else(|| std::io::Error::other("the audit file is not open"))
}

/// Write what is buffered and fsync it.
fn flush(live: &mut Live, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    if buffer.is_empty() {
        return Ok(());
    }
    live.file.write_all(buffer)?;
    live.file.sync_data()?;
    live.size += buffer.len() as u64;
    buffer.clear();
    Ok(())
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().append(true).create(true).mode(0o600).open(path)?;
    // A file made earlier with a wider mode is narrowed (not a device such as /dev/full).
    let meta = file.metadata()?;
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// `<path>` becomes `<path>.1`, `.1` becomes `.2`, …; the oldest beyond `max_files` goes.
fn rotate(path: &Path, max_files: usize) -> std::io::Result<()> {
    if max_files <= 1 {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    for n in (1..max_files).rev() {
        match std::fs::rename(audit::rotated(path, n - 1), audit::rotated(path, n)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Content;

    fn started(dir: &Path, max_bytes: u64, max_files: usize) -> AuditWriter {
        let config = AuditConfig { path: dir.join("audit.jsonl"), content: Content::Full, max_bytes, max_files };
        AuditWriter::start(&config).unwrap()
    }

    fn event(n: usize) -> AuditEvent {
        AuditEvent::AgentStarted { agent: format!("agent-{n:04}") }
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_queue_is_bounded_without_preallocating() {
        let (queue, waiting) = unbounded();
        let config = AuditConfig {
            path: Path::new("/nowhere").to_path_buf(),
            content: Content::None,
            max_bytes: u64::MAX,
            max_files: 1,
        };
        let sink = AuditSink { queue, counters: Arc::new(Counters::default()), config };
        for n in 0..QUEUE + 5 {
            sink.record(event(n));
        }
        assert_eq!(waiting.len(), QUEUE);
        assert_eq!(sink.status().dropped, 5);
        drop(waiting);
        sink.record(event(0));
        assert_eq!(sink.status().dropped, 6, "a stopped writer counts as a drop");
    }

    #[test]
    fn lines_are_written_0600_and_rotation_keeps_max_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("rotate");
        let writer = started(&dir, 400, 3);
        let sink = writer.sink();
        for n in 0..60 {
            sink.record(event(n));
            // Some one at a time, some in one batch: rotation happens inside batches too.
            if n < 30 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.status().written < 60 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = sink.status();
        drop(sink);
        writer.stop();
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
        for name in &names {
            let size = std::fs::metadata(dir.join(name)).unwrap().len();
            assert!(size <= 400, "{name}: {size} bytes");
        }
        let live = dir.join("audit.jsonl");
        assert_eq!(std::fs::metadata(&live).unwrap().permissions().mode() & 0o777, 0o600);
        let last = std::fs::read_to_string(&live).unwrap();
        assert!(last.trim_end().ends_with(r#""agent":"agent-0059"}"#), "{last}");
        assert_eq!((status.written, status.dropped), (60, 0));
    }

    #[test]
    fn a_failing_disk_counts_drops_and_never_blocks() {
        let dir = temp_dir("full");
        let config = AuditConfig {
            path: Path::new("/dev/full").to_path_buf(),
            content: Content::None,
            max_bytes: u64::MAX,
            max_files: 2,
        };
        let writer = AuditWriter::start(&config).unwrap();
        let sink = writer.sink();
        let started = std::time::Instant::now();
        for n in 0..100 {
            sink.record(event(n));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "recording blocked");
        let deadline = started + Duration::from_secs(5);
        while sink.status().dropped < 100 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = sink.status();
        drop(sink);
        writer.stop();
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!((status.dropped, status.written), (100, 0), "{status:?}");
        assert!(status.last_error.is_some_and(|e| e.contains("/dev/full")));
    }
}
