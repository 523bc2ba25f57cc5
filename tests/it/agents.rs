//! The agent side end to end: models per channel, lenient protocol, supervision.

use std::time::Duration;

use serde_json::json;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn telegram(fake: &FakeTelegram, extra: serde_json::Value) -> serde_json::Value {
    let mut channel = json!({"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111"]});
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    channel
}

#[test]
fn two_channels_on_one_agent_each_get_their_model() {
    let (fast, careful) = (FakeTelegram::start(), FakeTelegram::start());
    let home = TempDir::new("models");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "fast": telegram(&fast, json!({"model": "demo-fast"})),
            "careful": telegram(&careful, json!({"model": "demo-careful"})),
        }
    }));
    let service = Service::start(&home, &[]);
    fast.send_dm(111, "/model");
    careful.send_dm(111, "/model");
    assert_eq!(fast.next_text_to(111, WAIT).as_deref(), Some("model: demo-fast"), "log:\n{}", service.log());
    assert_eq!(careful.next_text_to(111, WAIT).as_deref(), Some("model: demo-careful"), "log:\n{}", service.log());
    // One agent process served both.
    assert_eq!(service.log().matches("started agent \"default\"").count(), 1);
}

#[test]
fn an_unknown_model_is_logged_and_the_default_answers() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("badmodel");
    home.write_config(
        &json!({"agent": demo_agent(), "channels": {"phone": telegram(&fake, json!({"model": "gpt-99"}))}}),
    );
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "/model");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("model: demo-standard"), "log:\n{}", service.log());
    assert!(service.log().contains("could not set model gpt-99"), "{}", service.log());
}

#[test]
fn huge_lines_and_unknown_updates_are_handled() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("huge");
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "tools please");
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(reply.contains("echo: tools please"), "{reply}\nlog:\n{}", service.log());
    fake.send_dm(111, "ext");
    let mut texts = Vec::new();
    while let Some(t) = fake.next_text_to(111, Duration::from_secs(5)) {
        texts.push(t);
        if texts.last().is_some_and(|t| t.contains("ext answered")) {
            break;
        }
    }
    assert!(texts.iter().any(|t| t.contains("ext answered -32601")), "{:?}", texts.last());
    fake.send_dm(111, "huge");
    // A 2 MB line from the agent arrives; Telegram gets it split into many messages.
    let first = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(first.len() > 1000, "log:\n{}", service.log());
}

#[test]
fn an_agent_that_never_answers_initialize_fails_start_within_the_timeout() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("silent");
    let agent = json!({"command": "sh", "args": ["-c", "exec sleep 60"], "startupTimeoutMs": 500});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let mut service = Service::start(&home, &[]);
    assert_eq!(service.wait_exit(WAIT), Some(1), "log:\n{}", service.log());
    assert!(service.log().contains("did not answer initialize within 500 ms"), "{}", service.log());
}

#[test]
fn a_ready_agent_left_idle_past_the_startup_timeout_is_kept() {
    // The stdout reader marks the agent ready without waking the thread that holds the
    // startup deadline: the deadline firing later must see that and let the agent be.
    let fake = FakeTelegram::start();
    let home = TempDir::new("idle-ready");
    let mut agent = demo_agent();
    agent["startupTimeoutMs"] = json!(500);
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("ready after", WAIT), "{}", service.log());
    std::thread::sleep(Duration::from_millis(1500));
    fake.send_dm(111, "still there?");
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(reply.contains("echo: still there?"), "{reply}\nlog:\n{}", service.log());
    assert!(!service.log().contains("did not answer initialize"), "{}", service.log());
}

#[test]
fn a_missing_cwd_is_refused_at_start() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("nocwd");
    let channel = telegram(&fake, json!({"cwd": "/nonexistent/project"}));
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let mut service = Service::start(&home, &[]);
    assert_eq!(service.wait_exit(WAIT), Some(1));
    assert!(
        service.log().contains("key \"cwd\": /nonexistent/project is not an existing directory"),
        "{}",
        service.log()
    );
}

