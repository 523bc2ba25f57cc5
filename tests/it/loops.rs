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

#[test]
fn a_loop_added_in_chat_delivers_on_schedule_and_survives_a_restart() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("loops");
    let channel = json!({
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(),
        "senderPolicy": "allowlist", "allowedUsers": [USER.to_string()],
    });
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let offset = offset_to_next_minute();
    let env = [("TETHER_TEST_CLOCK_OFFSET_MS", offset.as_str()), ("TZ", "UTC0")];
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

    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "did not stop");
    let service = Service::start_with_env(&home, &[], &env);
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
    // From the command line: listed, then cancelled; the running service takes the change.
    let listed = run_tether(&["loops", "list"], home.path());
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(out.starts_with("1  phone 111  \"* * * * *\"  next "), "{out}");
    let cancelled = run_tether(&["loops", "cancel", "1"], home.path());
    assert_eq!(String::from_utf8_lossy(&cancelled.stdout), "Loop 1 cancelled.\n");
    let again = run_tether(&["loops", "cancel", "1"], home.path());
    assert_eq!(again.status.code(), Some(1));
    // (The first start logged it once already, with no file yet.)
    let taken = wait_until(WAIT, || service.log().matches("0 loop(s), 0 enabled").count() == 2);
    assert!(taken, "{}", service.log());
    let before = fake.texts_to(USER).len();
    fake.send_dm(USER, "/loop list");
    assert!(
        wait_until(WAIT, || fake.texts_to(USER).iter().skip(before).any(|t| t.starts_with("No loops in this chat."))),
        "{:?}",
        fake.texts_to(USER)
    );
}
