//! DingTalk end to end: fake DingTalk (HTTP API and Stream gateway) ⇄ tether ⇄ demo agent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_dingtalk::{CLIENT_ID, CLIENT_SECRET, FakeDingTalk, Sent, unix_ms};
use crate::support::{Service, TempDir, demo_agent, read_status, run_tether, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn config(fake: &FakeDingTalk, extra: Value) -> Value {
    let mut channel = json!({
        "type": "dingtalk",
        "clientId": CLIENT_ID,
        "clientSecret": "$DT_SECRET",
        "apiBase": fake.url(),
        "oapiBase": fake.url(),
        "senderPolicy": "allowlist",
        "allowedUsers": ["alice"],
        "groupPolicy": "open",
    });
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({"agent": demo_agent(), "channels": {"ding": channel}})
}

fn start(fake: &FakeDingTalk, home: &TempDir, env: &[(&str, &str)]) -> Service {
    home.write_config(&config(fake, json!({})));
    let mut env = env.to_vec();
    env.push(("DT_SECRET", CLIENT_SECRET));
    let service = Service::start_with_env(home, &[], &env);
    assert!(fake.wait_connections(1, WAIT), "never connected; log:\n{}", service.log());
    service
}

/// Wait until something was sent to `to` that satisfies `what`; returns it.
fn wait_for(fake: &FakeDingTalk, service: &Service, to: &str, what: impl Fn(&Sent) -> bool) -> Sent {
    let sent = fake.wait_sent(WAIT, |sent| sent.iter().any(|s| s.to == to && what(s)));
    let Some(sent) = sent else { panic!("nothing fitting sent to {to}: {:?}\nlog:\n{}", fake.sent(), service.log()) };
    sent.into_iter().find(|s| s.to == to && what(s)).unwrap()
}

#[test]
fn dingtalk_dm_and_group_mention_are_answered_and_every_frame_is_acked() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-basic");
    let service = start(&fake, &home, &[]);

    let (frame, msg_id) = fake.dm("alice", "hello agent");
    let ack = fake.wait_ack(&frame, WAIT).expect("the callback was acked");
    assert_eq!(ack["code"], 200, "{ack}");
    // Acked only once it was journaled.
    let journal = std::fs::read_to_string(home.path().join("journal/ding.jsonl")).unwrap_or_default();
    assert!(journal.contains(&msg_id), "{journal}");
    let reply = wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: hello agent");
    assert_eq!((reply.via, reply.title.as_str()), ("webhook", "echo: hello agent"));
    // 👀 on the message while the agent works, taken back once the answer is there.
    let (_, msg_id) = fake.dm("alice", "slow=100 watch");
    wait_for(&fake, &service, "cid-alice", |s| s.text.contains("tick 9"));
    let shown = |action: &str| fake.reactions().into_iter().find(|(a, m, _)| a == action && *m == msg_id);
    assert!(wait_until(WAIT, || shown("recall").is_some()), "{:?}\n{}", fake.reactions(), service.log());
    let sent_before = |action: &str| shown(action).unwrap().2;
    assert!(
        sent_before("reply") < sent_before("recall"),
        "shown before the answer, taken back after: {:?}",
        fake.reactions()
    );

    // A group message that @-mentions the robot (the platform left the @name in).
    let frame = fake.group("group-1", "alice", "@Tether status please", true);
    let reply = wait_for(&fake, &service, "group-1", |s| s.text.contains("status please"));
    assert_eq!(reply.via, "webhook");
    assert!(!reply.text.contains("@Tether"), "{reply:?}");
    assert!(fake.wait_ack(&frame, WAIT).is_some());

    // A stranger is acked but never answered.
    let (frame, _) = fake.dm("mallory", "let me in");
    assert!(fake.wait_ack(&frame, WAIT).is_some());

    // Pings are answered with their own data; events are acked as handled.
    let ping = fake.ping("123-dsfs");
    let pong = fake.wait_ack(&ping, WAIT).expect("the ping was answered");
    assert_eq!(pong["code"], 200);
    let data: Value = serde_json::from_str(pong["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"opaque": "123-dsfs"}));
    let event = fake.push_frame("EVENT", "*", "{}");
    let ack = fake.wait_ack(&event, WAIT).expect("the event was acked");
    let data: Value = serde_json::from_str(ack["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["status"], "SUCCESS");
    // An undecodable callback is acked and skipped; the channel goes on.
    let junk = fake.push_frame("CALLBACK", "/v1.0/im/bot/messages/get", "{not json");
    assert!(fake.wait_ack(&junk, WAIT).is_some());
    fake.dm("alice", "still there");
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: still there");

    assert!(fake.texts_to("cid-mallory").is_empty());
    assert_eq!(fake.token_calls(), 1, "one token, cached, for the reactions");
    let log = service.log();
    assert!(log.contains("DingTalk shares an app's messages among all its connections"), "{log}");
}

#[test]
fn dingtalk_reconnects_after_disconnect_and_a_dropped_socket_mid_turn_and_answers_duplicates_once() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-reconnect");
    let service = start(&fake, &home, &[]);

    // The socket drops while the agent works: the answer still arrives, new messages too.
    fake.dm("alice", "slow=200 first");
    std::thread::sleep(Duration::from_millis(300));
    fake.drop_connection();
    assert!(fake.wait_connections(2, WAIT), "no reconnect after the drop; log:\n{}", service.log());
    wait_for(&fake, &service, "cid-alice", |s| s.text.contains("tick 9"));

    // A routine disconnect: a new connection with a new ticket.
    fake.disconnect();
    assert!(fake.wait_connections(3, WAIT), "no reconnect after disconnect; log:\n{}", service.log());
    fake.dm("alice", "after the move");
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: after the move");

    // The same message delivered twice, and once more after a reconnect: answered once.
    let data = fake.robot_data("alice", None, "only once", false);
    let first = fake.push_robot(&data);
    let second = fake.push_robot(&data);
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: only once");
    assert!(fake.wait_ack(&first, WAIT).is_some() && fake.wait_ack(&second, WAIT).is_some());
    fake.drop_connection();
    assert!(fake.wait_connections(4, WAIT));
    let third = fake.push_robot(&data);
    assert!(fake.wait_ack(&third, WAIT).is_some());
    fake.dm("alice", "marker");
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: marker");
    let answers = fake.texts_to("cid-alice").iter().filter(|t| *t == "echo: only once").count();
    assert_eq!(answers, 1, "{:?}", fake.texts_to("cid-alice"));
    let slow = fake.texts_to("cid-alice").iter().filter(|t| t.contains("tick 9")).count();
    assert_eq!(slow, 1, "{:?}", fake.texts_to("cid-alice"));
    assert_eq!(fake.refused_tickets(), 0, "every connection used a fresh ticket");
}

#[test]
fn dingtalk_answers_through_the_robot_api_once_the_webhook_expired() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-expired");
    let service = start(&fake, &home, &[]);

    // The webhook expires while the agent works (errcode 300001): the answer goes one to one.
    fake.dm("alice", "slow=200 big job");
    std::thread::sleep(Duration::from_millis(300));
    fake.expire_sessions();
    let reply = wait_for(&fake, &service, "alice", |s| s.text.contains("tick 9"));
    assert_eq!(reply.via, "direct");
    assert_eq!(reply.title, "tick 0 tick 1 tick 2");
    assert!(service.wait_for_log("expired; answering through the robot API", WAIT));

    // A webhook whose expiry time has passed is not tried at all.
    let mut data = fake.robot_data("alice", None, "late webhook", false);
    data["sessionWebhookExpiredTime"] = json!(unix_ms() - 1000);
    fake.push_robot(&data);
    let reply = wait_for(&fake, &service, "alice", |s| s.text == "echo: late webhook");
    assert_eq!(reply.via, "direct");

    // A group: the group send API.
    fake.expire_new_sessions.store(true, std::sync::atomic::Ordering::SeqCst);
    fake.group("group-7", "alice", "team question", true);
    let reply = wait_for(&fake, &service, "group-7", |s| s.text.contains("team question"));
    assert_eq!(reply.via, "group");
    assert_eq!(fake.token_calls(), 1, "the token is cached");

    // The server calls the token stale: renewed once, and the answer arrives.
    fake.revoke_tokens();
    fake.dm("alice", "after revocation");
    wait_for(&fake, &service, "alice", |s| s.text == "echo: after revocation");
    assert_eq!((fake.token_calls(), fake.stale_token_uses()), (2, 1));
}

#[test]
fn dingtalk_watchdog_replaces_a_silent_connection() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-watchdog");
    let service = start(&fake, &home, &[("TETHER_DINGTALK_SILENCE_MS", "1500")]);
    fake.freeze(Duration::from_secs(4));
    assert!(fake.wait_connections(2, WAIT), "the silent connection was kept; log:\n{}", service.log());
    assert!(service.log().contains("nothing heard for"), "{}", service.log());
    fake.dm("alice", "awake");
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: awake");
}

#[test]
fn dingtalk_picture_is_fetched_in_two_steps_for_the_agent() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-media");
    let service = start(&fake, &home, &[]);
    let png = b"\x89PNG\r\n\x1a\nfake picture".to_vec();
    fake.add_file("pic-1", "image/png", &png);
    let mut data = fake.robot_data("alice", None, "", false);
    data["msgtype"] = json!("picture");
    data["content"] = json!({"downloadCode": "pic-1", "pictureDownloadCode": "other"});
    fake.push_robot(&data);
    let reply = wait_for(&fake, &service, "cid-alice", |s| s.text.contains("saved to"));
    let path = reply.text.split("saved to: ").nth(1).unwrap().trim().to_string();
    assert!(path.starts_with(home.path().join("media").to_str().unwrap()), "{path}");
    assert_eq!(std::fs::read(&path).unwrap(), png);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(std::path::Path::new(&path)), 0o600);
        assert_eq!(mode(&home.path().join("media")), 0o700);
    }
    assert_eq!(fake.download_calls(), 1);
    // A file that cannot be fetched: the message still reaches the agent with its placeholder.
    let mut data = fake.robot_data("alice", None, "", false);
    data["msgtype"] = json!("file");
    data["content"] = json!({"downloadCode": "missing", "fileName": "report.pdf"});
    fake.push_robot(&data);
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: (file: report.pdf)");
}

