//! Telegram end to end: fake Bot API ⇄ tether ⇄ demo agent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_telegram::{BOT_USERNAME, FakeTelegram, Fault, TOKEN};
use crate::support::{Service, TempDir, captured_demo_agent, demo_agent, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn config(fake: &FakeTelegram, agent: Value, extra: Value) -> Value {
    let mut channel = json!({
        "type": "telegram",
        "token": TOKEN,
        "apiBase": fake.url(),
        "senderPolicy": "allowlist",
        "allowedUsers": ["111"],
    });
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({"agent": agent, "channels": {"phone": channel}})
}

#[test]
fn allowed_dm_comes_back_as_the_echo() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("echo");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "hello agent");
    let reply = fake.next_text_to(111, WAIT);
    assert_eq!(reply.as_deref(), Some("echo: hello agent"), "log:\n{}", service.log());
    // "typing…" was shown in that chat while the turn ran.
    let typing = fake.calls_of("sendChatAction");
    assert!(typing.iter().any(|c| c.body["chat_id"] == 111 && c.body["action"] == "typing"), "{typing:?}");
}

#[test]
fn stranger_never_reaches_the_agent() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("stranger");
    let capture = home.path().join("agent-stdin.jsonl");
    home.write_config(&config(&fake, captured_demo_agent(&capture), json!({})));
    let service = Service::start(&home, &[]);
    fake.send_dm(999, "stranger secret words");
    fake.send_dm(111, "friend words");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: friend words"), "log:\n{}", service.log());
    // The stranger got no answer and nothing of theirs was written to the agent.
    assert_eq!(fake.next_text_to(999, Duration::from_millis(500)), None);
    let sent_to_agent = std::fs::read_to_string(&capture).unwrap();
    assert!(sent_to_agent.contains("friend words"));
    assert!(!sent_to_agent.contains("stranger secret words"), "agent saw: {sent_to_agent}");
    assert!(service.log().contains("sender not in allowedUsers"));
}

/// Letters whose lowercase has another byte length (`Ⱥ` 2 → 3 bytes, `ẞ` 3 → 2) around a
/// mention of the bot: this used to panic the poll thread, which then never moved its
/// offset, so the bot stayed deaf, also after every restart.
fn poisoned_text() -> String {
    format!("Ⱥ@{BOT_USERNAME} éẞ Ⱥ@{BOT_USERNAME}éẞ")
}

fn send_poison(fake: &FakeTelegram) {
    let poison = poisoned_text();
    fake.send_dm(999, &poison);
    fake.send_group(-100_777, 999, &poison, None);
    fake.send_group_photo(-100_777, 999, &poison);
}

#[test]
fn a_strangers_poisoned_mention_does_not_deafen_the_bot_also_after_a_restart() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("poison");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    let mut service = Service::start(&home, &[]);
    assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
    send_poison(&fake);
    fake.send_dm(111, "still listening?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: still listening?"), "log:\n{}", service.log());
    // The poisoned updates were confirmed: Telegram will not send them again.
    assert!(
        wait_until(WAIT, || fake.unconfirmed() == 0),
        "{} unconfirmed; log:\n{}",
        fake.unconfirmed(),
        service.log()
    );

    // A restart, with more poison waiting for it before it even connects.
    service.signal("TERM");
    assert_eq!(service.wait_exit(WAIT), Some(0), "log:\n{}", service.log());
    send_poison(&fake);
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "after the restart?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: after the restart?"), "log:\n{}", service.log());
    assert!(
        wait_until(WAIT, || fake.unconfirmed() == 0),
        "{} unconfirmed; log:\n{}",
        fake.unconfirmed(),
        service.log()
    );
    let log = service.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("éẞ"), "a stranger's text reached the log:\n{log}");
    // Nothing was answered to the stranger, in the DM or in the group.
    assert!(fake.texts_to(999).is_empty() && fake.texts_to(-100_777).is_empty(), "{:?}", fake.delivered());
}

#[test]
fn a_lone_surrogate_in_a_strangers_message_does_not_deafen_the_bot() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("surrogate");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
    // Half an emoji: JSON allows it, serde_json refuses it, and it came in the same batch.
    fake.push_raw_message(999, r"broken \ud83d emoji");
    fake.send_dm(111, "still listening?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: still listening?"), "log:\n{}", service.log());
    assert!(wait_until(WAIT, || fake.unconfirmed() == 0), "log:\n{}", service.log());
}