#[test]
fn an_agent_that_keeps_crashing_stops_the_service_with_status_1() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("crashloop");
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": telegram(&fake, json!({}))}}));
    let mut service = Service::start(&home, &[]);
    let mut exited = None;
    for n in 0..6 {
        let _ = n;
        fake.send_dm(111, "crash");
        exited = service.wait_exit(Duration::from_secs(8));
        if exited.is_some() {
            break;
        }
    }
    assert_eq!(exited, Some(1), "log:\n{}", service.log());
    assert!(service.log().contains("crashed 4 times within 300 s"), "{}", service.log());
    // The sender told "being restarted" is told it will not be, before tether stops.
    let texts = fake.texts_to(111);
    assert!(
        texts.last().is_some_and(|t| t.starts_with("The agent crashed too often, so tether has stopped")),
        "{texts:?}"
    );
}

/// The demo agent keeping its sessions in `dir`, so a restarted one can `session/load` them.
fn stateful_demo_agent(dir: &std::path::Path) -> serde_json::Value {
    json!({"command": crate::support::tether_bin(), "args": ["demo-agent", "--state", dir], "startupTimeoutMs": 10000})
}

#[test]
fn a_crash_mid_turn_is_retried_in_the_restored_conversation() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("restore");
    let state = home.path().join("agent-state");
    home.write_config(
        &json!({"agent": stateful_demo_agent(&state), "channels": {"phone": telegram(&fake, json!({}))}}),
    );
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "first words");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: first words"), "log:\n{}", service.log());
    fake.send_dm(111, "crashonce please");
    let notice = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(notice.contains("being restarted"), "{notice}\nlog:\n{}", service.log());
    // Sent while the agent restarts: waits, and is answered after the retried turn.
    fake.send_dm(111, "while it restarts");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: crashonce please"), "log:\n{}", service.log());
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: while it restarts"));
    // Same conversation: the agent remembers what came before the crash.
    fake.send_dm(111, "/summary");
    let summary = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(summary.contains("first words") && summary.contains("crashonce please"), "{summary}");
    let log = service.log();
    assert!(log.contains("restoring 1 session(s)") && log.contains("session demo-1 restored"), "{log}");
}

#[test]
fn a_turn_past_turn_timeout_is_cancelled_and_the_user_told() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("timeout");
    home.write_config(
        &json!({"agent": demo_agent(), "channels": {"phone": telegram(&fake, json!({"turnTimeoutMs": 1000}))}}),
    );
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "hang");
    let notice = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert_eq!(notice, "The agent did not finish within 1000 ms, so the request was cancelled.");
    fake.send_dm(111, "and now?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: and now?"), "log:\n{}", service.log());
}

#[test]
fn an_agent_that_is_not_logged_in_says_how_to_log_in() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("auth");
    let agent = json!({"command": crate::support::tether_bin(), "args": ["demo-agent", "--auth-required"]});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "hello");
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(reply.contains("Authentication required") && reply.contains("not logged in"), "{reply}");
    assert!(service.log().contains("login methods: demo-login"), "{}", service.log());
}

#[test]
fn garbage_and_half_lines_on_the_agents_stdout_are_ignored() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("garbage");
    let script = format!(
        "echo 'Loading model... 42%'; printf '{{\"jsonrpc\":\"2.0\",\"method\"\\n'; echo '[1,2'; exec '{}' demo-agent",
        crate::support::tether_bin()
    );
    let agent = json!({"command": "sh", "args": ["-c", script]});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "still fine?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: still fine?"), "log:\n{}", service.log());
    assert!(service.log().contains("ignoring a line that is not JSON"), "{}", service.log());
}

