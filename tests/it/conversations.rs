//! Conversations end to end (fake Bot API ⇄ tether ⇄ demo agent): dispatch modes with the
//! demo agent's `slow` turns, forum topics, quoted replies, instructions, local commands, and
//! several channels sharing one agent process.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, captured_demo_agent, demo_agent, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const USER: i64 = 111;
const STEER_NOTE: &str =
    "[The user sent a new message while you were working. Their previous request has been cancelled.]";
/// What the demo agent streams for `slow`.
const TICKS: &str = "tick 0 tick 1 tick 2 tick 3 tick 4 tick 5 tick 6 tick 7 tick 8 tick 9";

fn telegram_channel(fake: &FakeTelegram, extra: Value) -> Value {
    let mut channel = json!({
        "type": "telegram",
        "token": TOKEN,
        "apiBase": fake.url(),
        "senderPolicy": "allowlist",
        "allowedUsers": [USER.to_string()],
    });
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    channel
}

/// One channel "phone" on `fake`, the demo agent, and the channel keys in `extra`.
fn start(fake: &FakeTelegram, label: &str, extra: Value) -> (TempDir, Service) {
    let home = TempDir::new(label);
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": telegram_channel(fake, extra)}}));
    let service = Service::start(&home, &[]);
    (home, service)
}

/// Send `slow=MS` and wait until its turn runs ("typing…" shown).
fn start_slow_turn(fake: &FakeTelegram, service: &Service, ms: u64) {
    fake.send_dm(USER, &format!("slow={ms}"));
    assert!(fake.wait_typing_in(USER, 1, WAIT), "no turn started; log:\n{}", service.log());
}

#[test]
fn steer_cancels_the_running_turn_and_answers_the_new_message() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("steer");
    let capture = home.path().join("agent-stdin.jsonl");
    let channel = telegram_channel(&fake, json!({"dispatchMode": "steer"}));
    home.write_config(&json!({"agent": captured_demo_agent(&capture), "channels": {"phone": channel}}));
    let service = Service::start(&home, &[]);
    // Ten ticks of a second: the turn is still running when the next message comes.
    start_slow_turn(&fake, &service, 1000);
    fake.send_dm(USER, "second thoughts");
    let texts = fake.wait_texts_to(USER, 1, WAIT);
    assert_eq!(texts, vec![format!("echo: {STEER_NOTE}\n\nsecond thoughts")], "log:\n{}", service.log());
    // The cancelled turn's ticks never reach the chat.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fake.texts_to(USER).len(), 1, "{:?}", fake.texts_to(USER));
    let sent = std::fs::read_to_string(&capture).unwrap();
    assert!(sent.contains("\"session/cancel\""), "no cancel sent: {sent}");
    assert_eq!(sent.matches("\"session/prompt\"").count(), 2, "{sent}");
}

#[test]
fn collect_sends_what_arrived_meanwhile_as_one_turn() {
    let fake = FakeTelegram::start();
    let (_home, service) = start(&fake, "collect", json!({"dispatchMode": "collect"}));
    start_slow_turn(&fake, &service, 400);
    fake.send_dm(USER, "alpha");
    fake.send_dm(USER, "beta");
    let texts = fake.wait_texts_to(USER, 2, WAIT);
    assert_eq!(texts, vec![TICKS.to_string(), "echo: alpha\n\nbeta".to_string()], "log:\n{}", service.log());
}

#[test]
fn followup_answers_each_message_in_order() {
    let fake = FakeTelegram::start();
    let (_home, service) = start(&fake, "followup", json!({"dispatchMode": "followup"}));
    start_slow_turn(&fake, &service, 400);
    fake.send_dm(USER, "alpha");
    fake.send_dm(USER, "beta");
    let texts = fake.wait_texts_to(USER, 3, WAIT);
    assert_eq!(texts, vec![TICKS, "echo: alpha", "echo: beta"], "log:\n{}", service.log());
}

#[test]
fn cancel_stops_the_running_request_and_says_so() {
    let fake = FakeTelegram::start();
    let (_home, service) = start(&fake, "cancel", json!({}));
    start_slow_turn(&fake, &service, 1000);
    fake.send_dm(USER, "/cancel");
    assert_eq!(fake.wait_texts_to(USER, 1, WAIT), vec!["Cancelled current request."], "log:\n{}", service.log());
    fake.send_dm(USER, "/cancel");
    let texts = fake.wait_texts_to(USER, 2, WAIT);
    assert_eq!(texts, vec!["Cancelled current request.", "No request is currently running."]);
    // The conversation goes on, and the cancelled ticks never came.
    fake.send_dm(USER, "after");
    let texts = fake.wait_texts_to(USER, 3, WAIT);
    assert_eq!(texts[2..], ["echo: after"], "log:\n{}", service.log());
}