/// A build with `panic = "abort"` (the static builds) cannot catch a decoder's panic: the
/// process ends, its service manager starts it again, and Telegram hands the same update over
/// again, since it was never confirmed. `TETHER_TEST_PANIC=abort:1000` makes the decoder
/// panic on update 1000 and the process end after the panic hook, as such a build does. The
/// update must cost that one restart, not a restart loop.
#[test]
fn an_update_that_ends_an_aborting_build_is_skipped_after_its_restart() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("abort");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    let probe = [("TETHER_TEST_PANIC", "abort:1000")];
    let mut service = Service::start_with_env(&home, &[], &probe);
    assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
    fake.send_dm(111, "the update that ends it"); // The fake's first update id: 1000.
    // Ended by SIGABRT, so no exit code.
    assert_eq!(service.wait_exit(WAIT), Some(-1), "log:\n{}", service.log());
    assert_eq!(fake.unconfirmed(), 1, "Telegram still has the update");
    let poisoned = std::fs::read_to_string(home.path().join("poisoned.txt")).unwrap_or_default();
    assert_eq!(poisoned.lines().count(), 1, "{poisoned:?}; log:\n{}", service.log());

    // Started again (as systemd or procd would), with the same probe: the update is skipped
    // without being decoded, and what comes after it is answered.
    let service = Service::start_with_env(&home, &[], &probe);
    fake.send_dm(111, "and this one?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: and this one?"), "log:\n{}", service.log());
    assert!(wait_until(WAIT, || fake.unconfirmed() == 0), "log:\n{}", service.log());
    let log = service.log();
    assert_eq!(log.matches("a decoder panicked").count(), 1, "{log}");
    assert!(log.contains("skipped an input that made a decoder panic before"), "{log}");
    assert!(log.contains("1 input(s) that made a decoder panic before are skipped"), "{log}");
    assert_eq!(fake.texts_to(111), ["echo: and this one?"]);
    assert_eq!(std::fs::read_to_string(home.path().join("poisoned.txt")).unwrap_or_default(), poisoned);
}

#[test]
fn platform_faults_are_survived_and_the_next_message_is_answered() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("faults");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    fake.fail_next("getMe", Fault::bad_gateway());
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
    for fault in [Fault::conflict(), Fault::too_many(1), Fault::bad_gateway(), Fault::Malformed, Fault::Drop] {
        fake.fail_next("getUpdates", fault);
    }
    // Wake the poll that is being held, so the faults are served one by one.
    fake.send_dm(222, "from a stranger, to end the held poll");
    assert!(wait_until(Duration::from_secs(40), || fake.pending_faults() == 0), "log:\n{}", service.log());
    fake.fail_next("sendMessage", Fault::bad_gateway());
    fake.fail_next("sendMessage", Fault::too_many(1));
    fake.send_dm(111, "still there?");
    assert_eq!(
        fake.next_text_to(111, Duration::from_secs(40)).as_deref(),
        Some("echo: still there?"),
        "log:\n{}",
        service.log()
    );
    let log = service.log();
    for expected in
        ["conflict (409)", "rate limited (429)", "HTTP 502", "not JSON", "send to chat 111 failed (attempt 1/"]
    {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    // Backoff, not a hot loop: a handful of polls, not hundreds.
    assert!(fake.polls() < 30, "{} polls", fake.polls());
}

#[test]
fn agent_that_dies_at_start_gives_a_clear_error() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("deadagent");
    let agent = json!({"command": "sh", "args": ["-c", "echo 'model weights missing' >&2; exit 3"]});
    home.write_config(&config(&fake, agent, json!({})));
    let mut service = Service::start(&home, &[]);
    assert_eq!(service.wait_exit(WAIT), Some(1), "log:\n{}", service.log());
    let log = service.log();
    assert!(log.contains("failed to start: it exited with status 3"), "{log}");
    assert!(log.contains("model weights missing"), "{log}");
    // The agent's stderr line is logged once (not again as a "last stderr" tail), and so is
    // the error.
    assert_eq!(log.matches("model weights missing\n").count(), 1, "{log}");
    assert_eq!(log.matches("failed to start: it exited with status 3").count(), 1, "{log}");
}

#[test]
fn agent_command_not_found_says_so() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("noagent");
    home.write_config(&config(&fake, json!({"command": "/nonexistent/qwen", "args": ["--acp"]}), json!({})));
    let mut service = Service::start(&home, &[]);
    assert_eq!(service.wait_exit(WAIT), Some(1));
    // Refused before any platform is contacted, as `tether check` refuses it.
    assert!(service.log().contains("agent.command: `/nonexistent/qwen` is not a file"), "{}", service.log());
}
