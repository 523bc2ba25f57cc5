//! Media end to end through the fake Bot API: files in (photos, documents, voice, audio,
//! video), image blocks when the agent takes images, the size limit, `[IMAGE:]` / `[FILE:]`
//! markers out as multipart uploads (only from the allowed directories), and retention.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, tether_bin, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A 1×1 PNG's first bytes are enough for the sniffer; the rest is filler.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.resize(len, 7);
    bytes
}

fn agent(images: bool) -> Value {
    let mut args = vec!["demo-agent"];
    if images {
        args.push("--images");
    }
    json!({"command": tether_bin(), "args": args, "startupTimeoutMs": 10000})
}

fn config(fake: &FakeTelegram, agent: Value, cwd: &Path, extra: Value) -> Value {
    let mut channel = json!({
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(),
        "senderPolicy": "allowlist", "allowedUsers": ["111"], "cwd": cwd,
    });
    channel.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({"agent": agent, "channels": {"phone": channel}})
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn photo(small: &str, large: &str) -> Value {
    json!([
        {"file_id": small, "file_unique_id": small, "width": 90, "height": 90, "file_size": 100},
        {"file_id": large, "file_unique_id": large, "width": 800, "height": 800, "file_size": 3000},
    ])
}

#[test]
fn photos_become_image_blocks_when_the_agent_takes_images() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-image");
    home.write_config(&config(&fake, agent(true), home.path(), json!({})));
    let service = Service::start(&home, &[]);
    fake.add_file("big1", &png(3000));
    fake.add_file("big2", &png(1234));
    fake.send_dm_media(111, json!({"photo": photo("small1", "big1"), "caption": "what is this?"}));
    let reply = fake.next_text_to(111, WAIT).unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert!(reply.starts_with("echo: what is this?"), "{reply}");
    assert!(reply.ends_with("[image image/png 3000 bytes]"), "{reply}");
    // Only the largest size was fetched.
    let fetched: Vec<Value> = fake.calls_of("getFile").into_iter().map(|c| c.body["file_id"].clone()).collect();
    assert_eq!(fetched, vec![json!("big1")]);
    // Kept privately under the media directory, and the text says where.
    let dir = home.path().join("media/phone/111");
    let saved: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(reply.contains(&format!("saved to: {}", saved[0].display())), "{reply}");
    assert_eq!((mode(&home.path().join("media/phone")), mode(&dir), mode(&saved[0])), (0o700, 0o700, 0o600));

    // A photo without caption: still a turn, its image block in it.
    fake.send_dm_media(111, json!({"photo": photo("small2", "big2")}));
    let reply = fake.next_text_to(111, WAIT).unwrap();
    assert!(reply.ends_with("[image image/png 1234 bytes]"), "{reply}");
}

#[test]
fn without_image_support_the_prompt_names_each_file() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-kinds");
    home.write_config(&config(&fake, agent(false), home.path(), json!({})));
    let service = Service::start(&home, &[]);
    fake.add_file("ph", &png(500));
    fake.add_file("doc", b"%PDF-1.7 report");
    fake.add_file("voice", b"OggS voice");
    fake.add_file("song", b"ID3 song");
    fake.add_file("clip", b"\0\0\0 ftypmp4");
    fake.add_file("evil", b"#!/bin/sh");
    let cases = [
        (json!({"photo": photo("ph-small", "ph")}), "User sent a image \"photo.jpg\""),
        (
            json!({"document": {"file_id": "doc", "file_name": "report.pdf", "mime_type": "application/pdf", "file_size": 15}, "caption": "read this"}),
            "User sent a file \"report.pdf\"",
        ),
        (
            json!({"voice": {"file_id": "voice", "duration": 2, "mime_type": "audio/ogg"}}),
            "User sent a audio \"voice.ogg\"",
        ),
        (
            json!({"audio": {"file_id": "song", "file_name": "song.mp3", "duration": 3}}),
            "User sent a audio \"song.mp3\"",
        ),
        (
            json!({"video": {"file_id": "clip", "width": 1, "height": 1, "duration": 1}}),
            "User sent a video \"video.mp4\"",
        ),
        // A hostile name: saved under a safe one, inside the media directory.
        (json!({"document": {"file_id": "evil", "file_name": "../../../tmp/evil\n.sh"}}), "User sent a file"),
    ];
    for (media, line) in cases {
        fake.send_dm_media(111, media.clone());
        let reply =
            fake.next_text_to(111, WAIT).unwrap_or_else(|| panic!("no reply to {media}; log:\n{}", service.log()));
        assert!(reply.contains(line), "{reply}");
        assert!(!reply.contains("[image "), "{reply}");
        let path = reply.split("saved to: ").nth(1).unwrap_or_else(|| panic!("{reply}")).trim();
        // (The echo is rendered as Markdown: `_x_` in a name shows in italics.)
        let path = path.replace("<i>", "_").replace("</i>", "_");
        assert!(Path::new(&path).starts_with(home.path().join("media/phone/111")), "{path}");
        assert!(Path::new(&path).is_file(), "{path}");
    }
    let names: Vec<String> = std::fs::read_dir(home.path().join("media/phone/111"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("-_.._.._tmp_evil_.sh")), "{names:?}");
    assert!(!Path::new("/tmp/evil\n.sh").exists());
}

