//! Shared test helpers: temporary homes, the tether binary as a real process, bounded waits.

pub mod fake_dingtalk;
pub mod fake_discord;
pub mod fake_ilink;
pub mod fake_telegram;
pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test: cargo's for integration tests, `$TETHER_BIN` for the benchmark.
pub fn tether_bin() -> String {
    match option_env!("CARGO_BIN_EXE_tether") {
        Some(bin) => bin.to_string(),
        None => std::env::var("TETHER_BIN").unwrap_or_else(|_| "target/release/tether".to_string()),
    }
}

/// A fresh directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("tether-it-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write_config(&self, config: &Value) -> PathBuf {
        let path = self.0.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo agent, with everything tether writes to it copied to `capture`.
pub fn captured_demo_agent(capture: &Path) -> Value {
    json!({
        "command": "sh",
        "args": ["-c", format!("tee -a '{}' | exec '{}' demo-agent", capture.display(), tether_bin())],
        "startupTimeoutMs": 10000,
    })
}

pub fn demo_agent() -> Value {
    json!({"command": tether_bin(), "args": ["demo-agent"], "startupTimeoutMs": 10000})
}

/// A running `tether start`, killed when dropped.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    pub fn start(home: &TempDir, args: &[&str]) -> Service {
        Service::spawn(home, args, "debug", &[])
    }

    /// Like [`Service::start`] with extra environment variables.
    #[allow(dead_code)]
    pub fn start_with_env(home: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Service {
        Service::spawn(home, args, "debug", env)
    }

    fn spawn(home: &TempDir, args: &[&str], level: &str, env: &[(&str, &str)]) -> Service {
        // Appended to, so the story of a restart in the same home stays in one file.
        let log = home.path().join("tether-test.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(tether_bin())
            .arg("start")
            .args(args)
            .arg("--home")
            .arg(home.path())
            .env("RUST_LOG", format!("{level},tungstenite=info,rustls=info"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Service { child, log }
    }

    /// Send a signal (`TERM`, `HUP`, `KILL`, ...) with `kill`.
    #[allow(dead_code)]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// The exit status if the process has ended, without waiting.
    #[allow(dead_code)]
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|status| status.code().unwrap_or(-1))
    }

    /// `kill -9`, and wait until the process is gone.
    #[allow(dead_code)]
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    #[allow(dead_code)] // Used by the benchmark, which shares these helpers.
    /// Like [`Service::start`] with all channels, logging at info only (for the benchmark).
    pub fn start_quiet(home: &TempDir) -> Service {
        Service::spawn(home, &[], "info", &[])
    }

    #[allow(dead_code)] // Used by the benchmark.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`, at most `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.log().contains(needle))
    }

    /// The exit status, if the process ended within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Messages of a channel's journal file (`journal/<channel>.jsonl`) not marked answered. The
/// file keeps answered marks of messages whose own lines a compaction removed, so this is a
/// set difference, not a count of lines.
#[allow(dead_code)]
pub fn journal_pending(home: &Path, channel: &str) -> usize {
    let path = home.join("journal").join(format!("{channel}.jsonl"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let key = |v: &Value, chat: &str, id: &str| (v[chat].as_str().map(String::from), v[id].as_str().map(String::from));
    let done: std::collections::HashSet<_> =
        lines.iter().filter_map(|l| l.get("done")).map(|d| key(d, "chat", "id")).collect();
    lines.iter().filter_map(|l| l.get("m")).filter(|m| !done.contains(&key(m, "chatId", "messageId"))).count()
}

/// `status.json` of the service in `home`, if it was written and is readable.
pub fn read_status(home: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(home.join("status.json")).ok()?).ok()
}

/// Run `tether ARGS` to completion, at most 30 s.
pub fn run_tether(args: &[&str], home: &Path) -> Output {
    let mut child = Command::new(tether_bin())
        .args(args)
        .env("TETHER_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tether {args:?} did not finish within 30 s");
}

/// Run `tether ARGS` to completion with `input` on its stdin, at most `within`.
#[allow(dead_code)]
pub fn run_tether_with_input(args: &[&str], home: &Path, input: &str, within: Duration) -> Output {
    use std::io::Write;
    let mut child = Command::new(tether_bin())
        .args(args)
        .env("TETHER_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written up front: the pipe buffer holds it until tether reads it.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!(
        "tether {args:?} did not finish within {within:?}; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Poll `cond` every 20 ms until it holds or `within` passes.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
