//! WeChat end to end: fake iLink server ⇄ tether (login, and the channel with the demo agent).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_ilink::{API_PREFIX, BOT_ID, FakeIlink, OWNER, REDIRECT_PREFIX, TOKEN};
use crate::support::{TempDir, run_tether, run_tether_with_input};

fn config(fake: &FakeIlink, agent: Value, extra: Value) -> Value {
    let mut channel = json!({
        "type": "weixin",
        "baseUrl": fake.url(),
        "cdnBaseUrl": fake.cdn_url(),
        "senderPolicy": "allowlist",
        "allowedUsers": [OWNER],
    });
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({"agent": agent, "channels": {"wx": channel}})
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn login_goes_through_every_state_and_stores_the_account_privately() {
    let fake = FakeIlink::start();
    let home = TempDir::new("wx-login");
    home.write_config(&config(&fake, crate::support::demo_agent(), json!({})));
    fake.script_login(&["wait", "scaned", "expired", "wait", "redirect", "need_verifycode", "confirmed"]);
    let out = run_tether_with_input(&["weixin-login", "wx"], home.path(), "4321\n", Duration::from_secs(60));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Two codes: the first expired. Each drawn with half blocks, with its link.
    assert_eq!(fake.qr_codes(), 2);
    for n in [1, 2] {
        assert!(stdout.contains(&format!("https://liteapp.weixin.qq.com/q/fake{n}?")), "{stdout}");
    }
    assert!(stdout.contains('▀') && stdout.contains('▄') && stdout.contains('█'), "{stdout}");
    for said in [
        "Waiting for the scan",
        "Scanned: confirm the login on your phone",
        "here is a new one (2 of 3)",
        "the server moved this login to",
        "verification digits",
        "Logged in: bot b0f5860fdecb@im.bot",
    ] {
        assert!(stdout.contains(said), "missing {said:?} in:\n{stdout}");
    }
    // After the redirect the poll went to the host named, with the digits typed.
    let polls = fake.calls_of("get_qrcode_status");
    let redirected: Vec<_> = polls.iter().filter(|c| c.prefix == REDIRECT_PREFIX).collect();
    assert!(redirected.len() >= 2, "{polls:?}");
    assert!(polls.iter().all(|c| c.prefix.is_empty() || c.prefix == REDIRECT_PREFIX));

    let path = home.path().join("wx-weixin-account.json");
    let account: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(account["token"], TOKEN);
    assert_eq!(account["botId"], BOT_ID);
    assert_eq!(account["userId"], OWNER);
    assert_eq!(account["baseUrl"], format!("{}{API_PREFIX}", fake.url()));
    assert!(account["savedAt"].as_u64().unwrap() > 1_700_000_000_000);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // The token is never printed.
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    let status = run_tether(&["status"], home.path());
    let shown = text(&status.stdout);
    assert!(
        shown.contains("WeChat logins:\n  wx: bot b0f5860fdecb@im.bot for o9cq80owner@im.wechat, logged in 20"),
        "{shown}"
    );
    let check = run_tether(&["check"], home.path());
    let shown = text(&check.stdout);
    assert!(shown.contains("WeChat login: bot b0f5860fdecb@im.bot"), "{shown}");
    assert!(!shown.contains(TOKEN));
}

#[test]
fn login_gives_up_after_three_expired_codes_and_refuses_other_channels() {
    let fake = FakeIlink::start();
    let home = TempDir::new("wx-login-expired");
    let mut cfg = config(&fake, crate::support::demo_agent(), json!({}));
    cfg["channels"]["tg"] = json!({"type": "telegram", "token": "1:x"});
    home.write_config(&cfg);
    fake.script_login(&["expired", "expired", "expired"]);
    let out = run_tether_with_input(&["weixin-login", "wx"], home.path(), "", Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("the QR code expired 3 times"), "{}", text(&out.stderr));
    assert_eq!(fake.qr_codes(), 3);
    assert!(!home.path().join("wx-weixin-account.json").exists());
    let status = run_tether(&["status"], home.path());
    assert!(!text(&status.stdout).contains("WeChat logins"));

    let out = run_tether(&["weixin-login", "tg"], home.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("channel \"tg\" is of type \"telegram\", not \"weixin\""),
        "{}",
        text(&out.stderr)
    );
    let out = run_tether(&["weixin-login", "nope"], home.path());
    assert!(text(&out.stderr).contains("no channel \"nope\" (channels: tg, wx)"), "{}", text(&out.stderr));
    // A verification code asked for and none typed: a clear failure, not a hang.
    fake.script_login(&["need_verifycode"]);
    let out = run_tether_with_input(&["weixin-login", "wx"], home.path(), "", Duration::from_secs(60));
    assert!(text(&out.stderr).contains("a verification code is needed and none was typed"), "{}", text(&out.stderr));
}