#[test]
fn dingtalk_rejected_credentials_park_the_channel_and_check_describes_it() {
    let fake = FakeDingTalk::start();
    fake.refuse_open.store(true, std::sync::atomic::Ordering::SeqCst);
    let home = TempDir::new("dt-park");
    home.write_config(&config(&fake, json!({})));
    let service = Service::start_with_env(&home, &[], &[("DT_SECRET", CLIENT_SECRET)]);
    let parked = wait_until(WAIT, || {
        read_status(home.path()).is_some_and(|s| s.pointer("/channels/ding/state") == Some(&json!("parked")))
    });
    assert!(parked, "{:?}\nlog:\n{}", read_status(home.path()), service.log());
    assert!(service.log().contains("DingTalk rejected the app credentials"), "{}", service.log());
    drop(service);

    let mut plain = config(&fake, json!({}));
    plain["channels"]["ding"]["clientSecret"] = json!(CLIENT_SECRET);
    home.write_config(&plain);
    let out = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("ding (dingtalk)"), "{text}");
    assert!(text.contains(&format!("apiBase: {}", fake.url())), "{text}");
    assert!(text.contains("clientSecret: "), "{text}");
    assert!(!text.contains(CLIENT_SECRET), "{text}");
}

#[test]
fn dingtalk_config_errors_name_the_key() {
    let home = TempDir::new("dt-config");
    home.write_config(&json!({"agent": demo_agent(), "channels": {"ding": {"type": "dingtalk", "clientId": "k"}}}));
    let out = run_tether(&["check", "--home", home.path().to_str().unwrap()], home.path());
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clientSecret") && err.contains("DINGTALK_CLIENT_SECRET"), "{err}");
}

