//! Running unattended: journal and restarts (`kill -9`, SIGTERM), the backlog, one service per
//! home, stale pid files, `stop`, `status` and the watchdog, SIGHUP reloads, `--detach`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, Fault, TOKEN, unix_now};
use crate::support::{
    Service, TempDir, captured_demo_agent, demo_agent, journal_pending, read_status, run_tether, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

fn channel(fake: &FakeTelegram) -> Value {
    json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111"]})
}

fn config(fake: &FakeTelegram) -> Value {
    json!({"agent": demo_agent(), "channels": {"phone": channel(fake)}})
}

/// Texts sent to `chat` so far, in order.
fn texts_to(fake: &FakeTelegram, chat: i64) -> Vec<String> {
    fake.calls_of("sendMessage")
        .into_iter()
        .filter(|c| c.body["chat_id"] == json!(chat))
        .filter_map(|c| c.body["text"].as_str().map(str::to_string))
        .collect()
}

/// Wait until `status.json` says the service is running.
fn wait_running(home: &Path, service: &Service) {
    let up = wait_until(WAIT, || read_status(home).is_some_and(|s| s["state"] == "running"));
    assert!(up, "service did not report running; log:\n{}", service.log());
}

fn channel_status(home: &Path) -> Value {
    read_status(home).map(|s| s["channels"]["phone"].clone()).unwrap_or(Value::Null)
}

#[test]
fn kill_9_during_a_turn_then_restart_answers_exactly_once() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("kill9");
    home.write_config(&config(&fake));
    let mut service = Service::start(&home, &[]);
    fake.send_dm(111, "slow deploy please");
    // "typing…" means the turn has started; the slow answer takes about 3 s.
    assert!(fake.next_call("sendChatAction", WAIT).is_some(), "log:\n{}", service.log());
    service.kill_hard();
    assert!(texts_to(&fake, 111).is_empty(), "answered before the kill: {:?}", texts_to(&fake, 111));
    assert_eq!(journal_pending(home.path(), "phone"), 1, "the message is journaled and unanswered");

    let service = Service::start(&home, &[]);
    let answer = fake.next_text_to(111, WAIT);
    assert!(answer.as_deref().is_some_and(|a| a.starts_with("tick 0")), "{answer:?}; log:\n{}", service.log());
    // Nothing more comes: not from the journal, not from Telegram sending it again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(texts_to(&fake, 111).len(), 1, "{:?}", texts_to(&fake, 111));
    assert!(wait_until(WAIT, || journal_pending(home.path(), "phone") == 0), "still pending after the answer");
    assert!(service.log().contains("processing 1 journaled message(s)"), "{}", service.log());
}

#[test]
fn messages_sent_while_down_are_answered_and_old_ones_get_a_notice() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("backlog");
    home.write_config(&config(&fake));
    let two_days_ago = unix_now() - 2 * 86_400;
    fake.send_dm_dated(111, "ancient question", two_days_ago);
    fake.send_dm_dated(999, "ancient stranger", two_days_ago);
    fake.send_dm(111, "first while down");
    fake.send_dm(111, "second while down");
    let service = Service::start(&home, &[]);
    assert!(wait_until(WAIT, || texts_to(&fake, 111).len() >= 3), "log:\n{}", service.log());
    let texts = texts_to(&fake, 111);
    assert_eq!(texts.len(), 3, "{texts:?}");
    let notice = texts.iter().find(|t| t.contains("ancient question")).unwrap();
    assert!(notice.contains("reached me 2d 0h") && notice.contains("maxBacklogAge"), "{notice}");
    let echoes: Vec<&String> = texts.iter().filter(|t| t.starts_with("echo:")).collect();
    assert_eq!(echoes, ["echo: first while down", "echo: second while down"]);
    // The stranger's old message got nothing, and the agent never saw the old question.
    assert!(texts_to(&fake, 999).is_empty());
    assert!(!texts.iter().any(|t| t == "echo: ancient question"));
    assert!(wait_until(WAIT, || journal_pending(home.path(), "phone") == 0));
    // Telegram's backlog was confirmed, and the offset saved for the next start.
    assert!(wait_until(WAIT, || fake.unconfirmed() == 0));
    let offset: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("phone-offset.json")).unwrap()).unwrap();
    assert_eq!(offset["offset"], 1004, "{offset}");
}