#[test]
fn platform_secrets_never_reach_the_agents_environment() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("scrub");
    let env_dump = home.path().join("agent-env.txt");
    let script = format!("env > '{}'; exec '{}' demo-agent", env_dump.display(), crate::support::tether_bin());
    let agent = json!({"command": "sh", "args": ["-c", script], "env": {"AGENT_SETTING": "kept"}});
    // The token comes from the environment under one name, and is also present under another.
    let channel = telegram(&fake, json!({"token": "$TETHER_IT_BOT_TOKEN"}));
    home.write_config(&json!({"agent": agent, "channels": {"phone": channel}}));
    let service = Service::start_with_env(&home, &[], &[("TETHER_IT_BOT_TOKEN", TOKEN), ("SOME_COPY", TOKEN)]);
    fake.send_dm(111, "hi");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: hi"), "log:\n{}", service.log());
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(env.contains("AGENT_SETTING=kept"), "{env}");
    assert!(!env.contains("TETHER_IT_BOT_TOKEN") && !env.contains("SOME_COPY"), "{env}");
    assert!(!env.contains(TOKEN), "the token leaked into the agent's environment");
}

#[test]
fn conversations_survive_a_restart_of_tether() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("sessions");
    let state = home.path().join("agent-state");
    let channel = telegram(&fake, json!({"instructions": "Be brief."}));
    home.write_config(&json!({"agent": stateful_demo_agent(&state), "channels": {"phone": channel}}));
    let mut service = Service::start(&home, &[]);
    fake.send_dm(111, "remember the number 42");
    assert_eq!(
        fake.next_text_to(111, WAIT).as_deref(),
        Some("echo: Be brief.\n\nremember the number 42"),
        "log:\n{}",
        service.log()
    );
    assert!(wait_until(Duration::from_secs(10), || home.path().join("sessions.json").exists()));
    service.signal("TERM");
    assert_eq!(service.wait_exit(WAIT), Some(0), "log:\n{}", service.log());

    let service = Service::start(&home, &[]);
    fake.send_dm(111, "/summary");
    let summary = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert!(summary.contains("remember the number 42"), "{summary}\nlog:\n{}", service.log());
    // Not instructed twice: the restored session already had the instructions.
    fake.send_dm(111, "again");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: again"));
    // /clear forgets it for good.
    fake.send_dm(111, "/clear");
    fake.next_text_to(111, WAIT);
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(home.path().join("sessions.json")).is_ok_and(|t| t.trim() == "{}")
    }));
}

/// The demo agent's `crash` (as `tether demo` runs it, with its sessions kept): one message
/// is one crash, its retry is answered, and two such messages do not reach the give-up limit.
#[test]
fn two_crash_messages_crash_twice_and_both_are_answered() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("twocrashes");
    let state = home.path().join("agent-state");
    home.write_config(
        &json!({"agent": stateful_demo_agent(&state), "channels": {"phone": telegram(&fake, json!({}))}}),
    );
    let mut service = Service::start(&home, &[]);
    for _ in 0..2 {
        fake.send_dm(111, "crash");
        let notice = fake.next_text_to(111, WAIT).unwrap_or_default();
        assert!(notice.contains("being restarted"), "{notice}\nlog:\n{}", service.log());
        assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: crash"), "log:\n{}", service.log());
    }
    // A sentence with the word is no crash.
    fake.send_dm(111, "please do not crash");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: please do not crash"));
    assert_eq!(service.exited(), None, "log:\n{}", service.log());
    let log = service.log();
    assert!(log.contains("crash 2 of 3 allowed") && !log.contains("crash 3 of 3"), "{log}");
}

#[test]
fn channels_poll_while_a_slow_agent_starts_and_what_arrives_meanwhile_is_answered() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("slowstart");
    let bin = crate::support::tether_bin();
    let agent = json!({"command": "sh", "args": ["-c", format!("sleep 3; exec '{bin}' demo-agent")], "startupTimeoutMs": 20000});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    // Polling long before the agent answers `initialize` (it sleeps 3 s first).
    assert!(wait_until(Duration::from_millis(2500), || fake.polls() > 0), "{}", service.log());
    fake.send_dm(111, "early bird");
    assert!(wait_until(Duration::from_millis(2000), || fake.unconfirmed() == 0), "taken (journaled) at once");
    let reply = fake.next_text_to(111, WAIT).unwrap_or_default();
    assert_eq!(reply, "echo: early bird", "{}", service.log());
}

