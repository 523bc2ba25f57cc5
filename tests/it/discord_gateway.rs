//! The Discord gateway link and REST client against the loopback fake: identify, heartbeats,
//! resume after op 7 / withheld ACKs / a dropped socket, re-identify after op 9, fatal close
//! codes that park without a reconnect loop, gap recovery after a lost session, rate limits.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde_json::json;
use tether::adapters::discord::inbound::{Delivery, Dispatcher, SentIds};
use tether::adapters::discord::link::{self, LinkEvent};
use tether::adapters::discord::rest::Rest;
use tether::adapters::discord::wire::RestFailure;

use crate::support::fake_discord::{BOT_ID, Command, FakeDiscord, TOKEN};
use crate::support::{TempDir, wait_until};

const WAIT: Duration = Duration::from_secs(10);

/// A link thread with a dispatcher: everything it reports comes out of `events`/`delivered`.
struct Link {
    events: Receiver<LinkEvent>,
    delivered: Receiver<Delivery>,
    _stop: Sender<()>,
    _home: TempDir,
}

fn start(fake: &FakeDiscord, token: &str) -> Link {
    let home = TempDir::new("discord-link");
    let rest = Arc::new(Rest::new(&fake.api_base(), token));
    let (stop_tx, stop) = bounded::<()>(0);
    let (events_tx, events) = unbounded();
    let (delivered_tx, delivered) = unbounded();
    let token = token.to_string();
    let media = home.path().join("media");
    thread::spawn(move || {
        let mut dispatcher = Dispatcher::new("dc", rest.clone(), Arc::new(SentIds::default()), media);
        link::run(&rest, &token, "dc", &stop, &mut |event| {
            dispatcher.on_event(&event, &mut |d| {
                let _ = delivered_tx.send(d);
            });
            let _ = events_tx.send(event);
        });
    });
    Link { events, delivered, _stop: stop_tx, _home: home }
}

impl Link {
    /// The next dispatch called `name` (others are skipped), within [`WAIT`].
    fn dispatch(&self, name: &str) -> Option<serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        while let Ok(event) = self.events.recv_deadline(deadline) {
            if let LinkEvent::Dispatch { name: n, data } = event
                && n == name
            {
                return Some(data);
            }
        }
        None
    }

    fn parked(&self) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while let Ok(event) = self.events.recv_deadline(deadline) {
            if let LinkEvent::Parked(reason) = event {
                return Some(reason);
            }
        }
        None
    }

    /// Texts of the messages delivered within `within`.
    fn texts(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut texts = Vec::new();
        while let Ok(d) = self.delivered.recv_deadline(deadline) {
            if let Delivery::Message(m) = d {
                texts.push(m.message.text);
            }
        }
        texts
    }

    fn next_text(&self) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while let Ok(d) = self.delivered.recv_deadline(deadline) {
            if let Delivery::Message(m) = d {
                return Some(m.message.text);
            }
        }
        None
    }
}

#[test]
fn identifies_with_the_intents_and_heartbeats_with_the_last_sequence() {
    let fake = FakeDiscord::start();
    fake.set_heartbeat_interval(200);
    let link = start(&fake, TOKEN);
    let ready = link.dispatch("READY").expect("READY");
    assert_eq!(ready["user"]["id"], BOT_ID);
    let identify = &fake.identifies()[0];
    assert_eq!(identify["intents"], 37377);
    assert_eq!(identify["token"], TOKEN);
    assert_eq!(fake.connections(), vec!["/?v=10&encoding=json".to_string()]);
    fake.dm("111", "hello");
    assert_eq!(link.next_text().as_deref(), Some("hello"));
    assert!(wait_until(WAIT, || fake.heartbeats().len() >= 3), "{:?}", fake.heartbeats());
    // After READY (s=1) and the DM (s=2), beats carry 2.
    assert_eq!(fake.heartbeats().last().unwrap().1, Some(2));
    // Our own messages and other bots' are not handed on.
    fake.bot_message(&FakeDiscord::dm_channel("111"), BOT_ID, "my own answer");
    fake.bot_message(&FakeDiscord::dm_channel("111"), "555", "another bot");
    fake.dm("111", "after the bots");
    assert_eq!(link.next_text().as_deref(), Some("after the bots"));
}