fn saved_offset(home: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(home.join("phone-offset.json")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["offset"].as_i64()
}

#[test]
fn the_offset_written_lazily_is_current_after_a_clean_stop() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("offset");
    home.write_config(&config(&fake));
    let mut service = Service::start(&home, &[]);
    wait_running(home.path(), &service);
    fake.send_dm(111, "one");
    assert!(fake.next_text_to(111, WAIT).is_some(), "log:\n{}", service.log());
    // The first move of a run is written at once.
    assert!(wait_until(WAIT, || saved_offset(home.path()).is_some()), "log:\n{}", service.log());
    let first = saved_offset(home.path()).unwrap();
    for text in ["two", "three"] {
        fake.send_dm(111, text);
        assert!(fake.next_text_to(111, WAIT).is_some(), "log:\n{}", service.log());
    }
    let out = run_tether(&["stop"], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(service.wait_exit(Duration::from_secs(5)), Some(0), "log:\n{}", service.log());
    assert_eq!(saved_offset(home.path()), Some(first + 2), "the stop writes the offset it had");
    // The next start asks Telegram for nothing older, and answers nothing twice.
    let service = Service::start(&home, &[]);
    let resuming = format!("resuming after update {}", first + 1);
    assert!(service.wait_for_log(&resuming, WAIT), "log:\n{}", service.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(texts_to(&fake, 111).len(), 3, "log:\n{}", service.log());
}

#[test]
fn two_concurrent_starts_leave_one_running() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("twostarts");
    home.write_config(&config(&fake));
    let mut a = Service::start(&home, &[]);
    let mut b = Service::start(&home, &[]);
    let deadline = Instant::now() + WAIT;
    let (loser, winner) = loop {
        if let Some(code) = a.wait_exit(Duration::from_millis(100)) {
            break ((a, code), b);
        }
        if let Some(code) = b.wait_exit(Duration::from_millis(100)) {
            break ((b, code), a);
        }
        assert!(Instant::now() < deadline, "neither start gave way; logs:\n{}\n{}", a.log(), b.log());
    };
    assert_eq!(loser.1, 1);
    assert!(loser.0.log().contains("already running (PID "), "{}", loser.0.log());
    wait_running(home.path(), &winner);
    let out = run_tether(&["status", "--json"], home.path());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], winner.pid());
    // One poller: the message is answered once.
    fake.send_dm(111, "who answers?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: who answers?"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(texts_to(&fake, 111).len(), 1);
}

/// Field 22 of /proc/self/stat.
fn own_proc_start() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

#[test]
fn stale_and_recycled_pid_files_do_not_block_start() {
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let records = [
        ("dead pid", json!({"pid": dead_pid, "startedAt": "2026-01-01T00:00:00.000Z", "channels": ["phone"]})),
        // Our own (live, not tether) pid, with the right start time but another program name.
        (
            "recycled pid",
            json!({"pid": std::process::id(), "startedAt": "2026-01-01T00:00:00.000Z", "channels": ["phone"],
                   "procStart": own_proc_start(), "comm": "tether"}),
        ),
        // Our pid again, with another start time.
        (
            "recycled pid, other start",
            json!({"pid": std::process::id(), "startedAt": "x", "channels": [], "procStart": 1}),
        ),
        ("garbage", json!("half a record")),
    ];
    for (what, record) in records {
        let fake = FakeTelegram::start();
        let home = TempDir::new("stalepid");
        home.write_config(&config(&fake));
        std::fs::write(home.path().join("service.pid"), record.to_string()).unwrap();
        let service = Service::start(&home, &[]);
        wait_running(home.path(), &service);
        let pid: Value =
            serde_json::from_str(&std::fs::read_to_string(home.path().join("service.pid")).unwrap()).unwrap();
        assert_eq!(pid["pid"], service.pid(), "{what}");
        assert_eq!(pid["channels"], json!(["phone"]), "{what}");
        assert!(pid["procStart"].as_u64().is_some(), "{what}: {pid}");
        fake.send_dm(111, "hello");
        assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: hello"), "{what}");
    }
}

