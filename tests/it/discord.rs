//! Discord end to end: fake Discord (REST + gateway) ⇄ tether ⇄ demo agent.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_discord::{BOT_ID, Command, FakeDiscord, TOKEN};
use crate::support::{Service, TempDir, demo_agent, journal_pending, read_status, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn start(fake: &FakeDiscord, label: &str, extra: Value) -> (TempDir, Service) {
    start_with_env(fake, label, extra, &[])
}

/// [`start`] with more environment variables for the service.
fn start_with_env(fake: &FakeDiscord, label: &str, extra: Value, env: &[(&str, &str)]) -> (TempDir, Service) {
    let home = TempDir::new(label);
    let mut channel = json!({
        "type": "discord",
        "token": "$DISCORD_TEST_TOKEN",
        "apiBase": fake.api_base(),
        "senderPolicy": "allowlist",
        "allowedUsers": ["111"],
    });
    if let (Some(c), Some(e)) = (channel.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    home.write_config(&json!({"agent": demo_agent(), "channels": {"dc": channel}}));
    let env: Vec<(&str, &str)> = [("DISCORD_TEST_TOKEN", TOKEN)].into_iter().chain(env.iter().copied()).collect();
    let service = Service::start_with_env(&home, &[], &env);
    (home, service)
}

fn content(body: &Value) -> &str {
    body["content"].as_str().unwrap_or("")
}

#[test]
fn a_dm_is_answered_with_typing_shown() {
    let fake = FakeDiscord::start();
    let (_home, service) = start(&fake, "dc-dm", json!({}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()), "log:\n{}", service.log());
    fake.dm("111", "hello agent");
    let reply = fake.wait_post(&dm, WAIT, |c| c == "echo: hello agent");
    let reply = reply.unwrap_or_else(|| panic!("no reply; posted {:?}\nlog:\n{}", fake.posted(&dm), service.log()));
    assert_eq!(reply["allowed_mentions"]["parse"], json!([]));
    assert!(fake.calls().iter().any(|c| c.path == format!("/channels/{dm}/typing")), "no typing");
    // A stranger's DM reaches nobody; the bot's own and other bots' messages are ignored.
    fake.dm("999", "stranger words");
    fake.bot_message(&dm, BOT_ID, "echo: my own words");
    fake.dm("111", "second");
    assert!(fake.wait_post(&dm, WAIT, |c| c == "echo: second").is_some(), "log:\n{}", service.log());
    assert!(fake.posted(&FakeDiscord::dm_channel("999")).is_empty());
    assert!(!fake.posted(&dm).iter().any(|b| content(b).contains("my own words")));
}

#[test]
fn a_gateway_socket_that_never_says_hello_is_given_up_and_the_next_one_answers() {
    let fake = FakeDiscord::start();
    fake.silence_connections(1);
    let env = [(tether::adapters::discord::link::HANDSHAKE_ENV, "300")];
    let (_home, service) = start_with_env(&fake, "dc-silent", json!({}), &env);
    // The first socket brings nothing: closed resumably (4000), and a second one identifies.
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()), "log:\n{}", service.log());
    assert_eq!(fake.connections().len(), 2, "log:\n{}", service.log());
    assert!(wait_until(WAIT, || fake.client_closes() == [4000]), "closes {:?}", fake.client_closes());
    assert!(service.log().contains("no Hello from the Discord gateway"), "log:\n{}", service.log());
    fake.dm("111", "still there?");
    let dm = FakeDiscord::dm_channel("111");
    assert!(fake.wait_post(&dm, WAIT, |c| c == "echo: still there?").is_some(), "log:\n{}", service.log());
}

