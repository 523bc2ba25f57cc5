//! The audit log end to end: tether against the fake Bot API with the demo agent; the lines
//! it writes in each content mode, rotation, `tether audit`, a disk that fails, and channels
//! switched off with `"enabled": false`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent, read_status, run_tether, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn channel(fake: &FakeTelegram) -> Value {
    json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111", "222"]})
}

/// The audit file's lines, parsed (all files, oldest first).
fn lines(path: &Path) -> Vec<Value> {
    let mut files: Vec<std::path::PathBuf> = (1..10).rev().map(|n| path.with_extension(format!("jsonl.{n}"))).collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>())
        .collect()
}

fn events(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["event"].as_str().unwrap_or_default().to_string()).collect()
}

/// Read texts to `chat` until one equals `last` (at most 10 s between texts).
fn texts_until(fake: &FakeTelegram, chat: i64, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    while let Some(t) = fake.next_text_to(chat, Duration::from_secs(10)) {
        let done = t == last;
        texts.push(t);
        if done {
            break;
        }
    }
    texts
}

#[test]
fn a_conversation_with_a_permission_leaves_its_lines_in_each_content_mode() {
    for content in ["full", "hash", "none"] {
        let fake = FakeTelegram::start();
        let home = TempDir::new("audit");
        let path = home.path().join("audit").join("audit.jsonl");
        home.write_config(&json!({
            "agent": demo_agent(),
            "audit": {"path": path, "content": content},
            "channels": {"phone": channel(&fake)},
        }));
        let service = Service::start(&home, &[]);
        // A stranger first: refused; their text (here with the bot's token in it) is kept
        // only in `full`, and the token never.
        let stranger_text = format!("let me in {TOKEN}");
        fake.send_dm(999, &stranger_text);
        let refused = wait_until(WAIT, || events(&lines(&path)).contains(&"message.refused".to_string()));
        assert!(refused, "{content}: no refusal line\nlog:\n{}", service.log());
        fake.send_dm(111, "permission please");
        let ask = fake.next_text_to(111, WAIT).unwrap_or_default();
        assert!(ask.contains("Permission needed"), "{ask}\nlog:\n{}", service.log());
        fake.send_dm(111, "/approve");
        let texts = texts_until(&fake, 111, "permission granted: proceed_once");
        assert_eq!(texts.last().map(String::as_str), Some("permission granted: proceed_once"), "{texts:?}");
        // The final answer's delivery is recorded once the outbox has it delivered.
        let delivered =
            |n| move |lines: &[Value]| events(lines).iter().filter(|e| *e == "answer.delivered").count() >= n;
        assert!(wait_until(WAIT, || delivered(2)(&lines(&path))), "{content}: {:?}", events(&lines(&path)));

        let all = lines(&path);
        let decided: Vec<String> = events(&all).into_iter().filter(|e| e != "answer.delivered").collect();
        assert_eq!(
            decided,
            [
                "agent.started",
                "message.refused",
                "message.accepted",
                "permission.asked",
                "message.accepted",
                "permission.answered"
            ],
            "{content}: {all:#?}"
        );
        let refused = &all[1];
        assert_eq!((refused["sender"].as_str(), refused["channel"].as_str()), (Some("999"), Some("phone")));
        assert_eq!(refused["gate"], "sender not in allowedUsers");
        let accepted = all.iter().find(|l| l["event"] == "message.accepted").unwrap();
        assert_eq!((accepted["sender"].as_str(), accepted["chat"].as_str()), (Some("111"), Some("111")));
        assert!(accepted["session"].as_str().is_some_and(|s| s.contains("111")), "{accepted}");
        let asked = all.iter().find(|l| l["event"] == "permission.asked").unwrap();
        assert_eq!(asked["tool"], "touch demo.txt", "{asked}");
        let answered = all.iter().find(|l| l["event"] == "permission.answered").unwrap();
        assert_eq!((answered["by"].as_str(), answered["request"].as_str()), (Some("111"), Some("1")), "{answered}");
        assert!(answered["option"].as_str().unwrap_or_default().starts_with("proceed_once"), "{answered}");
        let delivery = all.iter().find(|l| l["event"] == "answer.delivered").unwrap();
        assert!(delivery["parts"].as_u64() >= Some(1) && delivery["bytes"].as_u64() > Some(0), "{delivery}");

        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains(TOKEN) && !raw.contains("TEST-token"), "{content}: the token leaked:\n{raw}");
        match content {
            "full" => {
                assert_eq!(accepted["text"], "permission please");
                assert_eq!(refused["text"], "let me in [redacted]");
            }
            "hash" => {
                assert_eq!(accepted["textSha256"], tether::audit::sha256_hex("permission please"));
                assert!(accepted.get("text").is_none() && refused.get("text").is_none(), "{raw}");
                assert!(refused.get("textSha256").is_none(), "a stranger's text leaves no trace: {raw}");
            }
            _ => {
                assert!(!raw.contains("\"text") && !raw.contains("permission please"), "{raw}");
            }
        }
        assert!(!raw.contains("let me in") || content == "full", "{content}: {raw}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn rotation_keeps_max_files_and_tether_audit_filters_by_user_and_channel() {
    let (fake_a, fake_b) = (FakeTelegram::start(), FakeTelegram::start());
    let home = TempDir::new("audit-rotate");
    let path = home.path().join("audit.jsonl");
    home.write_config(&json!({
        "agent": demo_agent(),
        "audit": {"path": path, "content": "full", "maxBytes": 1000, "maxFiles": 3},
        "channels": {"a": channel(&fake_a), "b": channel(&fake_b)},
    }));
    let mut service = Service::start(&home, &[]);
    const MESSAGES: usize = 12;
    for n in 0..MESSAGES {
        let (fake, from) = if n % 2 == 0 { (&fake_a, 111) } else { (&fake_b, 222) };
        fake.send_dm(from, &format!("message number {n}"));
        let echo = format!("echo: message number {n}");
        assert_eq!(fake.next_text_to(from, WAIT).as_deref(), Some(echo.as_str()), "log:\n{}", service.log());
    }
    // The last message's delivery, read across every file: a rotation may fall between its
    // acceptance and its delivery, leaving the two lines in different files.
    let last_delivered = || {
        let all = lines(&path);
        let last = format!("message number {}", MESSAGES - 1);
        all.iter()
            .position(|l| l["event"] == "message.accepted" && l["text"] == last.as_str())
            .is_some_and(|at| all[at..].iter().any(|l| l["event"] == "answer.delivered" && l["channel"] == "b"))
    };
    assert!(wait_until(WAIT, last_delivered), "{:#?}\nlog:\n{}", lines(&path), service.log());
    // Stopped, so that no line is written (nor a file rotated) between the reads below.
    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "did not stop:\n{}", service.log());
    let mut names: Vec<String> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.jsonl"))
        .collect();
    names.sort();
    assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"], "rotated and bounded");
    for name in &names {
        let size = std::fs::metadata(home.path().join(name)).unwrap().len();
        assert!(size <= 1000, "{name} is {size} bytes");
    }

    let audit = |args: &[&str]| {
        let mut all = vec!["audit", "--json", "--config"];
        let config = home.path().join("config.json");
        all.push(config.to_str().unwrap());
        all.extend_from_slice(args);
        let out = run_tether(&all, home.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>()
    };
    let by_222 = audit(&["--user", "222"]);
    assert!(!by_222.is_empty());
    assert!(by_222.iter().all(|l| l["sender"] == "222" || l["by"] == "222"), "{by_222:#?}");
    // Oldest first across the rotated files; the oldest lines went with the file rotated away.
    let numbers: Vec<usize> =
        by_222.iter().filter_map(|l| l["text"].as_str()?.strip_prefix("message number ")?.parse().ok()).collect();
    assert!(numbers.windows(2).all(|w| w[0] + 2 == w[1]), "{numbers:?}");
    assert_eq!(numbers.last(), Some(&(MESSAGES - 1)), "{numbers:?}");
    assert!(!numbers.contains(&1), "the oldest file was dropped: {numbers:?}");
    let on_a = audit(&["--channel", "a"]);
    assert!(!on_a.is_empty() && on_a.iter().all(|l| l["channel"] == "a"), "{on_a:#?}");
    assert!(on_a.iter().any(|l| l["event"] == "answer.delivered"));
    assert!(audit(&["--channel", "a", "--user", "222"]).is_empty());
    assert_eq!(
        audit(&["--since", "1h", "--user", "111", "--channel", "a"]).len(),
        on_a.iter().filter(|l| l["sender"] == "111").count()
    );

    // The table: a header and one line per event.
    let config = home.path().join("config.json");
    let out = run_tether(&["audit", "--user", "111", "--config", config.to_str().unwrap()], home.path());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("TIME"), "{table}");
    assert!(table.lines().skip(1).all(|l| l.contains("message.accepted") && l.contains(" a ")), "{table}");
}