#[test]
fn stop_within_five_seconds_keeps_the_unanswered_turn_for_the_next_start() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("stop");
    home.write_config(&config(&fake));
    let mut service = Service::start(&home, &[]);
    wait_running(home.path(), &service);
    fake.send_dm(111, "slow=500 job");
    assert!(fake.next_call("sendChatAction", WAIT).is_some());
    let started = Instant::now();
    let out = run_tether(&["stop"], home.path());
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    assert!(stdout.contains(&format!("Stopping channel service (PID {})...", service.pid())), "{stdout}");
    assert!(stdout.contains("Service stopped."), "{stdout}");
    assert_eq!(service.wait_exit(Duration::from_secs(2)), Some(0), "log:\n{}", service.log());
    assert!(!home.path().join("service.pid").exists());
    assert_eq!(read_status(home.path()).unwrap()["state"], "stopped");
    assert!(service.log().contains("SIGTERM: shutting down"), "{}", service.log());
    assert_eq!(journal_pending(home.path(), "phone"), 1);
    // Stopping again, and status, say nothing runs.
    let out = run_tether(&["stop"], home.path());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "No channel service is running.\n");
    let out = run_tether(&["status"], home.path());
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "No channel service is running.\n");
    // The next start answers the turn that the stop cut short, once.
    let service = Service::start(&home, &[]);
    let answer = fake.next_text_to(111, Duration::from_secs(30));
    assert!(answer.is_some_and(|a| a.starts_with("tick 0")), "log:\n{}", service.log());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(texts_to(&fake, 111).len(), 1);
}

#[test]
fn status_tells_the_truth_healthy_unhealthy_healthy() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("status");
    home.write_config(&config(&fake));
    let service = Service::start_with_env(&home, &[], &[("TETHER_UNHEALTHY_AFTER_MS", "1500")]);
    wait_running(home.path(), &service);
    assert!(wait_until(WAIT, || channel_status(home.path())["connected"] == true), "{}", service.log());
    fake.send_dm(111, "count me");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: count me"));
    let counted = wait_until(WAIT, || {
        let c = channel_status(home.path());
        c["messagesIn"] == 1 && c["messagesOut"] == 1 && c["sessions"] == 1 && c["journalPending"] == 0
    });
    assert!(counted, "{}", channel_status(home.path()));
    let out = run_tether(&["status", "--json"], home.path());
    assert_eq!(out.status.code(), Some(0));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((status["running"].clone(), status["healthy"].clone()), (json!(true), json!(true)), "{status}");
    assert_eq!(status["channels"]["phone"]["state"], "ok");
    let human = String::from_utf8_lossy(&run_tether(&["status"], home.path()).stdout).into_owned();
    assert!(human.starts_with(&format!("Channel service: running (PID {})\nUptime:", service.pid())), "{human}");
    assert!(human.contains("\nphone ") && human.contains(" ok "), "{human}");
    // Webhooks are removed once at start, keeping the updates they hold.
    let deletes = fake.calls_of("deleteWebhook");
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].body, json!({"drop_pending_updates": false}));

    // Telegram answers 502 for longer than the bound: unhealthy, with the reason, one warning.
    fake.fail_all("getUpdates", Some(Fault::bad_gateway()));
    fake.interrupt_polls();
    let unhealthy = wait_until(WAIT, || channel_status(home.path())["healthy"] == false);
    assert!(unhealthy, "{}\nlog:\n{}", channel_status(home.path()), service.log());
    let c = channel_status(home.path());
    assert_eq!((c["state"].clone(), c["connected"].clone()), (json!("unhealthy"), json!(false)), "{c}");
    assert!(c["lastError"].as_str().unwrap().contains("HTTP 502"), "{c}");
    assert!(c["problem"].as_str().unwrap().contains("no successful poll for"), "{c}");
    let out = run_tether(&["status", "--json"], home.path());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["healthy"], false);
    std::thread::sleep(Duration::from_secs(3)); // More failures: still one warning.
    assert_eq!(service.log().matches("channel is unhealthy").count(), 1, "{}", service.log());

    fake.fail_all("getUpdates", None);
    let healthy = wait_until(Duration::from_secs(40), || channel_status(home.path())["healthy"] == true);
    assert!(healthy, "{}\nlog:\n{}", channel_status(home.path()), service.log());
    assert_eq!(channel_status(home.path())["state"], "ok");
    assert!(service.log().contains("channel is healthy again after"), "{}", service.log());
    fake.send_dm(111, "still hear me?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: still hear me?"));
}

#[test]
fn a_rejected_token_parks_the_channel_instead_of_retrying() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("parked");
    let mut cfg = config(&fake);
    cfg["channels"]["phone"]["token"] = json!("999:revoked");
    home.write_config(&cfg);
    let service = Service::start(&home, &[]);
    assert!(wait_until(WAIT, || channel_status(home.path())["state"] == "parked"), "{}", service.log());
    let c = channel_status(home.path());
    assert_eq!(c["healthy"], false);
    assert!(c["problem"].as_str().unwrap().contains("Telegram rejected the bot token"), "{c}");
    std::thread::sleep(Duration::from_secs(3));
    // One error when it parks, one watchdog warning; no retry loop.
    let log = service.log();
    let errors = log.lines().filter(|l| l.contains("ERROR") && l.contains("Telegram rejected the bot token")).count();
    assert_eq!(errors, 1, "{log}");
    assert_eq!(log.matches("channel is unhealthy: parked").count(), 1, "{log}");
    assert!(service.log().contains("fix \"token\" of channel \"phone\""), "{}", service.log());
    // A parked channel does not hold up a stop (SIGINT, as Ctrl+C).
    let mut service = service;
    service.signal("INT");
    assert_eq!(service.wait_exit(Duration::from_secs(5)), Some(0), "{}", service.log());
    assert!(service.log().contains("SIGINT: shutting down"));
    assert!(!home.path().join("service.pid").exists());
}

