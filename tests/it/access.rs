//! Access control end to end: sender policies, DM pairing with the `tether pairing` CLI
//! against the running service, group policy and mention gating, and the state files' modes.
//! What the agent received is read from the captured agent input, never inferred.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_telegram::{BOT_ID, BOT_USERNAME, FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, captured_demo_agent, read_status, run_tether, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const FRIEND: i64 = 111;
const PAIRED_TEXT: &str = "You're paired: you can talk to the agent here now. Send any message to start.";

/// A home with a config for channel "phone", the demo agent's input captured.
struct Setup {
    fake: FakeTelegram,
    home: TempDir,
    capture: std::path::PathBuf,
    service: Service,
    syncs: u32,
}

impl Setup {
    fn start(label: &str, channel: Value) -> Setup {
        let fake = FakeTelegram::start();
        let home = TempDir::new(label);
        let capture = home.path().join("agent-stdin.jsonl");
        let mut base =
            json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": [FRIEND.to_string()]});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), channel.as_object()) {
            b.extend(extra.clone());
        }
        home.write_config(&json!({"agent": captured_demo_agent(&capture), "channels": {"phone": base}}));
        let service = Service::start(&home, &[]);
        assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
        Setup { fake, home, capture, service, syncs: 0 }
    }

    /// The allowed friend sends a message and gets its echo: everything queued before it
    /// has been through the core by then.
    fn sync(&mut self) {
        self.syncs += 1;
        let text = format!("sync {}", self.syncs);
        self.fake.send_dm(FRIEND, &text);
        let expected = format!("echo: {text}");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.fake.next_text_to(FRIEND, left) {
                Some(t) if t == expected => return,
                Some(_) => continue,
                None => panic!("no {expected:?}; log:\n{}", self.service.log()),
            }
        }
    }

    fn agent_input(&self) -> String {
        std::fs::read_to_string(&self.capture).unwrap_or_default()
    }

    fn assert_agent_never_saw(&self, words: &[&str]) {
        let input = self.agent_input();
        for w in words {
            assert!(!input.contains(w), "the agent received {w:?}:\n{input}");
        }
    }

    /// `tether pairing ARGS --home HOME`, with `TETHER_HOME` pointing elsewhere: `--home` wins.
    fn pairing(&self, args: &[&str]) -> Output {
        let mut all = vec!["pairing"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--home", self.home.path().to_str().unwrap()]);
        run_tether(&all, Path::new("/nonexistent/tether-home"))
    }

    /// Whether `status.json` comes to count `pending` live pairing requests for the channel
    /// (it is written within a second or two of a change).
    fn status_shows_pending(&self, pending: u64) -> bool {
        wait_until(WAIT, || {
            read_status(self.home.path())
                .is_some_and(|status| status["channels"]["phone"]["pendingPairing"].as_u64() == Some(pending))
        })
    }

    fn pairing_file(&self) -> std::path::PathBuf {
        self.home.path().join("phone-pairing.json")
    }

    fn allowlist_file(&self) -> std::path::PathBuf {
        self.home.path().join("phone-allowlist.json")
    }

    fn assert_private(&self) {
        assert_eq!(mode(self.home.path()), 0o700, "home directory");
        for file in [self.pairing_file(), self.allowlist_file()] {
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{}", file.display());
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The code in a pairing reply.
fn code_in(text: &str) -> String {
    let start = text.find("Your pairing code is: ").unwrap_or_else(|| panic!("no code in {text:?}")) + 22;
    text[start..start + 8].to_string()
}

fn pairing_channel() -> Value {
    json!({"senderPolicy": "pairing"})
}

#[test]
fn pairing_round_trip_with_the_cli_against_the_running_service() {
    let mut s = Setup::start("pair-trip", pairing_channel());
    s.fake.send_dm(555, "/start");
    let reply = s.fake.next_text_to(555, WAIT).unwrap_or_else(|| panic!("no code; log:\n{}", s.service.log()));
    let code = code_in(&reply);
    assert_eq!(
        reply,
        format!(
            "Hi! This bot answers only people its operator has approved.\n\nYour pairing code is: {code}\n\n\
             Ask the bot operator to approve you with:\ntether pairing approve phone {code}"
        )
    );
    assert!(code.chars().all(|c| "ABCDEFGHJKLMNPQRSTUVWXYZ23456789".contains(c)), "{code}");
    // More messages from the pending stranger: no second reply, nothing to the agent.
    s.fake.send_dm(555, "pending secret one");
    s.fake.send_dm(555, "pending secret two");
    s.sync();
    assert_eq!(s.fake.texts_to(555).len(), 1, "{:?}", s.fake.texts_to(555));
    s.assert_agent_never_saw(&["pending secret", "/start"]);
    // The request is on disk, privately, in Qwen Code's shape.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(s.pairing_file()).unwrap()).unwrap();
    assert_eq!(saved[0]["senderId"], "555");
    assert_eq!(saved[0]["code"], code.as_str());
    assert!(saved[0]["createdAt"].as_u64().unwrap() > 1_700_000_000_000);
    s.assert_private();
    assert!(s.status_shows_pending(1), "status.json: {:?}", read_status(s.home.path()));

    let list = s.pairing(&["list", "phone"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    assert_eq!(
        stdout(&list),
        format!("Pending pairing requests for \"phone\":\n  Code: {code}  Sender: 555 (name \"User\")  0m ago\n")
    );
    // Approve with the code in lower case.
    let approve = s.pairing(&["approve", "phone", &code.to_lowercase()]);
    assert_eq!(approve.status.code(), Some(0), "{}", stderr(&approve));
    assert_eq!(stdout(&approve), "Approved: 555 (name \"User\") can now use channel \"phone\".\n");
    s.assert_private();
    // The running service notices and tells them, without a restart.
    assert_eq!(s.fake.next_text_to(555, WAIT).as_deref(), Some(PAIRED_TEXT), "log:\n{}", s.service.log());
    assert!(s.status_shows_pending(0), "status.json: {:?}", read_status(s.home.path()));
    s.fake.send_dm(555, "first real question");
    assert_eq!(s.fake.next_text_to(555, WAIT).as_deref(), Some("echo: first real question"));
    assert!(s.agent_input().contains("first real question"));
    s.assert_agent_never_saw(&["pending secret"]);
    let allowed = s.pairing(&["allowed", "phone"]);
    assert_eq!(
        stdout(&allowed),
        "Approved users for \"phone\":\n  111  (allowedUsers in the config)\n  555  (paired)\n"
    );
    // The code is spent.
    let again = s.pairing(&["approve", "phone", &code]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        format!(
            "No pending request found for code \"{code}\". It may have expired.\n\
             See the live codes with: tether pairing list phone\n"
        )
    );
}

#[test]
fn at_most_three_pending_and_the_fourth_stranger_gets_nothing() {
    let mut s = Setup::start("pair-cap", pairing_channel());
    for sender in [601, 602, 603] {
        s.fake.send_dm(sender, "hi");
        let reply = s.fake.next_text_to(sender, WAIT).unwrap_or_else(|| panic!("{sender}: {}", s.service.log()));
        code_in(&reply);
    }
    s.fake.send_dm(604, "me too");
    s.sync();
    assert_eq!(s.fake.texts_to(604), Vec::<String>::new());
    assert!(s.service.log().contains("dropped message from 604: 3 pairing requests pending already"));
    let list = stdout(&s.pairing(&["list", "phone"]));
    assert_eq!(list.matches("  Code: ").count(), 3, "{list}");
    assert!(!list.contains("604"), "{list}");
    let saved: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(s.pairing_file()).unwrap()).unwrap();
    assert_eq!(saved.len(), 3);
    // Denying one frees a slot for the next stranger.
    let code = saved[0]["code"].as_str().unwrap().to_string();
    let deny = s.pairing(&["deny", "phone", &code]);
    assert_eq!(deny.status.code(), Some(0), "{}", stderr(&deny));
    assert_eq!(stdout(&deny), format!("Denied: 601 (name \"User\"); code {code} no longer works.\n"));
    assert!(s.service.wait_for_log("601 (name \"User\") was denied or expired", WAIT), "log:\n{}", s.service.log());
    s.fake.send_dm(605, "my turn");
    assert!(s.fake.next_text_to(605, WAIT).is_some_and(|t| t.contains("Your pairing code is: ")));
    s.assert_agent_never_saw(&["me too", "my turn", "\"hi\""]);
}

#[test]
fn deny_revoke_and_exit_codes_and_revoke_takes_effect_at_once() {
    let mut s = Setup::start("pair-revoke", pairing_channel());
    // A wrong code exits 1 with the message.
    let missed = s.pairing(&["approve", "phone", "WRONG234"]);
    assert_eq!(missed.status.code(), Some(1));
    assert!(stderr(&missed).starts_with("No pending request found for code \"WRONG234\". It may have expired."));
    assert_eq!(stdout(&missed), "");
    assert_eq!(s.pairing(&["deny", "phone", "WRONG234"]).status.code(), Some(1));
    assert_eq!(stdout(&s.pairing(&["list", "phone"])), "No pending pairing requests.\n");
    assert_eq!(
        stdout(&s.pairing(&["allowed", "phone"])),
        "Approved users for \"phone\":\n  111  (allowedUsers in the config)\n"
    );
    // Pair someone, then revoke them while the service runs.
    s.fake.send_dm(700, "let me in");
    let code = code_in(&s.fake.next_text_to(700, WAIT).unwrap());
    assert_eq!(s.pairing(&["approve", "phone", &code]).status.code(), Some(0));
    assert_eq!(s.fake.next_text_to(700, WAIT).as_deref(), Some(PAIRED_TEXT));
    s.fake.send_dm(700, "while paired");
    assert_eq!(s.fake.next_text_to(700, WAIT).as_deref(), Some("echo: while paired"));
    let revoke = s.pairing(&["revoke", "phone", "700"]);
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));
    assert_eq!(stdout(&revoke), "Revoked: 700 can no longer use channel \"phone\".\n");
    s.assert_private();
    assert!(s.service.wait_for_log("700 is no longer approved", WAIT), "log:\n{}", s.service.log());
    s.fake.send_dm(700, "after revoke secret");
    s.sync();
    s.assert_agent_never_saw(&["after revoke secret"]);
    let again = s.pairing(&["revoke", "phone", "700"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(stderr(&again), "User \"700\" is not a paired user of channel \"phone\".\n");
    // Unknown channel and bad words.
    let unknown = s.pairing(&["list", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("channel \"nope\" not found in"), "{}", stderr(&unknown));
    assert_eq!(s.pairing(&["approve", "phone"]).status.code(), Some(2));
}

#[test]
fn strangers_never_reach_the_agent_under_allowlist_or_pairing() {
    for policy in ["allowlist", "pairing"] {
        let mut s = Setup::start(
            &format!("stranger-{policy}"),
            json!({
                "senderPolicy": policy, "groupPolicy": "open", "groups": {"*": {"requireMention": false}}
            }),
        );
        // Group first: a code must not be posted there even when it is the first contact.
        s.fake.send_group_with_entities(-100900, 900, "group stranger words", json!([]));
        let mention = format!("@{BOT_USERNAME} mentioned stranger words");
        s.fake.send_group_with_entities(
            -100900,
            900,
            &mention,
            json!([{"type": "mention", "offset": 0, "length": BOT_USERNAME.len() + 1}]),
        );
        s.fake.send_dm(900, "dm stranger words");
        s.sync();
        s.assert_agent_never_saw(&["stranger words"]);
        assert_eq!(s.fake.texts_to(-100900), Vec::<String>::new(), "{policy}");
        let to_stranger = s.fake.texts_to(900);
        match policy {
            "allowlist" => assert_eq!(to_stranger, Vec::<String>::new()),
            _ => assert_eq!(to_stranger.len(), 1, "{to_stranger:?}"),
        }
        // A group message from the friend does get through, so the group path works.
        s.fake.send_group_with_entities(-100900, FRIEND, "friend in group", json!([]));
        assert_eq!(s.fake.next_text_to(-100900, WAIT).as_deref(), Some("echo: friend in group"));
    }
}

#[test]
fn codes_are_never_posted_in_a_group() {
    let mut s = Setup::start(
        "pair-group",
        json!({
            "senderPolicy": "pairing", "groupPolicy": "allowlist", "groups": {"-100777": {}}
        }),
    );
    let mention = json!([{"type": "mention", "offset": 0, "length": BOT_USERNAME.len() + 1}]);
    s.fake.send_group_with_entities(-100777, 777, &format!("@{BOT_USERNAME} pair me please"), mention.clone());
    s.fake.send_group_with_entities(-100777, 777, &format!("@{BOT_USERNAME} /start"), mention);
    s.sync();
    assert_eq!(s.fake.texts_to(-100777), Vec::<String>::new());
    assert!(s.service.log().contains("unpaired sender in a group (codes go to DMs only)"), "{}", s.service.log());
    assert!(!s.pairing_file().exists(), "no request was made from a group");
    // In a DM the same person gets a code, and only there.
    s.fake.send_dm(777, "pair me");
    let code = code_in(&s.fake.next_text_to(777, WAIT).unwrap());
    let everything_sent: Vec<String> = s
        .fake
        .calls_of("sendMessage")
        .iter()
        .filter(|c| c.body["chat_id"] != json!(777))
        .map(|c| c.body.to_string())
        .collect();
    assert!(everything_sent.iter().all(|body| !body.contains(&code)), "{everything_sent:?}");
    s.assert_agent_never_saw(&["pair me"]);
}

#[test]
fn forged_mentions_do_not_pass_in_a_group_that_requires_a_mention() {
    let mut s = Setup::start(
        "mentions",
        json!({
            "senderPolicy": "allowlist", "groupPolicy": "allowlist", "groups": {"-100555": {}}
        }),
    );
    let group = -100555;
    let name = BOT_USERNAME;
    let len = |t: &str| t.encode_utf16().count();
    let forged: Vec<(String, Value)> = vec![
        // Another bot's handle.
        ("@otherbot forged-one".to_string(), json!([{"type": "mention", "offset": 0, "length": 9}])),
        // Our name inside a code span.
        (format!("@{name} forged-two"), json!([{"type": "code", "offset": 0, "length": len(name) + 1}])),
        // Our name inside a URL.
        (format!("https://t.me/{name} forged-three"), json!([{"type": "url", "offset": 0, "length": 13 + len(name)}])),
        // A command for another bot.
        ("/help@otherbot forged-four".to_string(), json!([{"type": "bot_command", "offset": 0, "length": 14}])),
        // Our handle typed without Telegram marking it as a mention.
        (format!("@{name} forged-five"), json!([])),
        // A text_mention of someone else.
        (
            "Bob forged-six".to_string(),
            json!([{"type": "text_mention", "offset": 0, "length": 3, "user": {"id": 12345}}]),
        ),
        // A mention entity whose offsets point elsewhere.
        (format!("xx @{name} forged-seven"), json!([{"type": "mention", "offset": 0, "length": len(name) + 1}])),
    ];
    for (text, entities) in &forged {
        s.fake.send_group_with_entities(group, FRIEND, text, entities.clone());
    }
    // A message in a forum topic "replying" to the topic's root (which the bot created).
    s.fake.push(json!({
        "message_id": 0, "chat": {"id": group, "type": "supergroup", "is_forum": true},
        "from": {"id": FRIEND, "is_bot": false, "first_name": "F"}, "text": "forged-eight",
        "is_topic_message": true, "message_thread_id": 42,
        "reply_to_message": {"message_id": 42, "from": {"id": BOT_ID, "is_bot": true}, "forum_topic_created": {"name": "t"}}
    }));
    // The real forms: a mention, a command addressed to us, a reply to one of our messages.
    let real = format!("@{name} real-mention");
    s.fake.send_group_with_entities(
        group,
        FRIEND,
        &real,
        json!([{"type": "mention", "offset": 0, "length": len(name) + 1}]),
    );
    assert_eq!(s.fake.next_text_to(group, WAIT).as_deref(), Some("echo: real-mention"), "log:\n{}", s.service.log());
    let command = format!("/echo@{name} real-command");
    s.fake.send_group_with_entities(
        group,
        FRIEND,
        &command,
        json!([{"type": "bot_command", "offset": 0, "length": len(name) + 6}]),
    );
    assert_eq!(s.fake.next_text_to(group, WAIT).as_deref(), Some("echo: /echo real-command"));
    s.fake.push(json!({
        "message_id": 0, "chat": {"id": group, "type": "supergroup"},
        "from": {"id": FRIEND, "is_bot": false, "first_name": "F"}, "text": "real-reply",
        "reply_to_message": {"message_id": 3, "from": {"id": BOT_ID, "is_bot": true}, "text": "echo: real-mention"}
    }));
    let answer = s.fake.next_text_to(group, WAIT).unwrap_or_default();
    assert!(answer.starts_with("echo: ") && answer.ends_with("real-reply"), "{answer:?}");
    s.assert_agent_never_saw(&["forged-"]);
    assert_eq!(s.fake.texts_to(group).len(), 3, "{:?}", s.fake.texts_to(group));
    // The bot's handle was stripped from what the agent got.
    assert!(!s.agent_input().contains(&format!("@{name}")), "{}", s.agent_input());
    s.sync();
}

#[test]
fn an_expired_request_in_the_file_is_ignored_and_a_new_code_is_made() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("pair-expired");
    let capture = home.path().join("agent-stdin.jsonl");
    let two_hours_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        - 2 * 60 * 60 * 1000;
    std::fs::write(
        home.path().join("phone-pairing.json"),
        json!([{"senderId": "555", "senderName": "Old", "code": "ABCDEFGH", "createdAt": two_hours_ago}]).to_string(),
    )
    .unwrap();
    home.write_config(&json!({"agent": captured_demo_agent(&capture), "channels": {"phone": {
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(), "senderPolicy": "pairing"
    }}}));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("connected as @", WAIT), "log:\n{}", service.log());
    let list = run_tether(&["pairing", "list", "phone"], home.path());
    assert_eq!(stdout(&list), "No pending pairing requests.\n");
    let approve = run_tether(&["pairing", "approve", "phone", "abcdefgh"], home.path());
    assert_eq!(approve.status.code(), Some(1));
    assert!(stderr(&approve).contains("No pending request found for code \"ABCDEFGH\". It may have expired."));
    // The same sender writes again: a fresh code, and the file holds only that.
    fake.send_dm(555, "again");
    let code = code_in(&fake.next_text_to(555, WAIT).unwrap_or_else(|| panic!("log:\n{}", service.log())));
    assert_ne!(code, "ABCDEFGH");
    let saved: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("phone-pairing.json")).unwrap()).unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["code"], code.as_str());
    assert_eq!(mode(&home.path().join("phone-pairing.json")), 0o600);
}

