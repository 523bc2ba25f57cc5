//! Tool permissions relayed to the chat: the demo agent's `permission` scenario through the
//! fake Bot API, answered by text.

use std::time::Duration;

use serde_json::json;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn start(extra: serde_json::Value) -> (FakeTelegram, TempDir, Service) {
    let fake = FakeTelegram::start();
    let home = TempDir::new("perm");
    let mut channel = json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111"]});
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let service = Service::start(&home, &[]);
    (fake, home, service)
}

#[test]
fn approve_and_deny_by_text_reach_the_agent() {
    let (fake, _home, service) = start(json!({}));
    for (answer, expected) in [("/approve", "permission granted: proceed_once"), ("no 2", "permission denied")] {
        fake.send_dm(111, "permission please");
        let ask = fake.next_text_to(111, WAIT).unwrap_or_default();
        assert!(ask.contains("Permission needed") && ask.contains("touch demo.txt"), "{ask}\nlog:\n{}", service.log());
        fake.send_dm(111, answer);
        let mut texts = Vec::new();
        while let Some(t) = fake.next_text_to(111, Duration::from_secs(10)) {
            let done = t == expected;
            texts.push(t);
            if done {
                break;
            }
        }
        assert_eq!(texts.last().map(String::as_str), Some(expected), "{texts:?}\nlog:\n{}", service.log());
    }
}

#[test]
fn an_unanswered_request_times_out_as_a_refusal() {
    let (fake, _home, service) = start(json!({"permissionTimeoutMs": 500}));
    fake.send_dm(111, "permission please");
    let mut texts = Vec::new();
    while let Some(t) = fake.next_text_to(111, Duration::from_secs(10)) {
        let done = t == "permission denied";
        texts.push(t);
        if done {
            break;
        }
    }
    assert!(
        texts.iter().any(|t| t.contains("timed out, so the agent was told no")),
        "{texts:?}\nlog:\n{}",
        service.log()
    );
    assert_eq!(texts.last().map(String::as_str), Some("permission denied"));
}

#[test]
fn permissions_allow_approves_without_asking() {
    let (fake, _home, service) = start(json!({"permissions": "allow"}));
    fake.send_dm(111, "permission please");
    assert_eq!(
        fake.next_text_to(111, WAIT).as_deref(),
        Some("permission granted: proceed_once"),
        "log:\n{}",
        service.log()
    );
}

#[test]
fn a_button_press_answers_and_the_question_is_edited() {
    let (fake, _home, service) = start(json!({}));
    fake.send_dm(111, "permission please");
    let ask = fake.next_call("sendMessage", WAIT).expect("the question");
    let keyboard = &ask.body["reply_markup"]["inline_keyboard"][0];
    let data: Vec<&str> = keyboard.as_array().unwrap().iter().map(|b| b["callback_data"].as_str().unwrap()).collect();
    assert_eq!(data, vec!["perm:1:once", "perm:1:always", "perm:1:deny"], "{}", ask.body);
    let callback = fake.press_button(111, 0, "perm:1:always");
    // The press is answered and the question edited; the two calls go out in parallel (the
    // chat's bucket does not hold the edit back), so they may arrive in either order.
    let both = || !fake.calls_of("answerCallbackQuery").is_empty() && !fake.calls_of("editMessageText").is_empty();
    assert!(wait_until(WAIT, both), "the press is answered and the question edited; log:\n{}", service.log());
    let ack = fake.calls_of("answerCallbackQuery").remove(0);
    assert_eq!(ack.body["callback_query_id"], callback.as_str());
    let edit = fake.calls_of("editMessageText").remove(0);
    assert!(edit.body["text"].as_str().unwrap_or_default().contains("approved always"), "{}", edit.body);
    assert!(edit.body.get("reply_markup").is_none(), "the buttons are removed");
    let mut last = String::new();
    while let Some(t) = fake.next_text_to(111, Duration::from_secs(10)) {
        last = t;
        if last.starts_with("permission granted") {
            break;
        }
    }
    assert_eq!(last, "permission granted: proceed_always", "log:\n{}", service.log());
    // A second press of the same button: no longer pending.
    fake.press_button(111, 0, "perm:1:deny");
    assert!(wait_until(WAIT, || fake.calls_of("answerCallbackQuery").len() == 2), "not answered again");
    let ack = fake.calls_of("answerCallbackQuery").remove(1);
    assert!(ack.body["text"].as_str().unwrap_or_default().contains("no longer pending"), "{}", ack.body);
}

#[test]
fn a_strangers_button_press_is_refused() {
    let (fake, _home, service) = start(json!({}));
    fake.send_dm(111, "permission please");
    fake.next_call("sendMessage", WAIT).expect("the question");
    fake.press_button(999, 0, "perm:1:once");
    let ack = fake.next_call("answerCallbackQuery", WAIT).expect("the press is answered");
    assert_eq!(ack.body["text"], "Not allowed.", "log:\n{}", service.log());
    fake.send_dm(111, "/deny");
    let mut last = String::new();
    while let Some(t) = fake.next_text_to(111, Duration::from_secs(10)) {
        last = t;
        if last.starts_with("permission") {
            break;
        }
    }
    assert_eq!(last, "permission denied");
}

/// In a group, only the person whose message started the work may approve its tools; another
/// member (even one in `allowedUsers`) is told no, and the agent waits for the right person.
#[test]
fn in_a_group_only_the_sender_of_the_causing_message_approves() {
    let (fake, _home, service) = start(json!({
        "allowedUsers": ["111", "222"], "groupPolicy": "open", "groups": {"*": {"requireMention": false}}
    }));
    const GROUP: i64 = -100_424_242;
    fake.send_group(GROUP, 111, "permission please", None);
    let ask = fake.next_text_to(GROUP, WAIT).unwrap_or_default();
    assert!(ask.contains("Permission needed"), "{ask}\nlog:\n{}", service.log());
    fake.send_group(GROUP, 222, "/approve", None);
    let refusal = fake.next_text_to(GROUP, WAIT).unwrap_or_default();
    assert!(refusal.contains("whose message started"), "another member approved: {refusal}\nlog:\n{}", service.log());
    fake.send_group(GROUP, 111, "/approve", None);
    let mut last = String::new();
    while let Some(t) = fake.next_text_to(GROUP, Duration::from_secs(10)) {
        last = t;
        if last.starts_with("permission") {
            break;
        }
    }
    assert_eq!(last, "permission granted: proceed_once", "log:\n{}", service.log());
}