#[test]
fn a_file_over_the_limit_is_refused_with_a_reply() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-big");
    home.write_config(&config(&fake, agent(false), home.path(), json!({"maxMediaBytes": 1000})));
    let service = Service::start(&home, &[]);
    fake.add_file("huge", &vec![1u8; 5000]);
    // Announced as too big: not even looked up.
    fake.send_dm_media(111, json!({"document": {"file_id": "huge", "file_name": "big.zip", "file_size": 5000}}));
    let reply = fake.next_text_to(111, WAIT).unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert_eq!(
        reply,
        "Your file \"big.zip\" was not received: 4 KB is over this channel's limit of 1000 bytes (maxMediaBytes)."
    );
    assert!(fake.calls_of("getFile").is_empty());
    // Size not announced: refused once getFile says it, with the caption still answered.
    fake.send_dm_media(111, json!({"document": {"file_id": "huge", "file_name": "b.zip"}, "caption": "and this"}));
    let notice = fake.next_text_to(111, WAIT).unwrap();
    assert!(notice.contains("was not received"), "{notice}");
    let echo = fake.next_text_to(111, WAIT).unwrap();
    assert!(echo.starts_with("echo: and this") && echo.contains("was not received"), "{echo}");
    assert!(fake.calls_of("download").is_empty(), "an oversize file was downloaded");
    assert!(!home.path().join("media/phone/111").exists());
}

#[test]
fn markers_send_files_from_the_allowed_directories_only() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-out");
    let work = home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("plot.png"), png(2048)).unwrap();
    std::fs::write(work.join("notes.txt"), b"notes").unwrap();
    std::fs::write(work.join("big.bin"), vec![0u8; 5000]).unwrap();
    std::fs::write(home.path().join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(home.path().join("secret.txt"), work.join("link.txt")).unwrap();
    home.write_config(&config(&fake, agent(false), &work, json!({"maxMediaBytes": 4096})));
    let service = Service::start(&home, &[]);
    let w = work.display();
    // The demo agent echoes: its answer carries the markers.
    fake.send_dm(
        111,
        &format!(
            "here [IMAGE: {w}/plot.png] [FILE: {w}/notes.txt] `[FILE: {w}/notes.txt]`\n\
             [FILE: /etc/passwd]\n[FILE: {w}/../secret.txt]\n[FILE: {w}/link.txt]\n[FILE: {w}/big.bin]"
        ),
    );
    let uploads = fake.wait_uploads(2, WAIT);
    assert_eq!(uploads.len(), 2, "log:\n{}", service.log());
    assert_eq!((uploads[0].method.as_str(), uploads[0].field.as_str()), ("sendPhoto", "photo"));
    assert_eq!(uploads[0].bytes, png(2048));
    assert_eq!(uploads[0].file_name, "plot.png");
    assert_eq!(uploads[0].content_type, "image/png");
    assert_eq!(uploads[0].fields.get("chat_id").map(String::as_str), Some("111"));
    assert_eq!((uploads[1].method.as_str(), uploads[1].file_name.as_str()), ("sendDocument", "notes.txt"));
    assert_eq!(uploads[1].bytes, b"notes");
    let text = fake.next_text_to(111, WAIT).unwrap();
    // The markers went; the one in inline code stayed.
    assert!(text.starts_with(&format!("echo: here   <code>[FILE: {w}/notes.txt]</code>")), "{text}");
    assert!(!text.contains("[IMAGE:") && !text.contains("/plot.png"), "{text}");
    for refused in [
        "not sent: /etc/passwd is outside the allowed directories".to_string(),
        format!("not sent: {w}/../secret.txt is outside the allowed directories"),
        format!("not sent: {w}/link.txt is outside the allowed directories"),
        format!("not sent: {w}/big.bin is 4 KB, over the limit of 4 KB"),
    ] {
        assert!(text.contains(&refused), "{refused} missing from {text}");
    }
    assert_eq!(fake.wait_uploads(3, Duration::from_millis(500)).len(), 2, "a refused file was sent");
}