#[test]
fn the_server_can_ask_for_a_heartbeat_at_once() {
    let fake = FakeDiscord::start();
    fake.set_heartbeat_interval(60_000);
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    let before = fake.heartbeats().len();
    fake.command(Command::RequestHeartbeat);
    assert!(wait_until(Duration::from_secs(2), || fake.heartbeats().len() > before), "no heartbeat after op 1");
}

#[test]
fn reconnect_op_resumes_on_the_resume_url_and_missed_events_are_replayed() {
    let fake = FakeDiscord::start();
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    fake.dm("111", "before");
    assert_eq!(link.next_text().as_deref(), Some("before"));
    fake.command(Command::Reconnect);
    // Posted while the client reconnects: delivered by replay or live, once either way.
    fake.dm("111", "during");
    link.dispatch("RESUMED").expect("RESUMED");
    fake.dm("111", "after");
    let texts = link.texts(Duration::from_secs(2));
    assert_eq!(texts, vec!["during".to_string(), "after".to_string()]);
    let connections = fake.connections();
    assert_eq!(connections.len(), 2, "{connections:?}");
    assert_eq!(connections[1], "/resume/?v=10&encoding=json");
    assert_eq!(fake.resumes()[0]["session_id"], "session-1");
    assert_eq!(fake.resumes()[0]["seq"], 2);
    assert_eq!(fake.identifies().len(), 1, "resumed, not identified again");
    assert!(fake.client_closes().iter().all(|c| *c != 1000 && *c != 1001), "{:?}", fake.client_closes());
}

#[test]
fn withheld_acks_make_the_client_close_resumably_and_resume() {
    let fake = FakeDiscord::start();
    fake.set_heartbeat_interval(200);
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    fake.withhold_acks(true);
    assert!(wait_until(WAIT, || !fake.resumes().is_empty()), "no resume; closes {:?}", fake.client_closes());
    fake.withhold_acks(false);
    assert_eq!(fake.client_closes().first(), Some(&4000));
    link.dispatch("RESUMED").expect("RESUMED");
    assert_eq!(fake.identifies().len(), 1);
}

#[test]
fn a_dropped_socket_resumes() {
    let fake = FakeDiscord::start();
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    fake.command(Command::Drop);
    link.dispatch("RESUMED").expect("RESUMED");
    fake.dm("111", "still here");
    assert_eq!(link.next_text().as_deref(), Some("still here"));
    assert_eq!(fake.identifies().len(), 1);
}

#[test]
fn invalid_session_identifies_again_on_the_original_url() {
    let fake = FakeDiscord::start();
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    let started = Instant::now();
    fake.command(Command::InvalidSession(false));
    link.dispatch("READY").expect("second READY");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "identified again after only {waited:?}");
    assert_eq!(fake.identifies().len(), 2);
    assert_eq!(fake.connections()[1], "/?v=10&encoding=json");
    assert!(fake.resumes().is_empty());
}

