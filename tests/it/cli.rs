//! The command line as a user meets it: usage errors, config errors, `check`.

use serde_json::json;

use crate::support::{TempDir, run_tether, tether_bin};

#[test]
fn unknown_words_give_usage_and_exit_2() {
    let home = TempDir::new("usage");
    for args in [&["frobnicate"][..], &["start", "--bogus"], &[]] {
        let out = run_tether(args, home.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn invalid_config_is_rejected_with_file_channel_key_and_allowed_values() {
    let home = TempDir::new("badconfig");
    let path = home.write_config(
        &json!({"channels": {"phone": {"type": "telegram", "token": "1:x", "senderPolicy": "allowList"}}}),
    );
    for command in ["check", "start"] {
        let out = run_tether(&[command], home.path());
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("channel \"phone\", key \"senderPolicy\""), "{err}");
        assert!(err.contains("\"allowList\" is not one of: allowlist, pairing, open"), "{err}");
    }
}

#[test]
fn missing_token_and_unknown_type_are_rejected() {
    let home = TempDir::new("missing");
    for (channel, expected) in [
        (json!({"type": "telegram"}), "key \"token\": required for type telegram"),
        (json!({"type": "telegram", "token": "$TETHER_IT_UNSET_VAR"}), "TETHER_IT_UNSET_VAR is not set"),
        (json!({"type": "icq", "token": "x"}), "icq"),
    ] {
        home.write_config(&json!({"channels": {"phone": channel}}));
        let out = run_tether(&["check"], home.path());
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn check_prints_what_would_run_with_secrets_masked() {
    let home = TempDir::new("check");
    let cwd = home.path().join("project");
    std::fs::create_dir_all(&cwd).unwrap();
    home.write_config(&json!({
        "agent": {"command": tether_bin(), "args": ["demo-agent"]},
        "channels": {"phone": {"type": "telegram", "token": "123456:SECRET-TOKEN-VALUE", "cwd": cwd,
            "sessionScope": "chat_thread", "sendrPolicy": "open"}}
    }));
    let out = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("phone (telegram)"), "{text}");
    assert!(text.contains(&format!("{} demo-agent", tether_bin())), "{text}");
    assert!(text.contains(&format!("cwd: {}", cwd.display())), "{text}");
    assert!(!text.contains("SECRET-TOKEN-VALUE"), "{text}");
    // Values in the config's own spelling, and a typo named with its fix.
    assert!(text.contains("senderPolicy: allowlist, dmPolicy: open"), "{text}");
    assert!(text.contains("sessionScope: chat_thread, dispatchMode: steer, groupPolicy: disabled"), "{text}");
    assert!(text.contains("warning: `sendrPolicy`: unknown key; did you mean `senderPolicy`?"), "{text}");
}

/// `check` refuses what `start` would refuse before talking to any platform, with the
/// same exit status: 2 for the config, 1 for the machine.
#[test]
fn check_fails_where_start_would() {
    let home = TempDir::new("preflight");
    let fine = json!({"type": "telegram", "token": "1:x", "cwd": home.path()});
    let cases = [
        (
            json!({"agent": {"command": "tether-it-no-such-agent"}, "channels": {"phone": fine}}),
            1,
            "agent.command: `tether-it-no-such-agent` is not found on PATH",
        ),
        (
            json!({"agent": {"command": tether_bin()}, "channels": {"phone": {"type": "telegram", "token": "1:x", "cwd": "/nonexistent/project"}}}),
            1,
            "key \"cwd\": /nonexistent/project is not an existing directory",
        ),
        (json!({"agent": {"command": tether_bin()}, "channels": {}}), 2, "no channels configured"),
        (
            json!({"agent": {"command": tether_bin()}, "channels": {"phone": {"type": "carrier-pigeon"}}}),
            2,
            "\"carrier-pigeon\" is not a platform this build has",
        ),
    ];
    for (config, status, expected) in cases {
        home.write_config(&config);
        for command in ["check", "start"] {
            let out = run_tether(&[command], home.path());
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(status), "{command} {config}: {err}");
            assert!(err.contains(expected), "{command}: {err}");
            assert_eq!(err.matches(expected).count(), 1, "printed once: {err}");
        }
    }
}

/// `start NAME` needs only NAME's variables; `demo` needs none of the config's channels.
#[test]
fn only_the_channels_used_need_their_variables() {
    let home = TempDir::new("selected");
    home.write_config(&json!({
        "agent": {"command": tether_bin(), "args": ["demo-agent"]},
        "channels": {
            "phone": {"type": "telegram", "token": "$TETHER_IT_UNSET_PHONE_TOKEN", "cwd": home.path()},
            "other": {"type": "telegram", "token": "1:x", "cwd": home.path(), "apiBase": "http://127.0.0.1:9"}
        }
    }));
    let out = run_tether(&["pairing", "list", "other"], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not set"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_tether(&["check"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TETHER_IT_UNSET_PHONE_TOKEN is not set"));
    let out = run_tether(&["start", "phone"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TETHER_IT_UNSET_PHONE_TOKEN is not set"));
}

#[test]
fn missing_config_file_points_to_the_fix() {
    let home = TempDir::new("noconfig");
    let out = run_tether(&["start"], home.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no config file at") && err.contains("tether demo"), "{err}");
}

#[test]
fn demo_on_a_reachable_address_says_how_to_pass_a_token() {
    let home = TempDir::new("demotoken");
    let out = run_tether(&["demo", "--listen", "0.0.0.0:0"], home.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a token: pass --token SECRET (or set TETHER_WEB_TOKEN=SECRET)"), "{err}");
    assert_eq!(err.matches("needs a token").count(), 1, "printed once: {err}");
}

/// The demo uses the config's agent at most: a channel's unset `$VAR` does not stop it, and
/// its log does not point to `tether stop` (the demo is no service).
#[test]
fn demo_ignores_the_channels_it_does_not_use() {
    use std::io::{BufRead, BufReader};
    let home = TempDir::new("demochannels");
    home.write_config(&json!({
        "agent": {"command": tether_bin(), "args": ["demo-agent"]},
        "channels": {"phone": {"type": "telegram", "token": "$TETHER_IT_UNSET_DEMO_TOKEN"}}
    }));
    let mut child = std::process::Command::new(tether_bin())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("TETHER_HOME", home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let running = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if line.contains("running 1 channel(s)") => break line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo did not start: {seen:#?}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(running.ends_with("stop with Ctrl+C"), "{running}");
    assert!(!seen.iter().any(|l| l.contains("TETHER_IT_UNSET_DEMO_TOKEN")), "{seen:#?}");
}