#[test]
fn a_failing_audit_disk_is_reported_and_the_service_goes_on_answering() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("audit-full");
    home.write_config(&json!({
        "agent": demo_agent(),
        "audit": {"path": "/dev/full", "content": "hash"},
        "channels": {"phone": channel(&fake)},
    }));
    let service = Service::start(&home, &[]);
    for n in 0..3 {
        fake.send_dm(111, &format!("hello {n}"));
        let echo = format!("echo: hello {n}");
        assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some(echo.as_str()), "log:\n{}", service.log());
    }
    let reported =
        wait_until(WAIT, || read_status(home.path()).is_some_and(|s| s["audit"]["dropped"].as_u64().unwrap_or(0) > 0));
    let status = read_status(home.path()).unwrap_or_default();
    assert!(reported, "{status:#}\nlog:\n{}", service.log());
    assert!(status["audit"]["lastError"].as_str().unwrap_or_default().contains("/dev/full"), "{status:#}");
    let shown = run_tether(&["status", "--home", home.path().to_str().unwrap()], home.path());
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("Audit log:") && shown.contains("dropped"), "{shown}");
}

#[test]
fn a_disabled_channel_is_not_started_until_a_sighup_enables_it() {
    let (fake_a, fake_b) = (FakeTelegram::start(), FakeTelegram::start());
    let home = TempDir::new("audit-disabled");
    let path = home.path().join("audit.jsonl");
    let config = |enabled: bool| {
        let mut b = channel(&fake_b);
        b["enabled"] = json!(enabled);
        json!({
            "agent": demo_agent(),
            "audit": {"path": path, "content": "none"},
            "allowedChannelTypes": ["telegram"],
            "channels": {"a": channel(&fake_a), "b": b},
        })
    };
    home.write_config(&config(false));
    let check = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    let shown = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(shown.contains("disabled") && shown.contains("audit: ") && shown.contains("content none"), "{shown}");

    let service = Service::start(&home, &[]);
    fake_a.send_dm(111, "one");
    assert_eq!(fake_a.next_text_to(111, WAIT).as_deref(), Some("echo: one"), "{}", service.log());
    assert!(fake_b.calls_of("getMe").is_empty() && fake_b.calls_of("getUpdates").is_empty(), "b was started");
    let disabled = wait_until(WAIT, || read_status(home.path()).is_some_and(|s| s["disabled"] == json!(["b"])));
    assert!(disabled, "{:?}", read_status(home.path()));
    let status = read_status(home.path()).unwrap();
    assert!(status["channels"].get("b").is_none(), "{status:#}");

    home.write_config(&config(true));
    service.signal("HUP");
    assert!(service.wait_for_log("config reloaded: added [b]", WAIT), "{}", service.log());
    fake_b.send_dm(222, "to b");
    assert_eq!(fake_b.next_text_to(222, WAIT).as_deref(), Some("echo: to b"), "{}", service.log());
    let reloaded = wait_until(WAIT, || lines(&path).iter().any(|l| l["event"] == "config.reloaded"));
    assert!(reloaded);
    let line = lines(&path).into_iter().find(|l| l["event"] == "config.reloaded").unwrap();
    assert_eq!(line["added"], json!(["b"]));

    // A type outside allowedChannelTypes is refused at start, naming the type and the list.
    let mut refused = config(true);
    refused["allowedChannelTypes"] = json!(["webchat"]);
    home.write_config(&refused);
    let out = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    let error = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{error}");
    assert!(error.contains("\"telegram\" is not in \"allowedChannelTypes\" [webchat]"), "{error}");
}

