//! Webhooks end to end: a signed POST becomes a turn of the demo agent whose answer arrives in
//! a Telegram chat (fake Bot API); bad signatures, replays, stale timestamps and oversized
//! bodies are refused with the documented status and reach nobody.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent};

const WAIT: Duration = Duration::from_secs(20);
const CI_SECRET: &str = "ci-secret-0123456789abcdef";
const ALERT_SECRET: &str = "alert-secret-0123456789";

/// GitHub's signature, computed here independently of tether: HMAC-SHA256 of the signed bytes.
fn github_signature(secret: &str, signed: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// POST `body` to `path` with `headers`; the status.
fn post(addr: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A body over the limit is refused from its Content-Length: the server may close early.
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn start() -> (FakeTelegram, TempDir, Service, String) {
    let fake = FakeTelegram::start();
    let home = TempDir::new("webhook");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "phone": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(),
                      "senderPolicy": "allowlist", "allowedUsers": ["111"]},
            "hooks": {"type": "webhook", "listen": "127.0.0.1:0", "sources": {
                "ci": {"secret": "$CI_SECRET", "target": {"channel": "phone", "chat": 111}},
                "alerts": {"secret": ALERT_SECRET, "signature": "header", "header": "X-Alert-Token",
                           "target": {"channel": "phone", "chat": "111"},
                           "template": "Alert {event} from {source}: {payload}"},
                "raw": {"secret": ALERT_SECRET, "signature": "header",
                        "target": {"channel": "phone", "chat": "111"}, "template": "{payload}"},
            }},
        }
    }));
    let service = Service::start_with_env(&home, &[], &[("CI_SECRET", CI_SECRET)]);
    assert!(service.wait_for_log("webhooks on http://", WAIT), "{}", service.log());
    let log = service.log();
    let addr = log.split("webhooks on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    (fake, home, service, addr)
}

#[test]
fn a_signed_event_is_answered_in_the_target_telegram_chat_and_bad_ones_are_refused() {
    let (fake, _home, service, addr) = start();
    let body = json!({"action": "completed", "workflow_run": {"conclusion": "failure", "name": "tests"}}).to_string();
    let signature = github_signature(CI_SECRET, body.as_bytes());
    let event = ("X-GitHub-Event", "workflow_run".to_string());

    // Refused first, so that an answer in the chat can only come from the good one.
    let wrong = github_signature("not-the-secret-at-all", body.as_bytes());
    assert_eq!(post(&addr, "/hooks/ci", &[("X-Hub-Signature-256", wrong), event.clone()], body.as_bytes()), 401);
    assert_eq!(post(&addr, "/hooks/ci", std::slice::from_ref(&event), body.as_bytes()), 401);
    let tampered = body.replace("failure", "success");
    let headers = [("X-Hub-Signature-256", signature.clone()), event.clone()];
    assert_eq!(post(&addr, "/hooks/ci", &headers, tampered.as_bytes()), 401);
    assert_eq!(post(&addr, "/hooks/nobody", &headers, body.as_bytes()), 404);
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    let huge_sig = github_signature(CI_SECRET, huge.as_bytes());
    assert_eq!(post(&addr, "/hooks/ci", &[("X-Hub-Signature-256", huge_sig)], huge.as_bytes()), 413);
    // A stale timestamp, properly signed.
    let stale = now_secs() - 600;
    let stale_sig = github_signature(CI_SECRET, format!("{stale}.{body}").as_bytes());
    let stale_headers = [("X-Hub-Signature-256", stale_sig), ("X-Webhook-Timestamp", stale.to_string())];
    assert_eq!(post(&addr, "/hooks/ci", &stale_headers, body.as_bytes()), 401);
    assert_eq!(fake.next_text_to(111, Duration::from_millis(1500)), None, "log:\n{}", service.log());

    // The good one: accepted, then answered in chat 111 of the Telegram channel.
    let posted = std::time::Instant::now();
    assert_eq!(post(&addr, "/hooks/ci", &headers, body.as_bytes()), 202);
    eprintln!("webhook POST answered 202 in {} ms", posted.elapsed().as_millis());
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    eprintln!("webhook POST to the answer in the Telegram chat: {} ms", posted.elapsed().as_millis());
    assert!(
        reply.starts_with("echo: A webhook event arrived from \"ci\" (event: workflow_run)"),
        "{reply}\nlog:\n{}",
        service.log()
    );
    assert!(reply.contains("\"conclusion\":\"failure\""), "{reply}");
    // The same delivery again is a replay.
    assert_eq!(post(&addr, "/hooks/ci", &headers, body.as_bytes()), 409);

    // A shared-secret source with a fresh timestamp and its own template.
    let alert = json!({"type": "disk_full", "host": "db1"}).to_string();
    let ts = now_secs().to_string();
    let bad = [("X-Alert-Token", "alert-secret-wrong".to_string()), ("X-Webhook-Timestamp", ts.clone())];
    assert_eq!(post(&addr, "/hooks/alerts", &bad, alert.as_bytes()), 401);
    let good = [("X-Alert-Token", ALERT_SECRET.to_string()), ("X-Webhook-Timestamp", ts)];
    assert_eq!(post(&addr, "/hooks/alerts", &good, alert.as_bytes()), 202);
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert_eq!(reply, format!("echo: Alert disk_full from alerts: {alert}"), "log:\n{}", service.log());

    // Nothing else reached the chat, the secret never reached the log, and refusals were
    // reported once as a warning.
    assert_eq!(fake.next_text_to(111, Duration::from_millis(500)), None);
    let log = service.log();
    assert!(!log.contains(CI_SECRET) && !log.contains(ALERT_SECRET), "log:\n{log}");
    assert_eq!(log.matches("refusals are logged as warnings at most once a minute").count(), 1, "log:\n{log}");
}

#[test]
fn a_webhook_event_is_no_command() {
    let (fake, _home, service, addr) = start();
    // This source's template is the payload alone: "/clear" is the whole prompt, and still
    // goes to the agent instead of clearing the chat's conversation.
    let headers = [("X-Webhook-Secret", ALERT_SECRET.to_string())];
    assert_eq!(post(&addr, "/hooks/raw", &headers, b"/clear"), 202);
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert_eq!(reply, "echo: /clear", "log:\n{}", service.log());
}