#[test]
fn received_files_are_deleted_after_the_retention() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-retention");
    let dir = home.path().join("media/phone/111");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [home.path().join("media"), home.path().join("media/phone"), dir.clone()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::write(dir.join("old.jpg"), b"old").unwrap();
    std::fs::write(dir.join("new.jpg"), b"new").unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options().write(true).open(dir.join("old.jpg")).unwrap().set_modified(two_days_ago).unwrap();
    home.write_config(&config(&fake, agent(false), home.path(), json!({"mediaRetention": "1d"})));
    let service = Service::start(&home, &[]);
    assert!(wait_until(WAIT, || !dir.join("old.jpg").exists()), "log:\n{}", service.log());
    assert!(dir.join("new.jpg").exists());
}

/// A web chat upload that is an image reaches an agent that takes images as an image block.
#[test]
fn web_chat_image_uploads_become_image_blocks_and_sent_pictures_show_inline() {
    use std::io::{Read, Write};
    let home = TempDir::new("media-web");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    home.write_config(&json!({
        "agent": agent(true),
        "channels": {"web": {"type": "webchat", "listen": addr, "senderPolicy": "open", "cwd": home.path()}},
    }));
    let service = Service::start(&home, &[]);
    let mut cookie = None;
    assert!(
        wait_until(WAIT, || {
            let Ok(mut stream) = std::net::TcpStream::connect(&addr) else { return false };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(stream, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            cookie = text
                .lines()
                .find_map(|l| l.strip_prefix("Set-Cookie: ").or_else(|| l.strip_prefix("set-cookie: ")))
                .and_then(|c| c.split(';').next())
                .map(str::to_string);
            cookie.is_some()
        }),
        "log:\n{}",
        service.log()
    );
    let cookie = cookie.unwrap();
    let mut ws = crate::webchat::ws_connect(&addr, &cookie);
    let deadline = std::time::Instant::now() + WAIT;
    let data = tether::media::base64(&png(777));
    let message =
        json!({"type": "message", "text": "see", "file": {"name": "s.png", "mime": "image/png", "data": data}});
    ws.send(tungstenite::Message::text(message.to_string())).unwrap();
    let answer = loop {
        let frame = crate::webchat::next_frame(&mut ws, deadline)
            .unwrap_or_else(|| panic!("no answer; log:\n{}", service.log()));
        if frame["type"] == "message" && frame["from"] == "agent" {
            break frame["text"].as_str().unwrap_or_default().to_string();
        }
    };
    assert!(answer.starts_with("echo: see"), "{answer}");
    assert!(answer.ends_with("[image image/png 777 bytes]"), "{answer}");

    // Markers out: a picture shown inline, served only to this browser; a refused path named.
    std::fs::write(home.path().join("plot.png"), png(321)).unwrap();
    let text = format!("look [IMAGE: {}/plot.png] [FILE: /etc/passwd]", home.path().display());
    ws.send(tungstenite::Message::text(json!({"type": "message", "text": text}).to_string())).unwrap();
    let answer = loop {
        let frame = crate::webchat::next_frame(&mut ws, deadline)
            .unwrap_or_else(|| panic!("no answer; log:\n{}", service.log()));
        if frame["type"] == "message" && frame["from"] == "agent" {
            break frame["text"].as_str().unwrap_or_default().to_string();
        }
    };
    assert!(answer.contains("(not sent: /etc/passwd is outside the allowed directories)"), "{answer}");
    assert!(!answer.contains("[IMAGE:"), "{answer}");
    let url =
        answer.split("![plot.png](").nth(1).and_then(|r| r.split(')').next()).unwrap_or_else(|| panic!("{answer}"));
    let get = |cookie: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET {url} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n").unwrap();
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        bytes
    };
    let reply = get(&cookie);
    let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&reply[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("image/png"), "{head}");
    assert_eq!(&reply[head_end + 4..], &png(321)[..]);
    let other = String::from_utf8_lossy(&get("tether_sid=00")).to_string();
    assert!(other.starts_with("HTTP/1.1 404"), "another browser got it: {other}");
}