#[test]
fn a_conflict_says_another_poller_holds_the_token() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("conflict");
    home.write_config(&config(&fake));
    let service = Service::start(&home, &[]);
    wait_running(home.path(), &service);
    assert!(wait_until(WAIT, || channel_status(home.path())["connected"] == true));
    fake.fail_all("getUpdates", Some(Fault::conflict()));
    fake.interrupt_polls();
    let said =
        wait_until(WAIT, || service.log().contains("another program is polling this bot token, or a webhook is set"));
    assert!(said, "{}", service.log());
    fake.fail_all("getUpdates", None);
}

#[test]
fn sighup_adds_a_channel_without_dropping_another_session() {
    let (fake_a, fake_b) = (FakeTelegram::start(), FakeTelegram::start());
    let home = TempDir::new("reload");
    let capture = home.path().join("agent-stdin.jsonl");
    let agent = captured_demo_agent(&capture);
    home.write_config(&json!({"agent": agent, "channels": {"a": channel(&fake_a)}}));
    let service = Service::start(&home, &[]);
    fake_a.send_dm(111, "one");
    assert_eq!(fake_a.next_text_to(111, WAIT).as_deref(), Some("echo: one"), "{}", service.log());

    home.write_config(&json!({"agent": agent, "channels": {"a": channel(&fake_a), "b": channel(&fake_b)}}));
    service.signal("HUP");
    assert!(service.wait_for_log("config reloaded: added [b], removed [], restarted []", WAIT), "{}", service.log());
    fake_b.send_dm(111, "to b");
    assert_eq!(fake_b.next_text_to(111, WAIT).as_deref(), Some("echo: to b"), "{}", service.log());
    fake_a.send_dm(111, "two");
    assert_eq!(fake_a.next_text_to(111, WAIT).as_deref(), Some("echo: two"));
    // Channel a kept its poller and its session: one session/new each, one getMe on a.
    let sent = std::fs::read_to_string(&capture).unwrap();
    assert_eq!(sent.matches("\"session/new\"").count(), 2, "{sent}");
    assert_eq!(fake_a.calls_of("getMe").len(), 1);
    let pid: Value = serde_json::from_str(&std::fs::read_to_string(home.path().join("service.pid")).unwrap()).unwrap();
    assert_eq!(pid["channels"], json!(["a", "b"]));

    // b changes: b restarts (a new poller), a keeps its poller and session.
    let mut b = channel(&fake_b);
    b["allowedUsers"] = json!(["111", "222"]);
    home.write_config(&json!({"agent": agent, "channels": {"a": channel(&fake_a), "b": b}}));
    service.signal("HUP");
    assert!(service.wait_for_log("config reloaded: added [], removed [], restarted [b]", WAIT), "{}", service.log());
    fake_b.send_dm(222, "newly allowed");
    assert_eq!(fake_b.next_text_to(222, WAIT).as_deref(), Some("echo: newly allowed"), "{}", service.log());
    assert_eq!(fake_b.calls_of("getMe").len(), 2);
    // b goes away: it stops polling; a carries on.
    home.write_config(&json!({"agent": agent, "channels": {"a": channel(&fake_a)}}));
    service.signal("HUP");
    assert!(service.wait_for_log("config reloaded: added [], removed [b], restarted []", WAIT), "{}", service.log());
    fake_a.send_dm(111, "three");
    assert_eq!(fake_a.next_text_to(111, WAIT).as_deref(), Some("echo: three"));
    let sent = std::fs::read_to_string(&capture).unwrap();
    assert_eq!(sent.matches("\"session/new\"").count(), 3, "a kept its session throughout: {sent}");
    assert_eq!(fake_a.calls_of("getMe").len(), 1);

    // A broken config changes nothing.
    std::fs::write(home.path().join("config.json"), "{ not json").unwrap();
    service.signal("HUP");
    assert!(service.wait_for_log("reload failed, keeping the running config", WAIT), "{}", service.log());
    fake_a.send_dm(111, "still a");
    assert_eq!(fake_a.next_text_to(111, WAIT).as_deref(), Some("echo: still a"));
}