#[test]
fn messages_posted_while_the_session_was_lost_are_fetched_once() {
    let fake = FakeDiscord::start();
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    fake.guild("2001", "111", "first", true);
    assert_eq!(link.next_text().as_deref(), Some("first"));
    // The session dies; two messages are posted that the gateway will never deliver.
    fake.expire_sessions();
    fake.guild_missed("2001", "111", "missed one", true);
    fake.guild_missed("2001", "222", "missed two", false);
    fake.command(Command::Drop);
    // Resume fails (op 9 false), a new session is identified, the gap is fetched over REST.
    let texts = link.texts(Duration::from_secs(8));
    assert_eq!(texts, vec!["missed one".to_string(), "missed two".to_string()]);
    assert_eq!(fake.resumes().len(), 1);
    assert_eq!(fake.identifies().len(), 2);
    let fetches: Vec<_> =
        fake.calls().into_iter().filter(|c| c.method == "GET" && c.path.contains("/messages?after=")).collect();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    // Once more: nothing new, nothing delivered twice.
    fake.expire_sessions();
    fake.command(Command::Drop);
    link.dispatch("READY").expect("third READY");
    assert_eq!(link.texts(Duration::from_millis(500)), Vec::<String>::new());
}

#[test]
fn disallowed_intents_park_with_what_to_do_and_no_reconnect_loop() {
    let fake = FakeDiscord::start();
    fake.refuse_intents();
    let link = start(&fake, TOKEN);
    let reason = link.parked().expect("parked");
    assert!(reason.contains("4014") && reason.contains("Message Content Intent"), "{reason}");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(fake.connections().len(), 1);
    assert_eq!(fake.identifies().len(), 1);
}

#[test]
fn a_bad_token_parks_before_and_on_the_gateway() {
    let fake = FakeDiscord::start();
    let link = start(&fake, "wrong-token");
    let reason = link.parked().expect("parked");
    assert!(reason.contains("token") && reason.contains("\"dc\""), "{reason}");
    assert!(fake.connections().is_empty());
    // The gateway's own 4004 also parks.
    let link = start(&fake, TOKEN);
    link.dispatch("READY").expect("READY");
    fake.command(Command::Close(4004, "Authentication failed."));
    let reason = link.parked().expect("parked on 4004");
    assert!(reason.contains("4004"), "{reason}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(fake.connections().len(), 1);
}

#[test]
fn rest_honours_buckets_and_429s() {
    let fake = FakeDiscord::start();
    let rest = Rest::new(&fake.api_base(), TOKEN);
    let body = json!({"content": "hi", "allowed_mentions": {"parse": []}});
    // Eight sends into a bucket of five per second: the client waits instead of being refused.
    let started = Instant::now();
    let mut sent = 0;
    while sent < 8 {
        match rest.create_message("3001", &body) {
            Ok(id) => {
                assert!(!id.is_empty());
                sent += 1;
            }
            Err(RestFailure::RateLimited(d)) => {
                // At most the bucket's window, plus the margin added to its reset.
                assert!(d <= Duration::from_millis(1050), "{d:?}");
                thread::sleep(d);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(started.elapsed() < WAIT);
    }
    assert_eq!(fake.violations(), 0, "sent into an empty bucket");
    assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());
    // A 429 from the server: its retry_after comes back, and the route waits that long.
    fake.throttle_next("/channels/3002/typing", 0.75, false);
    let asked = Instant::now();
    assert_eq!(rest.typing("3002"), Err(RestFailure::RateLimited(Duration::from_millis(750))));
    match rest.typing("3002") {
        // Held until 750 ms after the 429 came back, however long these calls took.
        Err(RestFailure::RateLimited(d)) => {
            assert!(d + asked.elapsed() >= Duration::from_millis(750), "{d:?} after {:?}", asked.elapsed())
        }
        other => panic!("not held back: {other:?}"),
    }
    // A global 429 holds every route.
    fake.throttle_next("/channels/3003/typing", 1.0, true);
    assert!(matches!(rest.typing("3003"), Err(RestFailure::GlobalRateLimited(_))));
    assert!(matches!(rest.create_message("3004", &body), Err(RestFailure::GlobalRateLimited(_))));
    // Too long is refused as Discord does.
    let long = json!({"content": "x".repeat(2001)});
    thread::sleep(Duration::from_millis(1100));
    assert!(matches!(rest.create_message("3005", &long), Err(RestFailure::Rejected(e)) if e.contains("50035")));
}