#[test]
fn pairing_requested_then_approved_and_revoked_by_the_cli() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("audit-pairing");
    let path = home.path().join("audit.jsonl");
    let mut phone = channel(&fake);
    phone["senderPolicy"] = json!("pairing");
    home.write_config(&json!({
        "agent": demo_agent(),
        "audit": {"path": path, "content": "hash"},
        "channels": {"phone": phone},
    }));
    let service = Service::start(&home, &[]);
    fake.send_dm(555, "let me in");
    let reply = fake.next_text_to(555, WAIT).unwrap_or_default();
    let code: String = reply.split("Your pairing code is: ").nth(1).unwrap_or_default().chars().take(8).collect();
    assert_eq!(code.len(), 8, "{reply}\nlog:\n{}", service.log());
    for args in [["pairing", "approve", "phone", code.as_str()], ["pairing", "revoke", "phone", "555"]] {
        let out = run_tether(&args, home.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let done = || events(&lines(&path)).contains(&"pairing.revoked".to_string());
    assert!(wait_until(WAIT, done), "{:?}", lines(&path));
    let pairing: Vec<(String, String, String)> = lines(&path)
        .iter()
        .filter(|l| l["event"].as_str().is_some_and(|e| e.starts_with("pairing.")))
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (field("event"), field("sender"), field("by"))
        })
        .collect();
    let expected =
        [("pairing.requested", "555", ""), ("pairing.approved", "555", "cli"), ("pairing.revoked", "555", "cli")];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(pairing, expected);
    let refused = lines(&path).into_iter().find(|l| l["event"] == "message.refused").unwrap();
    assert_eq!(refused["gate"], "unpaired sender (senderPolicy pairing)");
    assert!(refused.get("text").is_none() && refused.get("textSha256").is_none(), "{refused}");
}