#[test]
fn guild_channels_need_a_mention_or_a_reply_and_threads_get_their_replies() {
    let fake = FakeDiscord::start();
    fake.add_thread("4001", "2001");
    // Only channel 2001 is allowed: its thread is allowed through its parent.
    let (_home, service) = start(&fake, "dc-guild", json!({"groupPolicy": "allowlist", "groups": {"2001": {}}}));
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    fake.guild("2001", "111", "not for the bot", false);
    fake.guild("2001", "111", "hi there", true);
    let reply = fake.wait_post("2001", WAIT, |c| c.starts_with("echo:"));
    let reply = reply.unwrap_or_else(|| panic!("no reply\nlog:\n{}", service.log()));
    assert_eq!(content(&reply), "echo: hi there", "the unaddressed message was answered");
    // A reply to the bot's message without a ping addresses it too.
    // (The fake gives the replied-to message the bot as author; the id need not exist.)
    fake.reply_to_bot("2001", "111", "and this too", &fake.snowflake());
    let answered = fake.wait_post("2001", WAIT, |c| c.starts_with("echo:") && c.contains("and this too"));
    assert!(answered.is_some(), "{:?}\nlog:\n{}", fake.posted("2001"), service.log());
    // In a thread: the answer goes into the thread.
    fake.guild("4001", "111", "inside the thread", true);
    assert!(fake.wait_post("4001", WAIT, |c| c == "echo: inside the thread").is_some(), "log:\n{}", service.log());
    // A thread message whose payload does not give the channel's type: looked up over REST.
    fake.add_thread("4002", "2001");
    fake.dispatch(
        "MESSAGE_CREATE",
        json!({"id": fake.snowflake(), "channel_id": "4002", "guild_id": "81384788765712384", "type": 0,
               "content": format!("<@{BOT_ID}> unsaid type"), "author": {"id": "111", "username": "user111"},
               "mentions": [{"id": BOT_ID, "username": "tether_test", "bot": true}], "attachments": []}),
    );
    assert!(fake.wait_post("4002", WAIT, |c| c == "echo: unsaid type").is_some(), "log:\n{}", service.log());
    // Another channel is not allowed.
    fake.guild("2002", "111", "elsewhere", true);
    std::thread::sleep(Duration::from_millis(500));
    assert!(fake.posted("2002").is_empty());
}