#[test]
fn dingtalk_message_unanswered_at_a_crash_is_answered_after_restart() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-restart");
    let mut service = start(&fake, &home, &[]);
    let (frame, msg_id) = fake.dm("alice", "slow=500 survive");
    assert!(fake.wait_ack(&frame, WAIT).is_some());
    let journal = home.path().join("journal/ding.jsonl");
    assert!(wait_until(WAIT, || std::fs::read_to_string(&journal).unwrap_or_default().contains(&msg_id)));
    service.kill_hard();
    assert!(fake.texts_to("cid-alice").is_empty(), "answered before the crash: {:?}", fake.sent());
    // The next start replays it from the journal and knows where to answer (the chats file).
    let service = Service::start_with_env(&home, &[], &[("DT_SECRET", CLIENT_SECRET)]);
    let reply = wait_for(&fake, &service, "cid-alice", |s| s.text.contains("tick 9"));
    assert_eq!(reply.via, "webhook");
}

#[test]
fn dingtalk_two_channels_of_one_app_are_warned_about() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-twice");
    let mut config = config(&fake, json!({}));
    let twin = config["channels"]["ding"].clone();
    config["channels"]["ding2"] = twin;
    home.write_config(&config);
    let service = Service::start_with_env(&home, &[], &[("DT_SECRET", CLIENT_SECRET)]);
    assert!(service.wait_for_log("another connection uses the same DingTalk app", WAIT), "{}", service.log());
    let warned = wait_until(WAIT, || {
        read_status(home.path()).is_some_and(|s| {
            ["ding", "ding2"].iter().any(|c| {
                s.pointer(&format!("/channels/{c}/lastError"))
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.contains("DingTalk splits the messages"))
            })
        })
    });
    assert!(warned, "{:?}", read_status(home.path()));
}

