//! Running as a service: the lock and pid file that make a second start refuse, `tether stop`,
//! `tether status`, `start --detach`, the log file that SIGHUP reopens, and the small file
//! helpers the state files share (private directories, atomic writes).
//!
//! Who runs: the service holds an exclusive `flock` on `service.lock` for its whole life (the
//! kernel drops it when the process dies, even by `kill -9`), so two starts racing cannot both
//! run. `service.pid` says who holds it, for people and for `stop`/`status`: JSON with the pid,
//! `startedAt`, the channels, and `procStart` (field 22 of `/proc/PID/stat`) plus the boot id
//! and process name, so that a recycled pid is not mistaken for the service.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::health::{self, ServiceStatus};

pub const PID_FILE: &str = "service.pid";
pub const LOCK_FILE: &str = "service.lock";
pub const STATUS_FILE: &str = "status.json";

/// How long `stop` waits after SIGTERM, and after SIGKILL (reference spec 8.3).
const STOP_GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(2);
const STOP_POLL: Duration = Duration::from_millis(200);

/// The content of `service.pid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PidRecord {
    pub pid: u32,
    /// ISO-8601 UTC.
    pub started_at: String,
    pub channels: Vec<String>,
    /// Field 22 of `/proc/PID/stat`: start time in clock ticks after boot.
    #[serde(default)]
    pub proc_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` when written: a record of another boot is stale.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// `/proc/PID/comm` of the service (its program name, at most 15 bytes).
    #[serde(default)]
    pub comm: Option<String>,
    /// Unix ms, for uptime.
    #[serde(default)]
    pub started_at_ms: Option<u64>,
}

/// What `/proc` says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub alive: bool,
    pub start: Option<u64>,
    pub comm: Option<String>,
}

/// What a `service.pid` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFileState {
    Absent,
    /// Not a pid record (cut short, edited by hand): replace it.
    Invalid(String),
    /// Its process is gone (or it was written in another boot): replace it.
    Stale(PidRecord),
    /// Its pid now belongs to another process: replace it.
    Foreign(PidRecord),
    Running(PidRecord),
}

/// Decide what a pid file means. Pure: `probe` answers for a pid, `own_pid` is the caller's.
pub fn judge(
    content: Option<&str>,
    probe: impl Fn(u32) -> ProcInfo,
    own_pid: u32,
    boot_id: Option<&str>,
) -> PidFileState {
    let Some(text) = content else { return PidFileState::Absent };
    let record: PidRecord = match serde_json::from_slice(text.as_bytes()) {
        Ok(record) => record,
        Err(e) => return PidFileState::Invalid(format!("not a pid record ({e})")),
    };
    if record.pid == own_pid || record.pid == 0 {
        return PidFileState::Foreign(record);
    }
    if let (Some(theirs), Some(ours)) = (record.boot_id.as_deref(), boot_id)
        && theirs != ours
    {
        return PidFileState::Stale(record);
    }
    let info = probe(record.pid);
    if !info.alive {
        return PidFileState::Stale(record);
    }
    let start_differs = matches!((record.proc_start, info.start), (Some(a), Some(b)) if a != b);
    let comm_differs = matches!((&record.comm, &info.comm), (Some(a), Some(b)) if a != b);
    if start_differs || comm_differs {
        return PidFileState::Foreign(record);
    }
    PidFileState::Running(record)
}

/// Read `/proc/PID/stat` and `/proc/PID/comm`. A zombie counts as gone.
pub fn proc_info(pid: u32) -> ProcInfo {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        if !Path::new("/proc/self/stat").exists() {
            // No /proc (unusual): ask `kill -0`, and know nothing more.
            return ProcInfo { alive: send_signal(pid, "0"), ..ProcInfo::default() };
        }
        return ProcInfo::default();
    };
    let (state, start) = parse_stat(&stat);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_string());
    ProcInfo { alive: state.is_some_and(|s| s != "Z" && s != "X"), start, comm }
}

/// (state, starttime) from a `/proc/PID/stat` line. The name (field 2) is in parentheses and
/// may hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> (Option<&str>, Option<u64>) {
    let Some((_, after_name)) = stat.rsplit_once(')') else { return (None, None) };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    (fields.first().copied(), fields.get(19).and_then(|f| f.parse().ok()))
}

pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

fn read_pid_file(home: &Path) -> Option<String> {
    std::fs::read_to_string(home.join(PID_FILE)).ok()
}

/// The service in `home`, judged from its pid file.
pub fn inspect(home: &Path) -> PidFileState {
    judge(read_pid_file(home).as_deref(), proc_info, std::process::id(), boot_id().as_deref())
}

fn already_running(record: &PidRecord) -> Error {
    Error::Other(format!(
        "tether is already running (PID {}, started {}).\nUse \"tether stop\" to stop it first.",
        record.pid, record.started_at
    ))
}

/// The claim on `home` of the running service: the lock, and the pid file it wrote. Dropping
/// it removes the pid file (the lock goes with the process).
#[derive(Debug)]
pub struct ServiceClaim {
    _lock: Option<File>,
    pid_path: PathBuf,
    pub record: PidRecord,
}

impl ServiceClaim {
    /// Take `home` for this process, or say who has it.
    pub fn take(home: &Path, channels: &[String]) -> Result<ServiceClaim, Error> {
        crate::store::ensure_private_dir(home)?;
        let lock_path = home.join(LOCK_FILE);
        let lock = open_private(&lock_path, false).map_err(|source| Error::File {
            path: lock_path.clone(),
            action: "open",
            source,
        })?;
        let lock = match lock.try_lock() {
            Ok(()) => Some(lock),
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes its pid file right after locking: give it a moment.
                let deadline = Instant::now() + Duration::from_secs(2);
                loop {
                    if let PidFileState::Running(record) = inspect(home) {
                        return Err(already_running(&record));
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Other(format!(
                            "another tether holds {} but has not written {PID_FILE}; \
                             use \"tether stop\", or wait a moment and try again",
                            lock_path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(std::fs::TryLockError::Error(e)) => {
                log::warn!(target: "tether", "cannot lock {} ({e}); relying on the pid file alone", lock_path.display());
                None
            }
        };
        let pid_path = home.join(PID_FILE);
        let own = proc_info(std::process::id());
        let record = PidRecord {
            pid: std::process::id(),
            started_at: crate::logging::utc_now(),
            channels: channels.to_vec(),
            proc_start: own.start,
            boot_id: boot_id(),
            comm: own.comm,
            started_at_ms: Some(health::wall_ms()),
        };
        let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Other(format!("pid record: {e}")))?;
        for _ in 0..3 {
            match inspect(home) {
                PidFileState::Running(other) => return Err(already_running(&other)),
                PidFileState::Absent => {}
                PidFileState::Invalid(why) => {
                    log::warn!(target: "tether", "replacing {}: {why}", pid_path.display());
                    let _ = std::fs::remove_file(&pid_path);
                }
                PidFileState::Stale(old) | PidFileState::Foreign(old) => {
                    log::info!(target: "tether", "replacing the pid file of an earlier run (PID {}, started {}): that process is gone", old.pid, old.started_at);
                    let _ = std::fs::remove_file(&pid_path);
                }
            }
            match create_exclusive(&pid_path, text.as_bytes()) {
                Ok(true) => return Ok(ServiceClaim { _lock: lock, pid_path, record }),
                Ok(false) => continue, // Someone wrote one meanwhile: judge it again.
                Err(source) => return Err(Error::File { path: pid_path, action: "write", source }),
            }
        }
        Err(Error::Other(format!("{} keeps changing: is another tether starting?", pid_path.display())))
    }
}

impl ServiceClaim {
    /// Rewrite the pid file with the channels now running (after a reload).
    pub fn update_channels(&mut self, channels: &[String]) {
        self.record.channels = channels.to_vec();
        if let Err(e) = crate::store::write_json_atomic(&self.pid_path, &self.record) {
            log::warn!(target: "tether", "cannot update {}: {e}", self.pid_path.display());
        }
    }
}

impl Drop for ServiceClaim {
    fn drop(&mut self) {
        let ours = read_pid_file(self.pid_path.parent().unwrap_or(Path::new(".")))
            .and_then(|t| serde_json::from_slice::<PidRecord>(t.as_bytes()).ok())
            .is_some_and(|r| r.pid == self.record.pid);
        if ours {
            let _ = std::fs::remove_file(&self.pid_path);
        }
    }
}

/// Create `path` with `bytes` only if it does not exist, never leaving a partly written file
/// behind: the content goes to a temp file that is then hard-linked into place (fails if the
/// name exists). Where hard links are not supported, `create_new`. Ok(false): it exists.
fn create_exclusive(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(mut file) => file.write_all(bytes).and_then(|()| file.sync_all()).map(|()| true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// `tether stop`: SIGTERM, wait up to 5 s, then SIGKILL. Messages and exit codes as the
/// reference (spec 8.3): 0 when nothing runs or it stopped, 1 when it survived SIGKILL.
pub fn stop(home: &Path) -> i32 {
    let pid_path = home.join(PID_FILE);
    let record = match inspect(home) {
        PidFileState::Running(record) => record,
        PidFileState::Absent => {
            println!("No channel service is running.");
            return 0;
        }
        PidFileState::Invalid(_) | PidFileState::Stale(_) | PidFileState::Foreign(_) => {
            let _ = std::fs::remove_file(&pid_path);
            println!("No channel service is running.");
            return 0;
        }
    };
    println!("Stopping channel service (PID {})...", record.pid);
    if !send_signal(record.pid, "TERM") {
        println!("Failed to send signal — process may have already exited.");
        remove_if_pid(&pid_path, record.pid);
        return 0;
    }
    if wait_gone(&record, STOP_GRACE) {
        remove_if_pid(&pid_path, record.pid);
        println!("Service stopped.");
        return 0;
    }
    println!("Service did not exit within 5 seconds. Sending SIGKILL...");
    send_signal(record.pid, "KILL");
    if wait_gone(&record, KILL_GRACE) {
        remove_if_pid(&pid_path, record.pid);
        println!("Service killed.");
        0
    } else {
        eprintln!("tether: PID {} survived SIGKILL; {} is left in place", record.pid, pid_path.display());
        1
    }
}

/// Whether the process of `record` is gone within `within`.
fn wait_gone(record: &PidRecord, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let info = proc_info(record.pid);
        let same = info.alive && (record.proc_start.is_none() || info.start == record.proc_start);
        if !same {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(STOP_POLL);
    }
}

fn remove_if_pid(pid_path: &Path, pid: u32) {
    let same = std::fs::read_to_string(pid_path)
        .ok()
        .and_then(|t| serde_json::from_slice::<PidRecord>(t.as_bytes()).ok())
        .is_some_and(|r| r.pid == pid);
    if same {
        let _ = std::fs::remove_file(pid_path);
    }
}

/// Send `signal` (a name such as `TERM`, or `0` to probe) with the `kill` program, or the
/// shell's `kill` where there is no such program. True when it was delivered.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    let pid = pid.to_string();
    let quiet = |mut c: Command| {
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let mut kill = quiet(Command::new("kill"));
    kill.args(["-s", signal, &pid]);
    match kill.status() {
        Ok(status) => status.success(),
        Err(_) => {
            let mut sh = quiet(Command::new("sh"));
            sh.args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal, &pid]);
            sh.status().is_ok_and(|s| s.success())
        }
    }
}

/// Exit status of `tether status` when no service runs (LSB: "program is not running").
pub const STATUS_NOT_RUNNING: i32 = 3;

/// `tether status [--json]`: from the pid file and `status.json`. Exit 0 when running, 3 when not.
pub fn status(home: &Path, json: bool) -> i32 {
    let record = match inspect(home) {
        PidFileState::Running(record) => record,
        _ => {
            if json {
                println!("{}", serde_json::json!({"running": false}));
            } else {
                println!("No channel service is running.");
            }
            return STATUS_NOT_RUNNING;
        }
    };
    let published = read_status(home).filter(|s| s.pid == record.pid);
    let now = health::wall_ms();
    if json {
        let mut value = serde_json::json!({"running": true, "pid": record.pid});
        if let Some(status) = &published {
            let healthy = status.channels.values().all(|c| c.healthy);
            if let (Some(map), Ok(serde_json::Value::Object(fields))) =
                (value.as_object_mut(), serde_json::to_value(status))
            {
                map.extend(fields);
                map.insert("healthy".into(), healthy.into());
                map.insert("uptimeSecs".into(), (now.saturating_sub(status.started_at) / 1000).into());
                map.insert("statusAgeSecs".into(), (now.saturating_sub(status.updated_at) / 1000).into());
            }
        }
        println!("{value}");
    } else {
        print!("{}", health::render(record.pid, published.as_ref(), now));
    }
    0
}

pub fn read_status(home: &Path) -> Option<ServiceStatus> {
    let text = std::fs::read_to_string(home.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(text.as_bytes()).ok()
}

pub fn write_status(home: &Path, status: &ServiceStatus) -> Result<(), Error> {
    // Not flushed to disk: a power cut leaves a stale or unreadable file, which readers take
    // as "not published" (and a stale one names a pid that is gone).
    crate::store::write_json_unsynced(&home.join(STATUS_FILE), status)
}

/// `tether start --detach`: start this program again without `--detach`, in its own process
/// group, with stdin closed and output appended to `log_file`; wait until it reports
/// `running` in `status.json` (exit 0), or exits, or `wait` passes (exit 1, reason printed).
pub fn detach(args: &[OsString], home: &Path, log_file: &Path, wait: Duration) -> Result<i32, Error> {
    use std::os::unix::process::CommandExt;
    if let PidFileState::Running(record) = inspect(home) {
        return Err(already_running(&record));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find this program's path: {e}")))?;
    let mut child_args: Vec<OsString> = args.iter().filter(|a| *a != "--detach").cloned().collect();
    if !args.iter().any(|a| a == "--log-file" || a.to_string_lossy().starts_with("--log-file=")) {
        child_args.push("--log-file".into());
        child_args.push(log_file.into());
    }
    let log_err = |source| Error::File { path: log_file.to_path_buf(), action: "open", source };
    let out = open_private(log_file, true).map_err(log_err)?;
    let log_start = out.metadata().map(|m| m.len()).unwrap_or(0);
    let err = out.try_clone().map_err(log_err)?;
    let mut child = Command::new(&exe)
        .args(&child_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start {} in the background: {e}", exe.display())))?;
    let pid = child.id();
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "tether: the service failed to start ({status}); the end of {}:\n{}",
                log_file.display(),
                log_tail(log_file, log_start, 20)
            );
            return Ok(status.code().filter(|c| *c != 0).unwrap_or(1));
        }
        if read_status(home).is_some_and(|s| s.pid == pid && s.state == "running") {
            println!("tether is running in the background (PID {pid}); log: {}", log_file.display());
            return Ok(0);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "tether: the service (PID {pid}) did not report running within {} s; it may still be starting. \
                 See {} and `tether status`.",
                wait.as_secs(),
                log_file.display()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines written to `path` after byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = file.take(1 << 20).read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The log file of `--log-file`: appended to, reopened on SIGHUP (after logrotate moved it).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    pub fn open(path: &Path) -> Result<Arc<LogFile>, Error> {
        let file = open_private(path, true).map_err(|source| Error::File {
            path: path.to_path_buf(),
            action: "open",
            source,
        })?;
        Ok(Arc::new(LogFile { path: path.to_path_buf(), file: Mutex::new(file) }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open the path again (a new file if it was moved away).
    pub fn reopen(&self) -> io::Result<()> {
        let file = open_private(&self.path, true)?;
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
        Ok(())
    }

    /// A writer for the logger.
    pub fn writer(self: &Arc<LogFile>) -> LogWriter {
        LogWriter(self.clone())
    }
}

/// Writes go to whichever file [`LogFile`] has open now.
#[derive(Debug)]
pub struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.file.lock().unwrap_or_else(PoisonError::into_inner).write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.file.lock().unwrap_or_else(PoisonError::into_inner).flush()
    }
}

fn open_private(path: &Path, append: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    if append {
        options.append(true);
    } else {
        options.read(true).write(true);
    }
    options.create(true).mode(0o600).open(path)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, start: Option<u64>, boot: Option<&str>, comm: Option<&str>) -> PidRecord {
        PidRecord {
            pid,
            started_at: "2026-11-21T04:40:07.876Z".into(),
            channels: vec!["phone".into()],
            proc_start: start,
            boot_id: boot.map(str::to_string),
            comm: comm.map(str::to_string),
            started_at_ms: Some(1),
        }
    }

    /// pid 100: a live tether started at tick 5000; pid 200: a live shell; others are gone.
    fn probe(pid: u32) -> ProcInfo {
        match pid {
            100 => ProcInfo { alive: true, start: Some(5000), comm: Some("tether".into()) },
            200 => ProcInfo { alive: true, start: Some(5000), comm: Some("sh".into()) },
            _ => ProcInfo::default(),
        }
    }

    #[test]
    fn pid_file_decisions() {
        let ours = record(100, Some(5000), Some("boot-a"), Some("tether"));
        let text = |r: &PidRecord| serde_json::to_string(r).unwrap();
        let cases: Vec<(Option<String>, &str)> = vec![
            (None, "absent"),
            (Some(String::new()), "invalid"),
            (Some("{\"pid\": 100".into()), "invalid"),
            (Some("[1, 2]".into()), "invalid"),
            (Some(text(&ours)), "running"),
            // Dead pid.
            (Some(text(&record(300, Some(5000), Some("boot-a"), Some("tether")))), "stale"),
            // Written in another boot: whoever has that pid now is not it.
            (Some(text(&record(100, Some(5000), Some("boot-b"), Some("tether")))), "stale"),
            // Recycled pid: alive, but started at another time...
            (Some(text(&record(100, Some(4999), Some("boot-a"), Some("tether")))), "foreign"),
            // ...or another program.
            (Some(text(&record(200, Some(5000), Some("boot-a"), Some("tether")))), "foreign"),
            // Our own pid (a record from a previous life of this pid, e.g. in a container).
            (Some(text(&record(7, Some(5000), Some("boot-a"), Some("tether")))), "foreign"),
            // A minimal record (the reference's shape): alive is all we can check.
            (Some(r#"{"pid": 100, "startedAt": "x", "channels": []}"#.into()), "running"),
            (Some(r#"{"pid": 300, "startedAt": "x", "channels": []}"#.into()), "stale"),
        ];
        for (content, expected) in cases {
            let got = match judge(content.as_deref(), probe, 7, Some("boot-a")) {
                PidFileState::Absent => "absent",
                PidFileState::Invalid(_) => "invalid",
                PidFileState::Stale(_) => "stale",
                PidFileState::Foreign(_) => "foreign",
                PidFileState::Running(_) => "running",
            };
            assert_eq!(got, expected, "{content:?}");
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "1234 (tether (x) y) S 1 1234 1234 0 -1 4194560 300 0 0 0 1 2 0 0 20 0 5 0 987654 12345678 900";
        assert_eq!(parse_stat(line), (Some("S"), Some(987_654)));
        assert_eq!(parse_stat("garbage"), (None, None));
        let own = proc_info(std::process::id());
        assert!(own.alive && own.start.is_some() && own.comm.is_some(), "{own:?}");
        assert!(!proc_info(u32::MAX - 1).alive);
    }

    #[test]
    fn claim_refuses_a_second_holder_and_replaces_stale_files() {
        let home = std::env::temp_dir().join(format!("tether-claim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join(PID_FILE), serde_json::to_string(&record(u32::MAX - 1, None, None, None)).unwrap())
            .unwrap();
        let claim = ServiceClaim::take(&home, &["phone".into()]).unwrap();
        assert_eq!(claim.record.pid, std::process::id());
        assert_eq!(inspect(&home), PidFileState::Foreign(claim.record.clone()), "we read our own record as foreign");
        // A second claim in this process: the lock (per open file) says no.
        let err = ServiceClaim::take(&home, &[]).unwrap_err().to_string();
        assert!(err.contains("another tether holds") && err.contains("has not written"), "{err}");
        drop(claim);
        assert!(!home.join(PID_FILE).exists());
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn exclusive_create_keeps_the_first_file() {
        let dir = std::env::temp_dir().join(format!("tether-exclusive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(create_exclusive(&dir.join("p"), b"a").unwrap());
        assert!(!create_exclusive(&dir.join("p"), b"b").unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("p")).unwrap(), "a");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_status_file_a_power_cut_left_empty_or_cut_reads_as_unpublished() {
        // status.json is not flushed to disk (write_status): this is what a reader may find.
        let home = std::env::temp_dir().join(format!("tether-status-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        for text in ["", "{\"pid\": 12", "\0\0\0\0"] {
            std::fs::write(home.join(STATUS_FILE), text).unwrap();
            assert!(read_status(&home).is_none(), "{text:?}");
        }
        let _ = std::fs::remove_dir_all(&home);
    }
}
