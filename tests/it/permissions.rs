//! Tool permissions relayed to the chat: the demo agent's `permission` scenario through the
//! fake Bot API, answered by text.

use std::time::Duration;

use serde_json::json;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent};

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
