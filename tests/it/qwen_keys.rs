//! Qwen Code 0.24's later channel keys end to end: `dmPolicy`, `groupPolicy: "pairing"`
//! with `tether pairing approve`, `sessionScope: "chat_thread"` and `groupHistoryLimit`.
//! tether runs as a real process against the fake Bot API; what the agent received is read
//! from its captured input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::fake_telegram::{BOT_USERNAME, FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, captured_demo_agent, run_tether};

const WAIT: Duration = Duration::from_secs(20);
const FRIEND: i64 = 111;
const MATE: i64 = 222;
const STRANGER: i64 = 999;
const GROUP: i64 = -100;
const OTHER_GROUP: i64 = -200;

struct Setup {
    fake: FakeTelegram,
    home: TempDir,
    capture: PathBuf,
    service: Service,
}

impl Setup {
    fn start(label: &str, channel: Value) -> Setup {
        let fake = FakeTelegram::start();
        let home = TempDir::new(label);
        let setup = Setup::with(fake, home, channel);
        assert!(setup.service.wait_for_log("connected as @", WAIT), "log:\n{}", setup.service.log());
        setup
    }

    fn with(fake: FakeTelegram, home: TempDir, channel: Value) -> Setup {
        let capture = home.path().join("agent-stdin.jsonl");
        let mut base = json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(),
            "allowedUsers": [FRIEND.to_string(), MATE.to_string()]});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), channel.as_object()) {
            b.extend(extra.clone());
        }
        home.write_config(&json!({"agent": captured_demo_agent(&capture), "channels": {"phone": base}}));
        let service = Service::start(&home, &[]);
        Setup { fake, home, capture, service }
    }

    /// What the agent was sent, one JSON-RPC message per entry.
    fn agent_messages(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.capture).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn agent_input(&self) -> String {
        std::fs::read_to_string(&self.capture).unwrap_or_default()
    }

    /// The session id of the prompt that contains `needle`.
    fn session_of(&self, needle: &str) -> String {
        let prompt = self
            .agent_messages()
            .into_iter()
            .find(|m| m["method"] == "session/prompt" && m["params"]["prompt"].to_string().contains(needle));
        match prompt {
            Some(p) => p["params"]["sessionId"].as_str().unwrap_or_default().to_string(),
            None => panic!("no prompt with {needle:?}:\n{}", self.agent_input()),
        }
    }

    /// Wait for a text to `chat` containing `needle`.
    fn wait_text(&self, chat: i64, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(t) = self.fake.texts_to(chat).into_iter().find(|t| t.contains(needle)) {
                return t;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nothing with {needle:?} to {chat}: {:?}; log:\n{}", self.fake.texts_to(chat), self.service.log());
    }

    fn pairing(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["pairing"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--home", self.home.path().to_str().unwrap()]);
        run_tether(&all, Path::new("/nonexistent/tether-home"))
    }
}

fn mention(text: &str) -> String {
    format!("@{BOT_USERNAME} {text}")
}

#[test]
fn a_dm_to_a_dm_disabled_bot_never_reaches_the_agent_while_a_group_mention_does() {
    let s = Setup::start("dmoff", json!({"dmPolicy": "disabled", "groupPolicy": "open", "senderPolicy": "pairing"}));
    s.fake.send_dm(FRIEND, "friend dm secret");
    s.fake.send_dm(STRANGER, "stranger dm secret");
    s.fake.send_group(GROUP, FRIEND, &mention("group question"), None);
    // The group message came after the DMs: once it is answered, the DMs were judged.
    let answer = s.wait_text(GROUP, "group question");
    assert!(answer.starts_with("echo:"), "{answer}");
    let input = s.agent_input();
    assert!(!input.contains("dm secret"), "the agent received a DM:\n{input}");
    // No reply at all in the DMs: not an answer, not a pairing code.
    assert_eq!(s.fake.texts_to(FRIEND), Vec::<String>::new());
    assert_eq!(s.fake.texts_to(STRANGER), Vec::<String>::new());
    assert!(s.service.log().contains("direct messages are disabled (dmPolicy)"), "{}", s.service.log());
    // A clean stop: the agent's exit is no warning.
    let mut s = s;
    s.service.signal("TERM");
    assert_eq!(s.service.wait_exit(WAIT), Some(0), "{}", s.service.log());
    let log = s.service.log();
    assert!(!log.lines().any(|l| l.contains("WARN") && l.contains("acp")), "{log}");
}

#[test]
fn a_group_asks_once_and_is_approved_with_tether_pairing_approve() {
    let s = Setup::start("grouppair", json!({"groupPolicy": "pairing"}));
    // Unaddressed chatter from an unapproved group makes no request.
    s.fake.send_group(GROUP, FRIEND, "just chatting", None);
    s.fake.send_group(GROUP, STRANGER, &mention("stranger asks"), None);
    s.fake.send_group(GROUP, FRIEND, &mention("please join"), None);
    assert!(s.service.wait_for_log("group -100 asks to use this channel", WAIT), "log:\n{}", s.service.log());
    let log = s.service.log();
    let at = log.find("tether pairing approve phone ").expect("the code is in the operator's log") + 29;
    let code = log[at..at + 8].to_string();
    // The operator sees it in `tether pairing list` (once the service has saved it: the log
    // line comes first); the group is never told the code.
    let file = s.home.path().join("phone-pairing.json");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&file).unwrap_or_default().contains(&code) {
        assert!(Instant::now() < deadline, "{} never held {code}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = s.pairing(&["list", "phone"]);
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(listed.contains(&format!("Code: {code}  Group: -100 (asked by")), "{listed}");
    assert!(listed.lines().count() == 2, "one request for the group: {listed}");
    s.fake.send_dm(FRIEND, "sync");
    s.wait_text(FRIEND, "echo: sync");
    assert!(!s.fake.texts_to(GROUP).iter().any(|t| t.contains(&code)), "{:?}", s.fake.texts_to(GROUP));
    let approve = s.pairing(&["approve", "phone", &code.to_lowercase()]);
    assert_eq!(approve.status.code(), Some(0), "{}", String::from_utf8_lossy(&approve.stderr));
    assert!(String::from_utf8_lossy(&approve.stdout).starts_with("Approved: group -100 can now use channel \"phone\""));
    s.wait_text(GROUP, "This group is approved");
    // Members still pass the sender policy: the stranger is not heard, the friend is.
    s.fake.send_group(GROUP, STRANGER, &mention("stranger after approval"), None);
    s.fake.send_group(GROUP, FRIEND, &mention("after approval"), None);
    s.wait_text(GROUP, "echo: after approval");
    let input = s.agent_input();
    for never in ["just chatting", "stranger asks", "please join", "stranger after approval"] {
        assert!(!input.contains(never), "the agent received {never:?}:\n{input}");
    }
    // Revoked, the group is unapproved again.
    let revoke = s.pairing(&["revoke", "phone", "-100"]);
    assert_eq!(String::from_utf8_lossy(&revoke.stdout), "Revoked: group -100 can no longer use channel \"phone\".\n");
    assert!(s.service.wait_for_log("-100 is no longer approved", WAIT), "log:\n{}", s.service.log());
}

#[test]
fn chat_thread_sessions_are_one_per_topic_shared_by_its_members() {
    let s = Setup::start(
        "chatthread",
        json!({"groupPolicy": "open", "sessionScope": "chat_thread", "dispatchMode": "followup"}),
    );
    s.fake.send_group(GROUP, FRIEND, &mention("first in topic"), Some(5));
    s.wait_text(GROUP, "echo: first in topic");
    s.fake.send_group(GROUP, MATE, &mention("second in topic"), Some(5));
    s.wait_text(GROUP, "echo: second in topic");
    // Topic 5 of another group is another conversation, and so is the first group outside topics.
    s.fake.send_group(OTHER_GROUP, FRIEND, &mention("same topic number elsewhere"), Some(5));
    s.wait_text(OTHER_GROUP, "echo: same topic number elsewhere");
    s.fake.send_group(GROUP, FRIEND, &mention("general chat"), None);
    s.wait_text(GROUP, "echo: general chat");
    let first = s.session_of("first in topic");
    assert_eq!(s.session_of("second in topic"), first, "two members of one topic share its session");
    assert_ne!(s.session_of("same topic number elsewhere"), first);
    assert_ne!(s.session_of("general chat"), first);
    let new_sessions = s.agent_messages().iter().filter(|m| m["method"] == "session/new").count();
    assert_eq!(new_sessions, 3, "{}", s.agent_input());
    // Answers go back into their topic.
    let in_topic: Vec<Value> =
        s.fake.messages_to(GROUP).into_iter().filter(|m| m["message_thread_id"] == json!(5)).collect();
    assert_eq!(in_topic.len(), 2, "{:?}", s.fake.messages_to(GROUP));
}

#[test]
fn group_history_goes_to_the_agent_with_the_next_mention_capped_and_survives_a_restart() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("history");
    let channel = json!({"groupPolicy": "open", "groupHistoryLimit": 2});
    let s = Setup::with(fake, home, channel.clone());
    assert!(s.service.wait_for_log("connected as @", WAIT), "log:\n{}", s.service.log());
    for text in ["chatter one", "chatter two", "chatter three"] {
        s.fake.send_group(GROUP, FRIEND, text, None);
    }
    s.fake.send_group(GROUP, STRANGER, "stranger chatter", None);
    s.fake.send_group(GROUP, FRIEND, &mention("what now"), None);
    let answer = s.wait_text(GROUP, "what now");
    // The last two of the friend's messages, in order, before the question; nothing else.
    let two = answer.find("chatter two").unwrap_or_else(|| panic!("{answer}"));
    let three = answer.find("chatter three").unwrap_or_else(|| panic!("{answer}"));
    let question = answer.find("what now").unwrap_or_else(|| panic!("{answer}"));
    assert!(two < three && three < question, "{answer}");
    assert!(answer.contains("context only, not instructions"), "{answer}");
    let input = s.agent_input();
    assert!(!input.contains("chatter one") && !input.contains("stranger chatter"), "{input}");
    // Given once: the next mention carries nothing more.
    s.fake.send_group(GROUP, FRIEND, &mention("and again"), None);
    let again = s.wait_text(GROUP, "and again");
    assert!(!again.contains("chatter"), "{again}");
    // Kept in TETHER_HOME: a restart does not lose what was overheard.
    s.fake.send_group(GROUP, FRIEND, "chatter before restart", None);
    let file = s.home.path().join("phone-group-history.jsonl");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&file).unwrap_or_default().contains("chatter before restart") {
        assert!(Instant::now() < deadline, "no {}; log:\n{}", file.display(), s.service.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let Setup { fake, home, service, .. } = s;
    drop(service);
    let s = Setup::with(fake, home, channel);
    s.fake.send_group(GROUP, FRIEND, &mention("after restart"), None);
    let answer = s.wait_text(GROUP, "after restart");
    assert!(answer.contains("chatter before restart"), "{answer}");
}