#[test]
fn forum_topic_replies_land_in_their_topic() {
    let fake = FakeTelegram::start();
    let group = -100_555;
    let (_home, service) = start(
        &fake,
        "topics",
        json!({"groupPolicy": "open", "sessionScope": "thread", "groups": {"*": {"requireMention": true}}}),
    );
    fake.send_group(group, USER, "@tether_test_bot in topic seven", Some(7));
    fake.send_group(group, USER, "@tether_test_bot in topic nine", Some(9));
    assert_eq!(fake.wait_texts_to(group, 2, WAIT).len(), 2, "log:\n{}", service.log());
    let mut replies: Vec<(Value, Value)> =
        fake.messages_to(group).into_iter().map(|b| (b["message_thread_id"].clone(), b["text"].clone())).collect();
    replies.sort_by_key(|(thread, _)| thread.as_i64());
    assert_eq!(replies, vec![(json!(7), json!("echo: in topic seven")), (json!(9), json!("echo: in topic nine"))]);
    // "typing…" went to the topics too, and each topic is its own session.
    let typing = fake.calls_of("sendChatAction");
    assert!(typing.iter().any(|c| c.body["message_thread_id"] == 7), "{typing:?}");
    let log = service.log();
    assert!(log.contains("phone:7: session demo-") && log.contains("phone:9: session demo-"), "{log}");
}

#[test]
fn help_lists_the_agents_commands_and_agent_commands_go_through() {
    let fake = FakeTelegram::start();
    let (_home, service) = start(&fake, "help", json!({}));
    fake.send_dm(USER, "hi");
    assert_eq!(fake.wait_texts_to(USER, 1, WAIT), vec!["echo: hi"], "log:\n{}", service.log());
    fake.send_dm(USER, "/help");
    let help = fake.wait_texts_to(USER, 2, WAIT).pop().unwrap_or_default();
    assert!(help.starts_with("Commands:\n/help — Show this help\n/clear — "), "{help}");
    assert!(
        help.contains(
            "Agent commands (forwarded to the agent):\n\
             /words — Words that script me, anywhere in a message: slow, long, empty, error, refuse, maxtokens, permission, tools, ext, huge, hang; crash alone\n\
             /summary — Summarise this session's earlier prompts\n\
             /joke — Tell a short programming joke\n"
        ),
        "{help}"
    );
    assert!(help.ends_with("Send any text to chat with the agent."), "{help}");
    // Not a local command: the agent answers it.
    fake.send_dm(USER, "/joke");
    let joke = fake.wait_texts_to(USER, 3, WAIT).pop().unwrap_or_default();
    assert!(joke.starts_with("Why do programmers"), "{joke}");
}

#[test]
fn quoted_replies_and_instructions_reach_the_agent() {
    let fake = FakeTelegram::start();
    let (_home, service) = start(&fake, "quote", json!({"instructions": "Be brief."}));
    fake.send_reply_to_bot(USER, "and this?", "an \"earlier\" answer\non two lines");
    let first = fake.wait_texts_to(USER, 1, WAIT);
    assert_eq!(
        first,
        vec!["echo: Be brief.\n\n[Replying to: \"an earlier answer on two lines\"]\n\nand this?"],
        "log:\n{}",
        service.log()
    );
    // Instructions go once per session; /clear starts a session that gets them again.
    fake.send_dm(USER, "second");
    assert_eq!(fake.wait_texts_to(USER, 2, WAIT)[1], "echo: second");
    fake.send_dm(USER, "/clear");
    assert_eq!(fake.wait_texts_to(USER, 3, WAIT)[2], "Session cleared. The next message starts a fresh conversation.");
    fake.send_dm(USER, "third");
    assert_eq!(fake.wait_texts_to(USER, 4, WAIT)[3], "echo: Be brief.\n\nthird", "log:\n{}", service.log());
}

/// Two Telegram channels (two bots) in one config.
fn two_channels(a: &FakeTelegram, b: &FakeTelegram, label: &str) -> TempDir {
    let home = TempDir::new(label);
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"alpha": telegram_channel(a, json!({})), "beta": telegram_channel(b, json!({}))},
    }));
    home
}

#[test]
fn every_channel_runs_from_one_start_and_shares_one_agent_process() {
    let (a, b) = (FakeTelegram::start(), FakeTelegram::start());
    let home = two_channels(&a, &b, "multi");
    let service = Service::start(&home, &[]);
    a.send_dm(USER, "to alpha");
    b.send_dm(USER, "to beta");
    assert_eq!(a.wait_texts_to(USER, 1, WAIT), vec!["echo: to alpha"], "log:\n{}", service.log());
    assert_eq!(b.wait_texts_to(USER, 1, WAIT), vec!["echo: to beta"], "log:\n{}", service.log());
    // One demo agent numbers its sessions: both came from the same process. (Its stderr lines
    // reach the log up to a tenth of a second after they were written.)
    let sessions = ["session demo-1 created", "session demo-2 created"];
    let logged = wait_until(WAIT, || sessions.iter().all(|s| service.log().contains(s)));
    let log = service.log();
    assert!(logged, "{log}");
    assert_eq!(log.matches("started agent \"default\"").count(), 1, "{log}");
}

#[test]
fn start_with_a_name_runs_only_that_channel() {
    let (a, b) = (FakeTelegram::start(), FakeTelegram::start());
    let home = two_channels(&a, &b, "named");
    let service = Service::start(&home, &["beta"]);
    b.send_dm(USER, "to beta");
    assert_eq!(b.wait_texts_to(USER, 1, WAIT), vec!["echo: to beta"], "log:\n{}", service.log());
    a.send_dm(USER, "to alpha");
    assert!(!wait_until(Duration::from_millis(800), || a.polls() > 0), "alpha was polled");
    assert!(a.calls_of("getMe").is_empty());
    assert!(a.texts_to(USER).is_empty());
    let log = service.log();
    assert!(log.contains("channel started") && !log.contains("alpha"), "{log}");
}