/// Stops a detached service when the test ends, however it ends.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = run_tether(&["stop"], self.0);
    }
}

#[test]
fn detach_returns_once_up_and_stop_ends_it() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("detach");
    home.write_config(&config(&fake));
    let log = home.path().join("logs-tether.log");
    let _guard = StopOnDrop(home.path());
    let out = run_tether(&["start", "--detach", "--log-file", log.to_str().unwrap()], home.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tether is running in the background (PID "), "{stdout}");
    assert_eq!(read_status(home.path()).unwrap()["state"], "running");
    fake.send_dm(111, "from afar");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: from afar"));
    // A second start refuses, saying who runs.
    let again = run_tether(&["start", "--detach"], home.path());
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running (PID "), "{again:?}");
    // The log file is reopened on SIGHUP (logrotate moves it away first).
    let rotated = home.path().join("logs-tether.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = read_status(home.path()).unwrap()["pid"].as_u64().unwrap();
    assert!(Command::new("kill").args(["-s", "HUP", &pid.to_string()]).status().unwrap().success());
    assert!(wait_until(WAIT, || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("config reloaded"))));
    let out = run_tether(&["stop"], home.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Service stopped."), "{out:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped"));
}

#[test]
fn detach_reports_a_failed_start() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("detachfail");
    let mut cfg = config(&fake);
    cfg["agent"] = json!({"command": "sh", "args": ["-c", "echo 'no model' >&2; exit 3"]});
    home.write_config(&cfg);
    let out = run_tether(&["start", "--detach"], home.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the service failed to start") && stderr.contains("no model"), "{stderr}");
}

#[test]
fn a_journaled_message_telegram_sends_again_is_answered_once() {
    // As after a death between the journal write and the offset save: the message is in the
    // journal, and Telegram (which saw no later offset) sends it again.
    let fake = FakeTelegram::start();
    let home = TempDir::new("refetch");
    home.write_config(&config(&fake));
    let entry = json!({"m": {"channel": "phone", "senderId": "111", "senderName": "User", "chatId": "111",
        "messageId": "1000", "isMentioned": true, "text": "as journaled"}, "t": unix_now() * 1000});
    std::fs::create_dir_all(home.path().join("journal")).unwrap();
    std::fs::write(home.path().join("journal/phone.jsonl"), format!("{entry}\n")).unwrap();
    fake.send_dm(111, "as Telegram sends it again"); // update 1000, message 1000
    let service = Service::start(&home, &[]);
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: as journaled"), "{}", service.log());
    assert!(wait_until(WAIT, || fake.unconfirmed() == 0), "Telegram's copy was taken (and skipped)");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(texts_to(&fake, 111).len(), 1, "{:?}", texts_to(&fake, 111));
    assert!(service.log().contains("is already journaled; skipped"), "{}", service.log());
}

/// The environment of process `pid`, as NAME=value strings.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).filter(|v| !v.is_empty()).collect()
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent is the second field after the command name (which may hold spaces).
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
            after_name.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// On a glibc build `tether start` restarts itself once (same pid) with the allocator tuned;
/// the agent it starts does not inherit that setting, and `TETHER_MALLOC=default` skips it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_allocator_is_tuned_for_tether_only() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("malloc-tuning");
    home.write_config(&config(&fake));
    let tuned = |env: &[String]| env.iter().any(|v| v.starts_with("GLIBC_TUNABLES="));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("connected as @", WAIT), "{}", service.log());
    let env = environment_of(service.pid());
    assert!(tuned(&env) && env.iter().any(|v| v == "TETHER_MALLOC=tuned"), "{env:?}");
    let mut agents = Vec::new();
    assert!(wait_until(WAIT, || {
        agents = children_of(service.pid());
        !agents.is_empty()
    }));
    for agent in agents {
        let env = environment_of(agent);
        assert!(!env.is_empty(), "the agent's environment is readable");
        assert!(!tuned(&env) && !env.iter().any(|v| v.starts_with("TETHER_MALLOC=")), "agent {agent}: {env:?}");
    }
    drop(service);

    let service = Service::start_with_env(&home, &[], &[("TETHER_MALLOC", "default")]);
    assert!(service.wait_for_log("connected as @", WAIT), "{}", service.log());
    assert!(!tuned(&environment_of(service.pid())), "TETHER_MALLOC=default keeps glibc's defaults");
}