#[test]
fn an_agent_crash_and_its_restart_are_recorded() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("audit-crash");
    let path = home.path().join("audit.jsonl");
    home.write_config(&json!({
        "agent": demo_agent(),
        "audit": {"path": path, "content": "none"},
        "channels": {"phone": channel(&fake)},
    }));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "crash");
    let restarted = || {
        let events = events(&lines(&path));
        let at = |name: &str| events.iter().position(|e| e == name);
        matches!((at("agent.crashed"), at("agent.restarted")), (Some(c), Some(r)) if c < r)
    };
    assert!(wait_until(WAIT, restarted), "{:?}\nlog:\n{}", events(&lines(&path)), service.log());
    let crashed = lines(&path).into_iter().find(|l| l["event"] == "agent.crashed").unwrap();
    assert_eq!(crashed["agent"], "default");
    assert!(!crashed["reason"].as_str().unwrap_or_default().is_empty(), "{crashed}");
}

/// An admin page request with the home's admin token; returns the status code.
fn admin_post(home: &TempDir, addr: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(home.path().join("admin-token")).expect("an admin token in the home");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_pairing_approved_on_the_admin_page_names_the_client() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("audit-admin");
    let path = home.path().join("audit.jsonl");
    let mut phone = channel(&fake);
    phone["senderPolicy"] = json!("pairing");
    home.write_config(&json!({
        "agent": demo_agent(),
        "audit": {"path": path, "content": "none"},
        "channels": {"phone": phone, "web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open"}},
    }));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", WAIT), "{}", service.log());
    let log = service.log();
    let addr = log.split("web chat on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    fake.send_dm(555, "let me in");
    let reply = fake.next_text_to(555, WAIT).unwrap_or_default();
    let code: String = reply.split("Your pairing code is: ").nth(1).unwrap_or_default().chars().take(8).collect();
    let approve = json!({"action": "approve", "channel": "phone", "code": code}).to_string();
    assert_eq!(admin_post(&home, &addr, "/admin/api/action", &approve), 200);
    let approved = || lines(&path).into_iter().find(|l| l["event"] == "pairing.approved");
    assert!(wait_until(WAIT, || approved().is_some()), "{:?}", lines(&path));
    let line = approved().unwrap();
    assert_eq!((line["sender"].as_str(), line["by"].as_str()), (Some("555"), Some("admin page (127.0.0.1)")), "{line}");
}