/// An agent that writes 200 MB without a newline is stopped at 16 MiB as broken (before,
/// tether kept reading the whole line into memory).
#[test]
fn a_200_mb_line_without_newline_marks_the_agent_broken() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("endless-line");
    let script = "head -c 209715200 /dev/zero | tr '\\0' x; exec sleep 60";
    let agent = json!({"command": "sh", "args": ["-c", script], "startupTimeoutMs": 30000});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let mut service = Service::start(&home, &[]);
    let started = std::time::Instant::now();
    assert_eq!(service.wait_exit(WAIT), Some(1), "log:\n{}", service.log());
    assert!(service.log().contains("sent a line longer than 16 MiB; treated as broken"), "{}", service.log());
    assert!(started.elapsed() < Duration::from_secs(15), "not by the startup timeout");
}

/// 100,000 stderr lines full of terminal escapes: the log gets a bounded number of lines,
/// none with a raw control character, and the agent still answers.
#[test]
fn a_flood_of_stderr_is_rate_limited_and_stripped() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("stderr-flood");
    let script = format!(
        "i=0; while [ $i -lt 100000 ]; do printf '\\033[2J\\rspoofed line %s\\n' $i >&2; i=$((i+1)); done; exec '{}' demo-agent",
        crate::support::tether_bin()
    );
    let agent = json!({"command": "sh", "args": ["-c", script], "startupTimeoutMs": 60000});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "still there?");
    assert_eq!(
        fake.next_text_to(111, Duration::from_secs(60)).as_deref(),
        Some("echo: still there?"),
        "log:\n{}",
        service.log()
    );
    let log = service.log();
    let spoofed = log.lines().filter(|l| l.contains("spoofed line")).count();
    eprintln!("stderr flood: {spoofed} log lines, {} log bytes", log.len());
    assert!(spoofed <= 200, "{spoofed} stderr lines logged");
    assert!(!log.contains('\u{1b}') && !log.contains("\r"), "raw control characters in the log");
}

/// tether started as root with `agent.user` runs the agent as that user, without root's
/// groups: it cannot read tether's config or `/proc/<tether pid>/environ`, and still answers.
/// (Skipped when the tests do not run as root.)
#[test]
fn agent_user_runs_the_agent_unprivileged() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    let has_nobody = std::fs::read_to_string("/etc/passwd").is_ok_and(|p| p.lines().any(|l| l.starts_with("nobody:")));
    if !is_root || !has_nobody {
        return;
    }
    let fake = FakeTelegram::start();
    let home = TempDir::new("agent-user");
    let config = home.path().join("config.json");
    let script = format!(
        "echo \"agent uid $(id -u) groups $(id -G)\" >&2; \
         cat '{}' >/dev/null 2>&1 && echo 'agent READ the config' >&2; \
         cat /proc/$PPID/environ >/dev/null 2>&1 && echo 'agent READ the environ' >&2; \
         exec '{}' demo-agent",
        config.display(),
        crate::support::tether_bin()
    );
    let agent = json!({"command": "sh", "args": ["-c", script], "user": "nobody"});
    home.write_config(&json!({"agent": agent, "channels": {"phone": telegram(&fake, json!({}))}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "who are you?");
    assert_eq!(fake.next_text_to(111, WAIT).as_deref(), Some("echo: who are you?"), "log:\n{}", service.log());
    let log = service.log();
    assert!(log.contains("agent uid 65534 groups 65534"), "{log}");
    assert!(!log.contains("default: agent READ"), "{log}");
}
