//! The adapter seam from the outside: a platform written here, against the public interface
//! only, gets replies, chunking, pacing, journaling and supervision from tether with no change
//! outside this file. The daemon runs in this process (its agent is the real demo agent).

use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select, unbounded};
use serde_json::json;

use tether::adapters::outbox::{self, Call, Courier, Failure, Piece};
use tether::adapters::pacing::PacingRules;
use tether::adapters::{Capabilities, ChannelIo, Markup, Platform, RunningChannel};
use tether::config::{ConfigError, ParseContext, PlatformKeys, PlatformSettings};
use tether::error::Error;
use tether::event::{Inbound, InboundMessage};
use tether::journal::JournalEntry;

use crate::support::{TempDir, demo_agent, read_status, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A post on the fake platform: (message id, text).
type Post = (String, String);

/// The fake platform's wire: what people post, and what tether "sent".
struct Wire {
    posts: (Sender<Post>, Receiver<Post>),
    sent: Mutex<Vec<(Instant, String)>>,
}

static WIRE: LazyLock<Wire> = LazyLock::new(|| Wire { posts: unbounded(), sent: Mutex::new(Vec::new()) });

// ---- The platform: everything below down to the tests is what a new platform writes. ----

static FAKE: Platform = Platform {
    name: "fake",
    keys: &[],
    parse: no_keys,
    capabilities: Capabilities {
        live_drafts: false,
        edits: false,
        buttons: false,
        max_message_len: 60,
        markup: Markup::Plain,
        typing_refresh: None,
        journaled: true,
        addressed_commands: false,
    },
    heartbeats: false,
    spawn: spawn_fake,
};

fn no_keys(_: &PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError> {
    Ok(PlatformSettings::default())
}

struct FakeCourier;

impl Courier for FakeCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        let chunks = tether::render::plain_chunks(markdown, 60, tether::render::Units::Chars);
        chunks.into_iter().map(|text| Piece { text, formatted: false }).collect()
    }
    fn plain(&self, _: &Piece) -> Option<Piece> {
        None
    }
    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        if let Call::Send { piece, .. } = call {
            WIRE.sent.lock().unwrap().push((Instant::now(), piece.text.clone()));
        }
        Ok(None)
    }
    fn pacing(&self) -> PacingRules {
        // Two at once, then one per 300 ms.
        PacingRules {
            chat_burst: 2,
            chat_refill: Duration::from_millis(300),
            bot_limit: 30,
            bot_window: Duration::from_secs(1),
        }
    }
}

fn spawn_fake(channel: &tether::config::ChannelConfig, io: ChannelIo) -> Result<RunningChannel, Error> {
    let (journal, inbound, stop, posts) = (io.journal.clone().unwrap(), io.inbound, io.stop, WIRE.posts.1.clone());
    let name = channel.name.clone();
    io.supervisor.spawn("fake-poll".into(), move || {
        loop {
            let (id, text) = select! { recv(posts) -> p => p.unwrap(), recv(stop) -> _ => return };
            assert_ne!(text, "poison", "a bad update"); // A decoder bug: the thread dies.
            let message = InboundMessage {
                channel: name.clone(),
                sender_id: "ann".into(),
                chat_id: "ann".into(),
                message_id: Some(id),
                is_mentioned: true,
                text,
                ..Default::default()
            };
            for message in journal.record(vec![JournalEntry { message, sent_at_ms: 0 }]).unwrap() {
                inbound.send(Inbound::Message(message)).unwrap();
            }
        }
    })?;
    let settle = outbox::Settle { channel: channel.name.clone(), journal: io.journal, probe: io.probe };
    let outbox = outbox::spawn(Arc::new(FakeCourier), settle, &io.supervisor)?;
    Ok(RunningChannel::delivering(outbox))
}

// ---- The tests. ----

fn sent_texts() -> Vec<String> {
    WIRE.sent.lock().unwrap().iter().map(|(_, text)| text.clone()).collect()
}

fn wait_sent(count: usize) -> Vec<(Instant, String)> {
    let ok = wait_until(WAIT, || WIRE.sent.lock().unwrap().len() >= count);
    assert!(ok, "expected {count} messages sent, got {:?}", sent_texts());
    WIRE.sent.lock().unwrap().clone()
}

fn journal_text(home: &Path) -> String {
    std::fs::read_to_string(home.join("journal/f.jsonl")).unwrap_or_default()
}

#[test]
fn a_platform_written_against_the_seam_gets_replies_pacing_journaling_and_supervision() {
    let home = TempDir::new("seam");
    let text = json!({"agent": demo_agent(), "channels": {"f": {"type": "fake", "senderPolicy": "open"}}}).to_string();
    let env = |_: &str| None;
    let path = home.path().join("config.json");
    let platforms: &[&'static Platform] = &[&FAKE];
    let cx = ParseContext { path: &path, cwd: home.path(), home: None, env: &env, platforms };
    let config = tether::config::parse(&text, &cx).unwrap();
    let (stop_tx, stop) = unbounded::<()>();
    let options = tether::daemon::Options {
        home: home.path().to_path_buf(),
        only: Vec::new(),
        reload: None,
        log_file: None,
        as_service: true,
        stop: Some(stop),
    };
    let (ended_tx, ended) = unbounded();
    std::thread::spawn(move || ended_tx.send(tether::daemon::run(config, options).is_ok()));

    // A reply, journaled first and settled once delivered.
    WIRE.posts.0.send(("1".into(), "hello".into())).unwrap();
    assert_eq!(wait_sent(1)[0].1, "echo: hello");
    assert!(wait_until(WAIT, || journal_text(home.path()).contains(r#""done""#)), "{}", journal_text(home.path()));

    // A long answer: chunked to the platform's 60 characters, the first two parts at once,
    // then one per refill.
    let before = sent_texts().len();
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"].repeat(5).join(" ");
    WIRE.posts.0.send(("2".into(), words.clone())).unwrap();
    let sent = wait_sent(before + 4);
    let parts = &sent[before..];
    assert!(parts.iter().all(|(_, t)| t.chars().count() <= 60), "{parts:?}");
    let joined = parts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" ");
    assert_eq!(joined, format!("echo: {words}"), "nothing lost or repeated");
    let gap = parts[3].0 - parts[2].0;
    assert!(gap >= Duration::from_millis(200), "the bucket was empty: {gap:?}");

    // A poisoned update kills the poll thread: the channel is restarted and answers again.
    WIRE.posts.0.send(("3".into(), "poison".into())).unwrap();
    let restarted = wait_until(WAIT, || {
        read_status(home.path())
            .and_then(|s| s.pointer("/channels/f/restarts").and_then(serde_json::Value::as_u64))
            .is_some_and(|n| n >= 1)
    });
    assert!(restarted, "{:?}", read_status(home.path()));
    let count = sent_texts().len();
    WIRE.posts.0.send(("4".into(), "again".into())).unwrap();
    assert!(wait_until(WAIT, || sent_texts()[count..].iter().any(|t| t == "echo: again")), "{:?}", sent_texts());

    drop(stop_tx);
    assert_eq!(ended.recv_timeout(WAIT), Ok(true), "the daemon stops cleanly, in bounded time");
}