/// A file that cannot be fetched does not lose its message; a stranger's files are never
/// downloaded.
#[test]
fn a_failed_download_is_named_and_strangers_files_are_not_fetched() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-fail");
    home.write_config(&config(&fake, agent(false), home.path(), json!({})));
    let service = Service::start(&home, &[]);
    fake.add_file("theirs", &png(100));
    fake.send_dm_media(999, json!({"photo": photo("theirs-small", "theirs"), "caption": "from a stranger"}));
    // Telegram no longer has this one.
    fake.send_dm_media(111, json!({"document": {"file_id": "gone", "file_name": "old.txt"}, "caption": "read it"}));
    let reply = fake.next_text_to(111, WAIT).unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert!(reply.starts_with("echo: read it"), "{reply}");
    assert!(reply.contains("[The user's file \"old.txt\" could not be downloaded: getFile failed"), "{reply}");
    let asked: Vec<Value> = fake.calls_of("getFile").into_iter().map(|c| c.body["file_id"].clone()).collect();
    assert_eq!(asked, vec![json!("gone")], "a stranger's file was looked up");
    assert!(!home.path().join("media/phone/999").exists());
}

/// A download that hangs gives up after its timeout (5 s + 1 s per 256 KiB of
/// `maxMediaBytes`): the message goes on with a note and the bot keeps listening.
#[test]
fn a_hanging_download_does_not_wedge_the_poller() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-stall");
    home.write_config(&config(&fake, agent(false), home.path(), json!({"maxMediaBytes": 1000})));
    let service = Service::start(&home, &[]);
    fake.add_file("slow", &png(100));
    fake.stall_file("slow", Duration::from_secs(40));
    let started = std::time::Instant::now();
    fake.send_dm_media(111, json!({"document": {"file_id": "slow", "file_name": "late.png"}, "caption": "late one"}));
    fake.send_dm(111, "still there?");
    let first = fake.next_text_to(111, WAIT).unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert!(first.starts_with("echo: late one") && first.contains("could not be downloaded"), "{first}");
    let second = fake.next_text_to(111, WAIT).unwrap();
    assert_eq!(second, "echo: still there?");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(15), "the poller was held {waited:?}");
}

/// Files of group messages the gates would drop (the bot not mentioned) are not fetched;
/// a photo that mentions the bot in its caption is.
#[test]
fn group_files_are_fetched_only_when_the_bot_is_addressed() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("media-group");
    home.write_config(&config(&fake, agent(false), home.path(), json!({"groupPolicy": "open"})));
    let service = Service::start(&home, &[]);
    fake.add_file("p1", &png(64));
    fake.send_group_photo(-100_555, 111, "just chatting");
    fake.send_group_photo(-100_555, 111, &format!("@{} what is it?", crate::support::fake_telegram::BOT_USERNAME));
    let reply = fake.next_text_to(-100_555, WAIT).unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert!(reply.starts_with("echo: what is it?") && reply.contains("User sent a image"), "{reply}");
    assert_eq!(fake.calls_of("getFile").len(), 1, "the unaddressed photo was fetched too");
}
