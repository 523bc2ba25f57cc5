//! Scheduled loops end to end (fake Bot API ⇄ tether ⇄ demo agent): a `/loop add` delivers
//! on schedule, marked with its id, in its own session; `loops.json` keeps it over a restart.
//! The service's clock is shifted (test-only `TETHER_TEST_CLOCK_OFFSET_MS`) so the next
//! minute comes a few seconds after the start.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent, run_tether, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const USER: i64 = 111;

/// An offset that puts the service's wall clock 8 s before a minute boundary now.
fn offset_to_next_minute() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let to_boundary = 60_000 - now % 60_000;
    (to_boundary - 8_000).rem_euclid(60_000).to_string()
}

/// A fake Bot API, a home whose Telegram channel "phone" lets USER in, and the environment
/// that puts the service's clock 8 s before a minute, in UTC.
fn phone_channel(name: &str) -> (FakeTelegram, TempDir, [(&'static str, String); 2]) {
    let fake = FakeTelegram::start();
    let home = TempDir::new(name);
    let channel = json!({
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(),
        "senderPolicy": "allowlist", "allowedUsers": [USER.to_string()],
    });
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let env = [("TETHER_TEST_CLOCK_OFFSET_MS", offset_to_next_minute()), ("TZ", "UTC0".to_string())];
    (fake, home, env)
}

#[test]
fn a_loop_added_in_chat_delivers_on_schedule_and_survives_a_restart() {
    let (fake, home, env) = phone_channel("loops");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut service = Service::start_with_env(&home, &[], &env);
    fake.send_dm(USER, "/loop add \"* * * * *\" ping");
    let texts = fake.wait_texts_to(USER, 1, WAIT);
    assert!(
        texts.first().is_some_and(|t| t.starts_with("Loop 1 added: \"* * * * *\". Next runs: ")),
        "{texts:?}\n{}",
        service.log()
    );
    // The run comes at the minute, in its own session, marked.
    let texts = fake.wait_texts_to(USER, 2, WAIT);
    assert_eq!(texts.get(1).map(String::as_str), Some("[loop 1] echo: ping"), "log:\n{}", service.log());
    // The user's own conversation is untouched by it.
    fake.send_dm(USER, "hello");
    let texts = fake.wait_texts_to(USER, 3, WAIT);
    assert_eq!(texts.get(2).map(String::as_str), Some("echo: hello"), "{texts:?}");
    let file = home.path().join("loops.json");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["loops"][0]["runs"], 1, "{saved}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }

    assert!(home.path().join("control.sock").exists(), "a service serves its control socket");
    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "did not stop");
    assert!(!home.path().join("control.sock").exists(), "the control socket goes with the service");
    let mut service = Service::start_with_env(&home, &[], &env);
    assert!(service.wait_for_log("1 loop(s), 1 enabled", WAIT), "{}", service.log());
    let before = fake.texts_to(USER).len();
    fake.send_dm(USER, "/loop list");
    assert!(
        wait_until(WAIT, || fake
            .texts_to(USER)
            .iter()
            .skip(before)
            .any(|t| t.starts_with("Loops in this chat:\n1 · \"* * * * *\" · next "))),
        "{:?}\n{}",
        fake.texts_to(USER),
        service.log()
    );
    // From the command line: listed, then cancelled through the running service (which owns
    // loops.json: its own saves keep the change).
    let listed = run_tether(&["loops", "list"], home.path());
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(out.starts_with("1  phone 111  \"* * * * *\"  next "), "{out}");
    let cancelled = run_tether(&["loops", "cancel", "1"], home.path());
    assert_eq!(String::from_utf8_lossy(&cancelled.stdout), "Loop 1 cancelled.\n", "{}", service.log());
    assert!(service.log().contains("loop 1 cancelled from the command line"), "{}", service.log());
    let again = run_tether(&["loops", "cancel", "1"], home.path());
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("there is no loop 1"), "{again:?}");
    let in_file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(in_file["loops"], json!([]), "{in_file}");
    let before = fake.texts_to(USER).len();
    fake.send_dm(USER, "/loop list");
    assert!(
        wait_until(WAIT, || fake.texts_to(USER).iter().skip(before).any(|t| t.starts_with("No loops in this chat."))),
        "{:?}",
        fake.texts_to(USER)
    );

    // With the service stopped, the command edits the file itself.
    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "did not stop");
    std::fs::write(&file, saved.to_string()).unwrap();
    let cancelled = run_tether(&["loops", "cancel", "1"], home.path());
    assert_eq!(String::from_utf8_lossy(&cancelled.stdout), "Loop 1 cancelled.\n", "{cancelled:?}");
    let in_file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(in_file["loops"], json!([]), "{in_file}");
}

/// One request line on the service's control socket; its answer.
#[cfg(unix)]
fn control_request(home: &std::path::Path, request: &serde_json::Value) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(home.join("control.sock")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[cfg(unix)]
#[test]
fn a_loop_the_agent_creates_through_tether_mcp_delivers_on_schedule() {
    use std::os::unix::fs::PermissionsExt;
    let (fake, home, env) = phone_channel("loops-mcp");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start_with_env(&home, &[], &env);
    assert!(service.wait_for_log("control socket", WAIT), "{}", service.log());
    let socket = home.path().join("control.sock");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    // The user asks in plain words; the demo agent calls loop_create through `tether mcp`.
    fake.send_dm(USER, "every 1 minutes ping");
    let texts = fake.wait_texts_to(USER, 1, WAIT);
    assert!(
        texts.first().is_some_and(|t| t.starts_with("Loop 1 added: \"* * * * *\". Next runs: ")),
        "{texts:?}\n{}",
        service.log()
    );
    assert!(service.log().contains("loop added in 111 by the agent for 111"), "{}", service.log());
    let file = home.path().join("loops.json");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let created = &saved["loops"][0];
    assert_eq!(
        (&created["channel"], &created["chatId"], &created["senderId"], &created["prompt"]),
        (&json!("phone"), &json!("111"), &json!("111"), &json!("ping")),
        "{saved}"
    );
    // Its run comes at the minute (the next one, if the agent took past the first), marked.
    let texts = fake.wait_texts_to(USER, 2, Duration::from_secs(80));
    assert_eq!(texts.get(1).map(String::as_str), Some("[loop 1] echo: ping"), "log:\n{}", service.log());

    // The agent lists and cancels it the same way.
    fake.send_dm(USER, "list my loops");
    let listed = wait_until(WAIT, || fake.texts_to(USER).iter().any(|t| t.starts_with("Loops in this chat:\n1 · ")));
    assert!(listed, "{:?}\n{}", fake.texts_to(USER), service.log());
    fake.send_dm(USER, "cancel loop 1");
    let cancelled = wait_until(WAIT, || fake.texts_to(USER).iter().any(|t| t == "Loop 1 cancelled."));
    assert!(cancelled, "{:?}\n{}", fake.texts_to(USER), service.log());
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["loops"], json!([]), "{saved}");

    // A call with a token that is not the session's is refused, and the token is not logged.
    let forged = "ab".repeat(32);
    let request = json!({"session": "phone:111:111", "token": forged, "tool": "loop_list", "arguments": {}});
    let answer = control_request(home.path(), &request);
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["text"].as_str().unwrap().starts_with("the token does not match"), "{answer}");
    assert!(service.wait_for_log("wrong token", WAIT), "{}", service.log());
    assert!(!service.log().contains(&forged));
}
