//! WeChat end to end: fake iLink server ⇄ tether (login, and the channel with the demo agent).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_ilink::{API_PREFIX, BOT_ID, FakeIlink, Fault, KeyForm, OWNER, REDIRECT_PREFIX, TOKEN};
use crate::support::{
    Service, TempDir, captured_demo_agent, demo_agent, journal_pending, read_status, run_tether, run_tether_with_input,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const STRANGER: &str = "stranger@im.wechat";

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
    home.write_config(&config(&fake, demo_agent(), json!({})));
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
    let mut cfg = config(&fake, demo_agent(), json!({}));
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

/// The account `tether weixin-login` would have stored, pointing at `fake`.
fn write_account(home: &TempDir, fake: &FakeIlink, saved_at: u64) {
    let account = json!({"token": TOKEN, "botId": BOT_ID, "baseUrl": format!("{}{API_PREFIX}", fake.url()),
                         "userId": OWNER, "savedAt": saved_at});
    std::fs::write(home.path().join("wx-weixin-account.json"), account.to_string()).unwrap();
}

/// A home with the channel "wx" on `fake`, logged in.
fn logged_in(fake: &FakeIlink, label: &str, agent: Value, extra: Value) -> TempDir {
    let home = TempDir::new(label);
    home.write_config(&config(fake, agent, extra));
    write_account(&home, fake, 1_700_000_000_000);
    home
}

#[test]
fn a_dm_is_answered_with_its_context_token_while_typing_shows() {
    let fake = FakeIlink::start();
    let home = logged_in(&fake, "wx-echo", demo_agent(), json!({}));
    let service = Service::start(&home, &[]);
    let token = fake.push_text(OWNER, "hello agent");
    let texts = fake.wait_texts_to(OWNER, 1, WAIT);
    assert_eq!(texts, vec!["echo: hello agent"], "log:\n{}", service.log());
    let sent = fake.sent();
    assert_eq!(sent[0].context_token, token, "the send echoes the user's latest token");
    // "typing…" through getconfig's ticket, while the turn ran.
    assert!(fake.typing().iter().any(|(user, status)| user == OWNER && *status == 1), "{:?}", fake.typing());
    // Every API call went to the base the login named, with the required headers.
    let calls = fake.calls_of("getupdates");
    assert!(!calls.is_empty());
    for call in calls.iter().chain(fake.calls_of("sendmessage").iter()) {
        assert_eq!(call.prefix, API_PREFIX);
        let header = |n: &str| call.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(header("ilink-app-id").as_deref(), Some("bot"));
        assert_eq!(header("ilink-app-clientversion").as_deref(), Some("131331"));
        assert_eq!(header("authorization"), Some(format!("Bearer {TOKEN}")));
    }
    // An empty 200 answer to a send is success (seen from the real server); a message that
    // cannot be decoded is skipped, and the next one is still answered.
    fake.fail_next("sendmessage", Fault::Empty);
    fake.push_raw(json!({"message_type": 1, "from_user_id": ["not", "a", "string"], "item_list": 7}));
    fake.push_text(OWNER, "after the odd one");
    assert!(wait_until(WAIT, || fake.pending_faults() == 0), "log:\n{}", service.log());
    fake.push_text(OWNER, "and one more");
    let texts = fake.wait_texts_to(OWNER, 2, WAIT);
    assert_eq!(texts.last().map(String::as_str), Some("echo: and one more"), "log:\n{}", service.log());
    let before_long = texts.len();
    // Markdown is stripped: the demo agent's `long` answer has headings and code.
    fake.push_text(OWNER, "long");
    let texts = fake.wait_texts_to(OWNER, before_long + 1, WAIT);
    assert!(texts.len() > before_long, "log:\n{}", service.log());
    assert!(
        texts[before_long..].iter().all(|t| !t.contains("```") && !t.contains("**") && t.chars().count() <= 4000),
        "{texts:?}"
    );
    // A stranger is not answered, and the token is never logged.
    fake.push_text(STRANGER, "who are you");
    std::thread::sleep(Duration::from_millis(800));
    assert!(fake.texts_to(STRANGER).is_empty());
    assert!(service.log().contains("sender not in allowedUsers"), "log:\n{}", service.log());
    assert!(!service.log().contains(TOKEN));
}

#[test]
fn no_message_is_lost_or_repeated_and_tokens_survive_a_restart() {
    let fake = FakeIlink::start();
    let home = logged_in(&fake, "wx-restart", demo_agent(), json!({}));
    let mut service = Service::start(&home, &[]);
    let first_token = fake.push_text(OWNER, "before the restart");
    assert_eq!(fake.wait_texts_to(OWNER, 1, WAIT), vec!["echo: before the restart"], "log:\n{}", service.log());
    // A slow turn is running when tether is killed: its reply is in flight.
    let slow_token = fake.push_text(OWNER, "slow please");
    assert!(wait_until(WAIT, || fake.typing().len() >= 2), "no turn started; log:\n{}", service.log());
    service.kill_hard();
    assert_eq!(fake.texts_to(OWNER).len(), 1, "answered before the stop: {:?}", fake.texts_to(OWNER));
    assert_eq!(journal_pending(home.path(), "wx"), 1, "the slow message waits in the journal");
    let cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("wx-weixin-cursor.json")).unwrap()).unwrap();
    // The cursor file is written lazily: the first move at once, the second (less than 30 s
    // later) not before tether was killed. The server sends "slow please" again after the
    // restart, and the journal, which has it, keeps it from being answered twice.
    assert_eq!(cursor["cursor"], "Y3Vy1", "{cursor}");
    let contexts = std::fs::read_to_string(home.path().join("wx-weixin-contexts.json")).unwrap();
    assert!(contexts.contains(&slow_token) && !contexts.contains(&first_token), "{contexts}");

    let polls_before = fake.calls_of("getupdates").len();
    let service = Service::start(&home, &[]);
    // The reply arrives without the user writing again: the saved token is echoed.
    let sent = fake.wait_sent(WAIT, |s| s.len() >= 2);
    assert!(sent.len() >= 2, "log:\n{}", service.log());
    assert!(sent[1].text.as_deref().is_some_and(|t| t.starts_with("tick 0")), "{:?}", sent[1].text);
    assert_eq!(sent[1].context_token, slow_token);
    // The first poll after the restart resumed from the saved cursor.
    let polls = fake.calls_of("getupdates");
    assert_eq!(polls[polls_before].body["get_updates_buf"], "Y3Vy1");
    fake.push_text(OWNER, "after the restart");
    let texts = fake.wait_texts_to(OWNER, 3, WAIT);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(fake.texts_to(OWNER).len(), 3, "{texts:?}");
    assert_eq!(texts[2], "echo: after the restart");
    assert!(wait_until(WAIT, || journal_pending(home.path(), "wx") == 0));
    assert!(service.log().contains("resuming from the saved cursor"), "{}", service.log());
}