#[test]
fn dingtalk_a_refused_ticket_is_replaced_by_a_fresh_one() {
    let fake = FakeDingTalk::start();
    fake.expire_next_tickets(2);
    let home = TempDir::new("dt-ticket");
    let service = start(&fake, &home, &[]);
    // Two upgrades refused (401): each time a new connections/open, never the same ticket.
    assert_eq!(fake.refused_tickets(), 2, "{}", service.log());
    assert_eq!(fake.opens(), 3);
    assert!(service.log().contains("WebSocket upgrade refused with HTTP 401"), "{}", service.log());
    fake.dm("alice", "connected at last");
    wait_for(&fake, &service, "cid-alice", |s| s.text == "echo: connected at last");
}

#[test]
fn image_markers_are_uploaded_and_sent_as_pictures_from_the_allowed_directories_only() {
    let fake = FakeDingTalk::start();
    let home = TempDir::new("dt-media-out");
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(2048, 7);
    std::fs::write(work.join("plot.png"), &png).unwrap();
    std::fs::write(work.join("notes.txt"), b"notes").unwrap();
    home.write_config(&config(&fake, json!({"cwd": work})));
    let service = Service::start_with_env(&home, &[], &[("DT_SECRET", CLIENT_SECRET)]);
    assert!(fake.wait_connections(1, WAIT), "never connected; log:\n{}", service.log());
    let w = work.display();
    // The demo agent echoes: its answer carries the markers.
    fake.dm("alice", &format!("look [IMAGE: {w}/plot.png] [FILE: {w}/notes.txt] [FILE: /etc/passwd]"));
    let text = wait_for(&fake, &service, "cid-alice", |s| s.text.starts_with("echo:"));
    assert!(!text.text.contains("[IMAGE:") && !text.text.contains("/plot.png"), "{}", text.text);
    assert!(text.text.contains("not sent: /etc/passwd is outside the allowed directories"), "{}", text.text);
    // Files go through the robot API to the person (staff id), naming the uploaded media.
    let picture = wait_for(&fake, &service, "alice", |s| s.title == "sampleImageMsg");
    let file = wait_for(&fake, &service, "alice", |s| s.title == "sampleFile");
    assert_eq!((picture.via, file.via), ("direct", "direct"));
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert_eq!((uploads[0].kind.as_str(), uploads[0].file_name.as_str()), ("image", "plot.png"));
    assert_eq!((uploads[0].content_type.as_str(), &uploads[0].bytes), ("image/png", &png));
    assert_eq!(picture.text, uploads[0].media_id);
    assert_eq!((uploads[1].kind.as_str(), uploads[1].bytes.as_slice()), ("file", b"notes".as_slice()));
    assert_eq!(file.text, format!("{} notes.txt", uploads[1].media_id));
}
