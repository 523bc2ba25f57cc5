//! The command line as a user meets it: usage errors, config errors, `check`.

use serde_json::json;

use crate::support::{TempDir, run_tether};

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
    home.write_config(&json!({
        "agent": {"command": "qwen", "args": ["--acp"]},
        "channels": {"phone": {"type": "telegram", "token": "123456:SECRET-TOKEN-VALUE", "cwd": "/srv/project"}}
    }));
    let out = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("phone (telegram)"), "{text}");
    assert!(text.contains("qwen --acp"), "{text}");
    assert!(text.contains("cwd: /srv/project"), "{text}");
    assert!(!text.contains("SECRET-TOKEN-VALUE"), "{text}");
}

#[test]
fn missing_config_file_points_to_the_fix() {
    let home = TempDir::new("noconfig");
    let out = run_tether(&["start"], home.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no config file at") && err.contains("tether demo"), "{err}");
}