#[test]
fn a_clean_stop_writes_the_last_cursor() {
    let fake = FakeIlink::start();
    let home = logged_in(&fake, "wx-stop", demo_agent(), json!({}));
    let mut service = Service::start(&home, &[]);
    // Two batches taken within 30 s of each other: only the first cursor is written while
    // running.
    fake.push_text(OWNER, "one");
    assert_eq!(fake.wait_texts_to(OWNER, 1, WAIT).len(), 1, "log:\n{}", service.log());
    fake.push_text(OWNER, "two");
    assert_eq!(fake.wait_texts_to(OWNER, 2, WAIT).len(), 2, "log:\n{}", service.log());
    service.signal("TERM");
    assert_eq!(service.wait_exit(WAIT), Some(0), "log:\n{}", service.log());
    let cursor: Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("wx-weixin-cursor.json")).unwrap()).unwrap();
    let polls = fake.calls_of("getupdates");
    let last = polls.iter().rev().find_map(|p| p.body["get_updates_buf"].as_str().filter(|c| !c.is_empty()));
    assert!(last.is_some_and(|c| c.ends_with('2')), "{polls:?}");
    assert_eq!(cursor["cursor"], "Y3Vy2", "the stop wrote the cursor the poller held: {cursor}");
}

#[test]
fn media_in_each_key_encoding_reaches_the_agent_decrypted() {
    let fake = FakeIlink::start();
    let home = TempDir::new("wx-media");
    let capture = home.path().join("agent-stdin.jsonl");
    home.write_config(&config(&fake, captured_demo_agent(&capture), json!({})));
    write_account(&home, &fake, 1_700_000_000_000);
    let service = Service::start(&home, &[]);
    let png = b"\x89PNG\r\n\x1a\n a picture of a cat".to_vec();
    let gif = b"GIF89a a small animation".to_vec();
    let pdf = b"%PDF-1.7 a report with more than one block of bytes in it".to_vec();
    let (image_media, hex_key) = fake.put_media(&png, KeyForm::Hex);
    let (raw_media, _) = fake.put_media(&gif, KeyForm::Base64Raw);
    let (file_media, _) = fake.put_media(&pdf, KeyForm::Base64Hex);
    fake.push(
        OWNER,
        json!([
            {"type": 1, "text_item": {"text": "look at these"}},
            {"type": 2, "image_item": {"media": image_media, "aeskey": hex_key}},
            {"type": 2, "image_item": {"media": raw_media}},
            {"type": 4, "file_item": {"media": file_media, "file_name": "../report.pdf", "len": pdf.len().to_string()}},
            {"type": 3, "voice_item": {"encode_type": 6, "text": "and what I said"}},
        ]),
    );
    let texts = fake.wait_texts_to(OWNER, 1, WAIT);
    assert_eq!(texts.len(), 1, "log:\n{}", service.log());
    let reply = &texts[0];
    assert!(reply.starts_with("echo: look at these\nand what I said"), "{reply}");
    // One directory per sender, as the shared upload rules make them (0700; files 0600).
    let media_dir = home.path().join("media/wx").join(OWNER);
    let mut saved: Vec<(String, Vec<u8>)> = std::fs::read_dir(&media_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    saved.sort();
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names[0].ends_with("-1-image-1.png")
            && names[1].ends_with("-2-image-2.gif")
            && names[2].ends_with("-3-report.pdf"),
        "{names:?}"
    );
    assert_eq!((&saved[0].1, &saved[1].1, &saved[2].1), (&png, &gif, &pdf));
    use std::os::unix::fs::PermissionsExt;
    for name in &names {
        assert_eq!(std::fs::metadata(media_dir.join(name)).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(reply.contains(&format!("saved to: {}", media_dir.join(name).display())), "{reply}");
    }
    assert!(
        reply.contains("User sent a image \"image-1.png\"") && reply.contains("User sent a file \"report.pdf\""),
        "{reply}"
    );
    assert!(std::fs::read_to_string(&capture).unwrap().contains("report.pdf"));

    // A stranger's files are not fetched; a damaged file is reported to the agent, not fatal.
    let downloads = fake.calls_of("cdn/download").len();
    let (stranger_media, _) = fake.put_media(&png, KeyForm::Base64Hex);
    fake.push(STRANGER, json!([{"type": 2, "image_item": {"media": stranger_media}}]));
    let (mut broken, _) = fake.put_media(&pdf, KeyForm::Base64Hex);
    broken["aes_key"] = json!("c2hvcnQ=");
    fake.push(OWNER, json!([{"type": 4, "file_item": {"media": broken, "file_name": "broken.pdf"}}]));
    let texts = fake.wait_texts_to(OWNER, 2, WAIT);
    assert!(
        texts.len() == 2 && texts[1].contains("(User sent a file \"broken.pdf\" but download failed)"),
        "{texts:?}"
    );
    // Larger than the limit: not even asked for. (Not named "huge": a demo-agent word.)
    fake.push(OWNER, json!([{"type": 4, "file_item": {"media": {"encrypt_query_param": "x"}, "file_name": "disk.iso", "len": "999999999"}}]));
    let texts = fake.wait_texts_to(OWNER, 3, WAIT);
    assert!(texts.len() == 3 && texts[2].contains("(User sent a file \"disk.iso\" but download failed)"), "{texts:?}");
    assert!(service.log().contains("larger than the 20 MB limit"), "log:\n{}", service.log());
    assert_eq!(
        fake.calls_of("cdn/download").len(),
        downloads,
        "nothing was downloaded for the stranger or the bad key"
    );
}

#[test]
fn images_named_in_the_answer_are_uploaded_only_from_allowed_places() {
    let fake = FakeIlink::start();
    let home = TempDir::new("wx-upload");
    let cwd = home.path().join("project");
    std::fs::create_dir_all(&cwd).unwrap();
    let png = b"\x89PNG\r\n\x1a\n the chart the agent drew".to_vec();
    std::fs::write(cwd.join("chart.png"), &png).unwrap();
    std::fs::write(cwd.join("notes.pdf"), b"%PDF-1.4 notes").unwrap();
    std::fs::write(home.path().join("secret.png"), &png).unwrap();
    home.write_config(&config(&fake, demo_agent(), json!({"cwd": cwd})));
    write_account(&home, &fake, 1_700_000_000_000);
    let service = Service::start(&home, &[]);
    // The demo agent echoes the text, markers included: an answer that names the files.
    let text = format!(
        "here [IMAGE: {}] and [IMAGE: {}] but not [IMAGE: {}] nor `[IMAGE: /in/code.png]`",
        cwd.join("chart.png").display(),
        cwd.join("notes.pdf").display(),
        home.path().join("secret.png").display()
    );
    fake.push_text(OWNER, &text);
    let sent = fake.wait_sent(WAIT, |s| s.len() >= 4);
    assert_eq!(sent.len(), 4, "log:\n{}", service.log());
    // The marker in inline code stays text (plain text drops the backticks).
    assert_eq!(sent[0].text.as_deref(), Some("echo: here  and  but not  nor [IMAGE: /in/code.png]"));
    assert_eq!(sent[1].media, Some((2, png)), "the picture, decrypted by the fake with the key we sent");
    assert_eq!(sent[2].media, Some((4, b"%PDF-1.4 notes".to_vec())));
    assert_eq!(sent[2].file_name.as_deref(), Some("notes.pdf"));
    assert_eq!(sent[3].text.as_deref(), Some("(could not send the file secret.png)"));
    assert_eq!(fake.calls_of("cdn/upload").len(), 2);
    assert!(service.log().contains("not under"), "log:\n{}", service.log());
}

#[test]
fn an_expired_login_parks_the_channel_once_until_a_new_login() {
    let fake = FakeIlink::start();
    let home = logged_in(&fake, "wx-expired", demo_agent(), json!({}));
    fake.expire_session(true);
    let service = Service::start(&home, &[]);
    let hint = "run `tether weixin-login wx`";
    assert!(service.wait_for_log(hint, WAIT), "log:\n{}", service.log());
    let unhealthy =
        wait_until(WAIT, || read_status(home.path()).is_some_and(|s| s["channels"]["wx"]["healthy"] == false));
    assert!(unhealthy, "{:?}", read_status(home.path()));
    let status = run_tether(&["status"], home.path());
    assert!(text(&status.stdout).contains(hint), "{}", text(&status.stdout));
    // Slow retries: no hammering, one log line.
    let polls = fake.calls_of("getupdates").len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(fake.calls_of("getupdates").len() <= polls + 1, "retried too fast");
    let ours = service.log().lines().filter(|l| l.contains("ERROR wx:") && l.contains(hint)).count();
    assert_eq!(ours, 1, "log:\n{}", service.log());

    // A new login (the account file changes) is picked up without a restart.
    fake.expire_session(false);
    write_account(&home, &fake, 1_800_000_000_000);
    assert!(service.wait_for_log("WeChat answers again", WAIT), "log:\n{}", service.log());
    fake.push_text(OWNER, "back again");
    assert_eq!(fake.wait_texts_to(OWNER, 1, WAIT), vec!["echo: back again"], "log:\n{}", service.log());
    assert!(wait_until(WAIT, || read_status(home.path()).is_some_and(|s| s["channels"]["wx"]["healthy"] == true)));

    // A send that meets -14 is not retried; a busy server and a 502 are.
    fake.fail_next("sendmessage", Fault::session_timeout());
    fake.push_text(OWNER, "expired at send");
    assert!(service.wait_for_log("the WeChat login is gone", WAIT), "log:\n{}", service.log());
    let sends = fake.calls_of("sendmessage").len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fake.calls_of("sendmessage").len(), sends, "a send after -14 was retried");
    // A send WeChat refuses for want of a fresh context token is dropped with the reason.
    fake.fail_next("sendmessage", Fault::Status(200, json!({"ret": -2})));
    fake.push_text(OWNER, "out of window");
    assert!(service.wait_for_log("the user must write again", WAIT), "log:\n{}", service.log());
    fake.fail_next("getupdates", Fault::Drop);
    fake.fail_next("sendmessage", Fault::busy());
    fake.fail_next("sendmessage", Fault::bad_gateway());
    fake.push_text(OWNER, "flaky server");
    let texts = fake.wait_texts_to(OWNER, 2, Duration::from_secs(30));
    assert_eq!(texts.last().map(String::as_str), Some("echo: flaky server"), "log:\n{}", service.log());
    assert_eq!(fake.pending_faults(), 0);
}