#[test]
fn start_welcomes_the_allowed_and_says_nothing_to_strangers_under_allowlist() {
    let mut s = Setup::start("start", json!({"senderPolicy": "allowlist"}));
    s.fake.send_dm(FRIEND, "/start");
    assert_eq!(
        s.fake.next_text_to(FRIEND, WAIT).as_deref(),
        Some("Hi! You can talk to the agent here: send any message. /help lists the commands.")
    );
    s.fake.send_dm(901, "/start");
    s.sync();
    assert_eq!(s.fake.texts_to(901), Vec::<String>::new());
    s.assert_agent_never_saw(&["/start"]);
}

/// A message sent right after `tether pairing approve` returns is answered, not dropped as a
/// pending stranger's (the service re-reads the pairing files before it decides).
#[test]
fn a_message_right_after_approve_is_answered() {
    let s = Setup::start("pair-first-try", pairing_channel());
    for (n, user) in [556, 557, 558].into_iter().enumerate() {
        s.fake.send_dm(user, "hello?");
        let code = code_in(&s.fake.next_text_to(user, WAIT).unwrap_or_default());
        let approve = s.pairing(&["approve", "phone", &code]);
        assert_eq!(approve.status.code(), Some(0), "{}", stderr(&approve));
        let text = format!("right away {n}");
        s.fake.send_dm(user, &text);
        let expected = format!("echo: {text}");
        let mut texts = Vec::new();
        while let Some(t) = s.fake.next_text_to(user, Duration::from_secs(10)) {
            let done = t == expected;
            texts.push(t);
            if done {
                break;
            }
        }
        assert_eq!(texts.last(), Some(&expected), "user {user}: {texts:?}\nlog:\n{}", s.service.log());
    }
}