#[test]
fn long_answers_are_split_under_2000_characters() {
    let fake = FakeDiscord::start();
    let (_home, service) = start(&fake, "dc-long", json!({}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    let long = "word ".repeat(700); // 3500 characters
    fake.dm("111", long.trim());
    assert!(wait_until(WAIT, || fake.posted(&dm).len() >= 2), "log:\n{}", service.log());
    std::thread::sleep(Duration::from_millis(300));
    let posted = fake.posted(&dm);
    assert!(posted.iter().all(|b| content(b).chars().count() <= 2000), "{posted:?}");
    let joined: String = posted.iter().map(content).collect::<Vec<_>>().join(" ");
    assert_eq!(joined.split_whitespace().count(), 701, "echo: + 700 words");
}

#[test]
fn permission_buttons_are_clicked_acknowledged_and_the_message_updated() {
    let fake = FakeDiscord::start();
    let (_home, service) = start(&fake, "dc-perm", json!({}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    fake.dm("111", "permission please");
    let ask = fake.wait_post(&dm, WAIT, |c| c.contains("Permission needed"));
    let ask = ask.unwrap_or_else(|| panic!("no question\nlog:\n{}", service.log()));
    let buttons = ask["components"][0]["components"].as_array().cloned().unwrap_or_default();
    let allow = buttons.iter().find(|b| b["custom_id"].as_str().unwrap_or("").ends_with(":once"));
    let allow = allow.unwrap_or_else(|| panic!("no allow button: {ask}"))["custom_id"].as_str().unwrap().to_string();
    // A stranger's click is refused (ephemerally); the allowed user's goes through.
    let stranger = fake.click(&dm, "999", &allow, false);
    assert!(wait_until(WAIT, || fake
        .calls()
        .iter()
        .any(|c| c.path.starts_with(&format!("/interactions/{stranger}/")))));
    let interaction = fake.click(&dm, "111", &allow, false);
    assert!(
        fake.wait_post(&dm, WAIT, |c| c == "permission granted: proceed_once").is_some(),
        "log:\n{}",
        service.log()
    );
    let callback = fake.calls().into_iter().find(|c| c.path.starts_with(&format!("/interactions/{interaction}/")));
    assert!(callback.is_some(), "the click was not acknowledged");
    assert!(wait_until(WAIT, || fake.calls().iter().any(|c| c.method == "PATCH")), "the question was not updated");
    let edit = fake.calls().into_iter().find(|c| c.method == "PATCH").unwrap();
    assert_eq!(edit.body["components"], json!([]));
}

#[test]
fn rate_limits_and_reconnects_are_survived() {
    let fake = FakeDiscord::start();
    let (_home, service) = start(&fake, "dc-faults", json!({"groupPolicy": "open"}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    fake.throttle_next(&format!("/channels/{dm}/messages"), 0.3, false);
    fake.dm("111", "through a 429");
    assert!(fake.wait_post(&dm, WAIT, |c| c == "echo: through a 429").is_some(), "log:\n{}", service.log());
    fake.command(Command::Reconnect);
    assert!(wait_until(WAIT, || !fake.resumes().is_empty()), "log:\n{}", service.log());
    fake.dm("111", "after the reconnect");
    assert!(fake.wait_post(&dm, WAIT, |c| c == "echo: after the reconnect").is_some(), "log:\n{}", service.log());
    // A session that cannot be resumed: what was posted meanwhile is fetched and answered once.
    fake.guild("2001", "111", "talking here", true);
    assert!(fake.wait_post("2001", WAIT, |c| c == "echo: talking here").is_some(), "log:\n{}", service.log());
    fake.expire_sessions();
    fake.guild_missed("2001", "111", "not addressed during the gap", false);
    fake.guild_missed("2001", "111", "posted during the gap", true);
    fake.command(Command::Drop);
    assert!(fake.wait_post("2001", WAIT, |c| c == "echo: posted during the gap").is_some(), "log:\n{}", service.log());
    assert_eq!(fake.identifies().len(), 2);
    std::thread::sleep(Duration::from_millis(500));
    let answers = fake.posted("2001").iter().filter(|b| content(b) == "echo: posted during the gap").count();
    assert_eq!(answers, 1);
    // Fetched server messages keep the server's rules: no mention, no answer.
    assert!(!fake.posted("2001").iter().any(|b| content(b).contains("not addressed")), "{:?}", fake.posted("2001"));
}

#[test]
fn disallowed_intents_park_the_channel_with_what_to_do() {
    let fake = FakeDiscord::start();
    fake.refuse_intents();
    let (home, service) = start(&fake, "dc-4014", json!({}));
    assert!(service.wait_for_log("Message Content Intent", WAIT), "log:\n{}", service.log());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fake.connections().len(), 1, "reconnected after 4014");
    let parked =
        wait_until(WAIT, || read_status(home.path()).is_some_and(|s| s.to_string().contains("Message Content Intent")));
    assert!(parked, "status: {:?}", read_status(home.path()));
}

#[test]
fn attachments_are_saved_for_the_agent_and_hostile_payloads_are_skipped() {
    let fake = FakeDiscord::start();
    let (home, service) = start(&fake, "dc-files", json!({}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    // Payloads no decoder expects: the gateway thread skips them and keeps going.
    for d in [
        json!({"id": 5, "content": ["x"], "author": "nobody"}),
        json!({"id": "1", "channel_id": {"x": 1}, "author": {"id": 111}, "content": "x"}),
        json!(null),
        json!({"id": "1", "channel_id": "1", "type": 0, "author": {"id": "111"}, "content": "Ⱥ<@!", "mentions": "all"}),
    ] {
        fake.dispatch("MESSAGE_CREATE", d);
    }
    fake.dispatch("INTERACTION_CREATE", json!({"type": 3, "data": null}));
    fake.dm_with_file("111", "look at this", "../notes.txt", "file body 42");
    let reply = fake.wait_post(&dm, WAIT, |c| c.starts_with("echo:"));
    let reply = reply.unwrap_or_else(|| panic!("no reply\nlog:\n{}", service.log()));
    let text = content(&reply).to_string();
    assert!(text.contains("look at this") && text.contains("saved to"), "{text}");
    // Saved inside the channel's media folder, under a safe name, with the bytes.
    let media = home.path().join("media").join("dc");
    let saved: Vec<_> = std::fs::read_dir(&media).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].file_name().unwrap().to_string_lossy().ends_with("notes.txt"));
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap(), "file body 42");
}

#[test]
fn messages_posted_while_tether_was_stopped_are_fetched_at_the_next_start() {
    let fake = FakeDiscord::start();
    let (home, mut service) = start(&fake, "dc-restart", json!({"groupPolicy": "open"}));
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()));
    let first = fake.guild("2001", "111", "before the stop", true);
    assert!(fake.wait_post("2001", WAIT, |c| c == "echo: before the stop").is_some(), "log:\n{}", service.log());
    // The second one is seen after the state file was written for the first, which is not
    // written again for 30 s: after the kill it is fetched again, and the journal knows it.
    let second = fake.guild("2001", "111", "also before the stop", true);
    assert!(fake.wait_post("2001", WAIT, |c| c == "echo: also before the stop").is_some(), "log:\n{}", service.log());
    // The answered mark follows the post by a moment; a kill between the two answers the
    // message again after the restart (at least once, by design), which is not what this
    // test is about.
    assert!(wait_until(WAIT, || journal_pending(home.path(), "dc") == 0), "log:\n{}", service.log());
    service.kill_hard();
    let state = std::fs::read_to_string(home.path().join("dc-discord.json")).unwrap_or_default();
    assert!(state.contains(&first) && !state.contains(&second), "{state}");
    fake.guild_missed("2001", "111", "while stopped", true);
    let service = Service::start_with_env(&home, &[], &[("DISCORD_TEST_TOKEN", TOKEN)]);
    assert!(fake.wait_post("2001", WAIT, |c| c == "echo: while stopped").is_some(), "log:\n{}", service.log());
    std::thread::sleep(Duration::from_millis(500));
    let posted = fake.posted("2001");
    for answer in ["echo: before the stop", "echo: also before the stop", "echo: while stopped"] {
        assert_eq!(posted.iter().filter(|b| content(b) == answer).count(), 1, "{answer}: {posted:?}");
    }
}

#[test]
fn image_markers_go_out_as_attachments_from_the_allowed_directories_only() {
    let fake = FakeDiscord::start();
    let home = TempDir::new("dc-media-out");
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.resize(2048, 7);
    std::fs::write(work.join("plot.png"), &png).unwrap();
    std::fs::write(work.join("big.bin"), vec![0u8; 5000]).unwrap();
    let (_home2, service) = start(&fake, "dc-media-out-svc", json!({"cwd": work, "maxMediaBytes": 4096}));
    let dm = FakeDiscord::dm_channel("111");
    assert!(wait_until(WAIT, || !fake.identifies().is_empty()), "log:\n{}", service.log());
    let w = work.display();
    // The demo agent echoes: its answer carries the markers.
    fake.dm("111", &format!("look [IMAGE: {w}/plot.png] [FILE: /etc/passwd] [FILE: {w}/big.bin]"));
    let text = fake.wait_post(&dm, WAIT, |c| c.starts_with("echo:"));
    let text = text.unwrap_or_else(|| panic!("no reply; posted {:?}\nlog:\n{}", fake.posted(&dm), service.log()));
    let text = content(&text);
    assert!(wait_until(WAIT, || !fake.uploads().is_empty()), "no upload\nlog:\n{}", service.log());
    let uploads = fake.uploads();
    assert_eq!(uploads[0].channel, dm);
    assert_eq!((uploads[0].file_name.as_str(), uploads[0].content_type.as_str()), ("plot.png", "image/png"));
    assert_eq!(uploads[0].bytes, png);
    assert_eq!(uploads[0].content, "", "the text goes as its own message, not as a caption");
    // The marker went; the refused paths are named.
    assert!(!text.contains("[IMAGE:") && !text.contains("/plot.png"), "{text}");
    assert!(text.contains("not sent: /etc/passwd is outside the allowed directories"), "{text}");
    assert!(text.contains(&format!("not sent: {w}/big.bin is 4 KB, over the limit of 4 KB")), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fake.uploads().len(), 1, "a refused file was sent");
}