#[test]
fn not_logged_in_says_how_and_a_login_is_picked_up() {
    let fake = FakeIlink::start();
    let home = TempDir::new("wx-nologin");
    home.write_config(&config(&fake, demo_agent(), json!({})));
    let service = Service::start(&home, &[]);
    assert!(
        service.wait_for_log("not logged in to WeChat: run `tether weixin-login wx`", WAIT),
        "log:\n{}",
        service.log()
    );
    let check = run_tether(&["check"], home.path());
    assert!(
        text(&check.stdout).contains("WeChat login: not logged in: run `tether weixin-login wx`"),
        "{}",
        text(&check.stdout)
    );
    fake.push_text(OWNER, "are you there");
    write_account(&home, &fake, 1_700_000_000_000);
    assert_eq!(fake.wait_texts_to(OWNER, 1, WAIT), vec!["echo: are you there"], "log:\n{}", service.log());
}

#[test]
fn the_fake_refuses_requests_without_the_ilink_headers() {
    // What caught Qwen Code (#2908): a valid token without iLink-App-* headers is "expired".
    let fake = FakeIlink::start();
    let http = tether::net::http::HttpClient::default();
    let body = json!({"get_updates_buf": "", "base_info": {"channel_version": "2.1.3"}});
    let url = format!("{}{API_PREFIX}/ilink/bot/getupdates", fake.url());
    let (status, reply) = http.post_json(&url, &body, Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["errcode"], -14);
}
