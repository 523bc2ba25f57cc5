//! The Discord gateway session as a pure state machine: given what happened (socket opened,
//! a frame, the socket closed, time passed) it says what to do (connect where and when,
//! Identify or Resume, heartbeat, close, hand a dispatch on, park). No I/O and no clock of its
//! own, so every rule of the lifecycle is a table test.
//!
//! The rules (platform-protocols.md §4.4): heartbeat every `heartbeat_interval`, the first
//! after a random fraction of it; no ACK before the next beat is due means a zombie
//! connection: close with 4000 (never 1000/1001, which end the session) and resume. Resume
//! on `resume_gateway_url` with the last sequence after op 7, op 9 `d:true`, a drop or a
//! resumable close code; Identify anew on the original URL after op 9 `d:false` (1–5 s
//! later) or a close that ends the session (4007, 4009). Close codes that no retry can fix
//! (bad token, intents, sharding, version) park the channel with what to do. A socket that
//! opens but brings no Hello, or no READY/RESUMED, within [`HANDSHAKE_WAIT`] is closed and
//! tried again like a zombie: a proxy or a broken gateway must not leave the bot deaf.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::wire::{self, GatewayEvent};

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The socket asked for by [`Action::Connect`] is open.
    Connected,
    /// A frame arrived.
    Frame(GatewayEvent),
    /// The socket closed: by the server with a code, or dropped/failed to open (`None`).
    Closed { code: Option<u16>, reason: String },
    /// Time passed (the reader's deadline expired).
    Tick,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a socket to `url` (query already added) after waiting `after`.
    Connect {
        url: String,
        after: Duration,
    },
    /// Close the current socket with `code`; no [`Input::Closed`] is expected for it.
    Close {
        code: u16,
    },
    Identify,
    Resume {
        session_id: String,
        seq: u64,
    },
    Heartbeat {
        seq: Option<u64>,
    },
    /// An event for the adapter (READY and RESUMED included).
    Dispatch {
        name: String,
        data: Value,
    },
    /// The session ended and a new one will be identified: events in between are lost on the
    /// gateway (the adapter fetches them over REST once READY comes).
    SessionLost,
    /// Stop for good: no retry can help. The reason says what the person must do.
    Park {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the socket of a Connect.
    Connecting,
    /// Socket open, waiting for Hello.
    AwaitingHello,
    /// Identify or Resume sent, waiting for READY or RESUMED.
    Handshaking,
    Running,
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    id: String,
    resume_url: String,
}

/// One bot's gateway session.
#[derive(Debug)]
pub struct Gateway {
    /// `GET /gateway/bot`'s URL with the query, for Identify.
    identify_url: String,
    channel: String,
    phase: Phase,
    session: Option<Session>,
    seq: Option<u64>,
    interval: Option<Duration>,
    next_beat: Option<Instant>,
    awaiting_ack: bool,
    /// When the current socket must have brought READY or RESUMED (set when it opens).
    handshake_due: Option<Instant>,
    /// [`HANDSHAKE_WAIT`], shorter in tests.
    handshake_wait: Duration,
    /// Connections in a row that ended before READY/RESUMED, for the reconnect delay.
    failures: u32,
    /// A random number source (tests pin it).
    random: fn() -> u64,
}

/// Longest wait between reconnects.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long an open socket may take to bring Hello and then READY or RESUMED (Discord sends
/// Hello at once and READY within seconds).
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

impl Gateway {
    pub fn new(identify_url: String, channel: &str) -> Gateway {
        Gateway::with_random(identify_url, channel, || getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15))
    }

    pub fn with_random(identify_url: String, channel: &str, random: fn() -> u64) -> Gateway {
        Gateway {
            identify_url,
            channel: channel.to_string(),
            phase: Phase::Connecting,
            session: None,
            seq: None,
            interval: None,
            next_beat: None,
            awaiting_ack: false,
            handshake_due: None,
            handshake_wait: HANDSHAKE_WAIT,
            failures: 0,
            random,
        }
    }

    /// The same machine with another handshake deadline (tests shorten it).
    pub fn with_handshake_wait(mut self, wait: Duration) -> Gateway {
        self.handshake_wait = wait;
        self
    }

    /// The first action: connect to the identify URL now.
    pub fn start(&mut self) -> Vec<Action> {
        self.phase = Phase::Connecting;
        vec![Action::Connect { url: self.identify_url.clone(), after: Duration::ZERO }]
    }

    /// When the next [`Input::Tick`] is needed (the next heartbeat or the handshake deadline).
    pub fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingHello => self.handshake_due,
            Phase::Handshaking => [self.next_beat, self.handshake_due].into_iter().flatten().min(),
            Phase::Running => self.next_beat,
            Phase::Connecting | Phase::Parked => None,
        }
    }

    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.phase == Phase::Parked
    }

    /// The last sequence number seen.
    #[cfg(test)]
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if self.phase == Phase::Parked {
            return Vec::new();
        }
        match input {
            Input::Connected => {
                self.phase = Phase::AwaitingHello;
                self.next_beat = None;
                self.awaiting_ack = false;
                self.handshake_due = Some(now + self.handshake_wait);
                Vec::new()
            }
            Input::Frame(frame) => self.frame(frame, now),
            Input::Closed { code, reason } => self.closed(code, &reason),
            Input::Tick => self.tick(now),
        }
    }

    fn frame(&mut self, frame: GatewayEvent, now: Instant) -> Vec<Action> {
        match frame {
            GatewayEvent::Hello { heartbeat_interval } => {
                self.interval = Some(heartbeat_interval);
                // First beat after a random fraction of the interval, so that many clients
                // reconnecting together do not beat together.
                let fraction = (self.random)() % 1000;
                self.next_beat = Some(now + heartbeat_interval.mul_f64(fraction as f64 / 1000.0));
                self.awaiting_ack = false;
                self.phase = Phase::Handshaking;
                match (&self.session, self.seq) {
                    (Some(s), Some(seq)) => vec![Action::Resume { session_id: s.id.clone(), seq }],
                    _ => vec![Action::Identify],
                }
            }
            GatewayEvent::HeartbeatAck => {
                self.awaiting_ack = false;
                Vec::new()
            }
            GatewayEvent::HeartbeatRequest => vec![Action::Heartbeat { seq: self.seq }],
            GatewayEvent::Reconnect => self.reconnect(),
            GatewayEvent::InvalidSession { resumable: true } if self.session.is_some() => self.reconnect(),
            GatewayEvent::InvalidSession { .. } => {
                // Documented wait before a fresh Identify: a random 1–5 s.
                let wait = Duration::from_millis(1000 + (self.random)() % 4001);
                let mut actions = self.forget_session();
                actions.push(Action::Close { code: 1000 });
                actions.push(Action::Connect { url: self.identify_url.clone(), after: wait });
                self.phase = Phase::Connecting;
                actions
            }
            GatewayEvent::Dispatch { seq, name, data } => {
                if let Some(s) = seq {
                    self.seq = Some(self.seq.map_or(s, |old| old.max(s)));
                }
                match name.as_str() {
                    // Before Hello there is no heartbeat yet: a READY (from a broken gateway)
                    // is handed on, but the handshake is not over and its deadline stands.
                    "READY" | "RESUMED" if self.phase == Phase::AwaitingHello => {}
                    "READY" => {
                        if let Some(ready) = wire::parse_ready(&data) {
                            self.session = Some(Session {
                                id: ready.session_id,
                                resume_url: wire::gateway_url(&ready.resume_gateway_url),
                            });
                        }
                        self.phase = Phase::Running;
                        self.failures = 0;
                    }
                    "RESUMED" => {
                        self.phase = Phase::Running;
                        self.failures = 0;
                    }
                    _ => {}
                }
                vec![Action::Dispatch { name, data }]
            }
            GatewayEvent::Other { .. } => Vec::new(),
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        let handshaking = matches!(self.phase, Phase::AwaitingHello | Phase::Handshaking);
        if handshaking && self.handshake_due.is_some_and(|due| now >= due) {
            let waited = if self.phase == Phase::AwaitingHello { "Hello" } else { "READY or RESUMED" };
            log::warn!(target: self.channel.as_str(), "no {waited} from the Discord gateway within {} ms of connecting; reconnecting", self.handshake_wait.as_millis());
            return self.reconnect();
        }
        if self.phase == Phase::AwaitingHello {
            return Vec::new(); // No interval yet: a beat from an earlier socket is not due here.
        }
        let (Some(due), Some(interval)) = (self.next_beat, self.interval) else { return Vec::new() };
        if now < due {
            return Vec::new();
        }
        if self.awaiting_ack {
            // No ACK for the last beat: a zombie connection. Resume on a fresh one.
            log::warn!(target: self.channel.as_str(), "no heartbeat ACK from the Discord gateway within {} ms; reconnecting", interval.as_millis());
            return self.reconnect();
        }
        self.awaiting_ack = true;
        self.next_beat = Some(now + interval);
        vec![Action::Heartbeat { seq: self.seq }]
    }

    fn closed(&mut self, code: Option<u16>, reason: &str) -> Vec<Action> {
        if let Some(code) = code
            && let Some(what) = fatal(code)
        {
            self.phase = Phase::Parked;
            let said = if reason.is_empty() { String::new() } else { format!(": {reason}") };
            return vec![Action::Park {
                reason: format!("the Discord gateway closed with {code}{said}. {what} (channel \"{}\")", self.channel),
            }];
        }
        self.failures = self.failures.saturating_add(1);
        match code {
            // The session is gone on the server: a new one.
            Some(4007 | 4009) => {
                let mut actions = self.forget_session();
                actions.push(Action::Connect { url: self.identify_url.clone(), after: self.delay() });
                self.phase = Phase::Connecting;
                actions
            }
            _ => {
                let url = self.resume_target();
                self.phase = Phase::Connecting;
                let after = if code == Some(4008) { self.delay().max(Duration::from_secs(5)) } else { self.delay() };
                vec![Action::Connect { url, after }]
            }
        }
    }

    /// Close the current socket and connect again (resume when a session exists).
    fn reconnect(&mut self) -> Vec<Action> {
        self.failures = self.failures.saturating_add(1);
        let url = self.resume_target();
        self.phase = Phase::Connecting;
        // 4000: "unknown error" keeps the session resumable; 1000/1001 would end it.
        vec![Action::Close { code: 4000 }, Action::Connect { url, after: self.delay() }]
    }

    fn resume_target(&self) -> String {
        match (&self.session, self.seq) {
            (Some(s), Some(_)) => s.resume_url.clone(),
            _ => self.identify_url.clone(),
        }
    }

    fn forget_session(&mut self) -> Vec<Action> {
        let had = self.session.take().is_some();
        self.seq = None;
        if had { vec![Action::SessionLost] } else { Vec::new() }
    }

    /// No wait for the first reconnect; then doubling from 1 s up to a minute, with jitter, so
    /// a broken gateway cannot make us burn the 1000 identifies a day.
    fn delay(&self) -> Duration {
        if self.failures <= 1 {
            return Duration::ZERO;
        }
        let full = Duration::from_secs(1).saturating_mul(1 << (self.failures - 2).min(6)).min(MAX_DELAY);
        let quarter = full.as_millis() as u64 / 4;
        let cut = if quarter == 0 { 0 } else { (self.random)() % quarter };
        full - Duration::from_millis(cut)
    }
}

/// What the person must do after a close code that no reconnect can fix; `None` for codes
/// that allow a reconnect.
pub fn fatal(code: u16) -> Option<&'static str> {
    Some(match code {
        4004 => "Discord rejected the bot token (authentication failed): fix \"token\" in the config",
        4010 => "Invalid shard sent to Discord",
        4011 => "This bot is in too many servers for one connection (sharding required), which tether does not do",
        4012 => "Discord refused the gateway API version",
        4013 => "Discord refused the intents tether asked for (invalid intents)",
        4014 => {
            "Enable \"Message Content Intent\" for the bot: Discord Developer Portal → your application → Bot → \
             Privileged Gateway Intents, then restart tether"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "ws://start/?v=10&encoding=json";
    const RESUME_URL: &str = "ws://resume/?v=10&encoding=json";

    fn half() -> u64 {
        500 // 500 ‰ of the interval; 1000 + 500 ms for invalid-session waits
    }

    fn hello() -> Input {
        Input::Frame(GatewayEvent::Hello { heartbeat_interval: Duration::from_millis(1000) })
    }

    fn dispatch(seq: u64, name: &str, data: Value) -> Input {
        Input::Frame(GatewayEvent::Dispatch { seq: Some(seq), name: name.into(), data })
    }

    fn ready() -> Input {
        dispatch(
            1,
            "READY",
            json!({"user": {"id": "42", "username": "bot"}, "session_id": "S", "resume_gateway_url": "ws://resume"}),
        )
    }

    /// A gateway that is connected, identified and READY at `t0`, with its actions so far.
    fn running(t0: Instant) -> (Gateway, Vec<Action>) {
        let mut g = Gateway::with_random(URL.into(), "dc", half);
        let mut all = g.start();
        all.extend(g.step(Input::Connected, t0));
        all.extend(g.step(hello(), t0));
        all.extend(g.step(ready(), t0));
        (g, all)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn identify_then_ready_and_jittered_first_beat() {
        let t0 = Instant::now();
        let (g, actions) = running(t0);
        assert_eq!(actions[0], Action::Connect { url: URL.into(), after: Duration::ZERO });
        assert_eq!(actions[1], Action::Identify);
        assert!(matches!(&actions[2], Action::Dispatch { name, .. } if name == "READY"));
        assert_eq!(g.next_wake(), Some(t0 + ms(500)));
        assert_eq!(g.seq(), Some(1));
    }

    #[test]
    fn heartbeats_follow_the_interval_and_acks() {
        let t0 = Instant::now();
        let (mut g, _) = running(t0);
        // (time after t0, input, expected actions)
        let script: Vec<(u64, Input, Vec<Action>)> = vec![
            (100, Input::Tick, vec![]),
            (500, Input::Tick, vec![Action::Heartbeat { seq: Some(1) }]),
            (600, Input::Frame(GatewayEvent::HeartbeatAck), vec![]),
            (
                700,
                dispatch(2, "MESSAGE_CREATE", json!({})),
                vec![Action::Dispatch { name: "MESSAGE_CREATE".into(), data: json!({}) }],
            ),
            // Server asks: beat at once, with the latest sequence.
            (800, Input::Frame(GatewayEvent::HeartbeatRequest), vec![Action::Heartbeat { seq: Some(2) }]),
            (1499, Input::Tick, vec![]),
            (1500, Input::Tick, vec![Action::Heartbeat { seq: Some(2) }]),
            (1600, Input::Frame(GatewayEvent::HeartbeatAck), vec![]),
            (2500, Input::Tick, vec![Action::Heartbeat { seq: Some(2) }]),
            // No ACK before the next beat: zombie. Close resumably, resume on the resume URL.
            (
                3500,
                Input::Tick,
                vec![Action::Close { code: 4000 }, Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }],
            ),
            (3600, Input::Connected, vec![]),
            (3600, hello(), vec![Action::Resume { session_id: "S".into(), seq: 2 }]),
            (
                3700,
                dispatch(3, "MESSAGE_CREATE", json!({"replayed": true})),
                vec![Action::Dispatch { name: "MESSAGE_CREATE".into(), data: json!({"replayed": true}) }],
            ),
            (
                3800,
                dispatch(4, "RESUMED", json!({})),
                vec![Action::Dispatch { name: "RESUMED".into(), data: json!({}) }],
            ),
            (4100, Input::Tick, vec![Action::Heartbeat { seq: Some(4) }]),
        ];
        for (at, input, expected) in script {
            assert_eq!(g.step(input.clone(), t0 + ms(at)), expected, "at {at} ms: {input:?}");
        }
    }

    #[test]
    fn a_socket_without_hello_or_ready_is_tried_again_not_waited_on_forever() {
        let t0 = Instant::now();
        let mut g = Gateway::with_random(URL.into(), "dc", half);
        g.start();
        let wait = HANDSHAKE_WAIT.as_millis() as u64;
        let again = |after| vec![Action::Close { code: 4000 }, Action::Connect { url: URL.into(), after }];
        // (time after t0, input, expected actions, next wake after it)
        let script: Vec<(u64, Input, Vec<Action>, Option<u64>)> = vec![
            // A socket that opens and says nothing.
            (0, Input::Connected, vec![], Some(wait)),
            // A READY before Hello is handed on but ends nothing: there is no heartbeat yet.
            (10, ready(), vec![], Some(wait)),
            (wait - 1, Input::Tick, vec![], Some(wait)),
            (wait, Input::Tick, again(Duration::ZERO), None),
            // The next one says Hello, beats are answered, but READY never comes.
            (wait + 100, Input::Connected, vec![], Some(2 * wait + 100)),
            (wait + 100, hello(), vec![Action::Identify], Some(wait + 600)),
            (wait + 600, Input::Tick, vec![Action::Heartbeat { seq: Some(1) }], Some(wait + 1600)),
            (wait + 700, Input::Frame(GatewayEvent::HeartbeatAck), vec![], Some(wait + 1600)),
            (2 * wait + 100, Input::Tick, again(ms(1000)), None),
            // The third is READY in time: from then on only heartbeats set the clock.
            (2 * wait + 1200, Input::Connected, vec![], Some(3 * wait + 1200)),
            (2 * wait + 1200, hello(), vec![Action::Identify], Some(2 * wait + 1700)),
            (2 * wait + 1300, ready(), vec![], Some(2 * wait + 1700)),
        ];
        for (at, input, expected, wake) in script {
            let actions = g.step(input.clone(), t0 + ms(at));
            let actions: Vec<Action> = actions.into_iter().filter(|a| !matches!(a, Action::Dispatch { .. })).collect();
            assert_eq!(actions, expected, "at {at} ms: {input:?}");
            assert_eq!(g.next_wake(), wake.map(|w| t0 + ms(w)), "wake after {at} ms: {input:?}");
        }
        // Past the handshake deadline of the socket that did become READY: beats, no reconnect.
        assert_eq!(g.step(Input::Tick, t0 + ms(3 * wait + 1300)), vec![Action::Heartbeat { seq: Some(1) }]);
    }

    #[test]
    fn lifecycle_ops_and_close_codes() {
        let resume =
            || vec![Action::Close { code: 4000 }, Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }];
        let reidentify = vec![
            Action::SessionLost,
            Action::Close { code: 1000 },
            Action::Connect { url: URL.into(), after: ms(1500) },
        ];
        let cases: Vec<(&str, Input, Vec<Action>)> = vec![
            ("op 7", Input::Frame(GatewayEvent::Reconnect), resume()),
            ("op 9 true", Input::Frame(GatewayEvent::InvalidSession { resumable: true }), resume()),
            ("op 9 false", Input::Frame(GatewayEvent::InvalidSession { resumable: false }), reidentify),
            (
                "drop",
                Input::Closed { code: None, reason: "reset".into() },
                vec![Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }],
            ),
            (
                "4000",
                Input::Closed { code: Some(4000), reason: String::new() },
                vec![Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }],
            ),
            (
                "1001",
                Input::Closed { code: Some(1001), reason: String::new() },
                vec![Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }],
            ),
            (
                "4008",
                Input::Closed { code: Some(4008), reason: String::new() },
                vec![Action::Connect { url: RESUME_URL.into(), after: Duration::from_secs(5) }],
            ),
            (
                "4009",
                Input::Closed { code: Some(4009), reason: "Session timed out".into() },
                vec![Action::SessionLost, Action::Connect { url: URL.into(), after: Duration::ZERO }],
            ),
            (
                "4007",
                Input::Closed { code: Some(4007), reason: String::new() },
                vec![Action::SessionLost, Action::Connect { url: URL.into(), after: Duration::ZERO }],
            ),
        ];
        for (name, input, expected) in cases {
            let t0 = Instant::now();
            let (mut g, _) = running(t0);
            assert_eq!(g.step(input, t0 + ms(10)), expected, "{name}");
            assert!(!g.is_parked(), "{name}");
            assert_eq!(g.next_wake(), None, "{name}: no heartbeats while connecting");
        }
    }

    #[test]
    fn after_a_lost_session_the_next_hello_identifies() {
        let t0 = Instant::now();
        let (mut g, _) = running(t0);
        g.step(Input::Frame(GatewayEvent::InvalidSession { resumable: false }), t0);
        g.step(Input::Connected, t0);
        assert_eq!(g.step(hello(), t0), vec![Action::Identify]);
        assert_eq!(g.seq(), None);
        // A failed resume: op 9 false answers our Resume; identify after the wait.
        let (mut g, _) = running(t0);
        g.step(Input::Frame(GatewayEvent::Reconnect), t0);
        g.step(Input::Connected, t0);
        assert_eq!(g.step(hello(), t0), vec![Action::Resume { session_id: "S".into(), seq: 1 }]);
        let actions = g.step(Input::Frame(GatewayEvent::InvalidSession { resumable: false }), t0);
        assert_eq!(actions[0], Action::SessionLost);
        assert!(
            matches!(&actions[2], Action::Connect { url, after } if url == URL && *after >= Duration::from_secs(1) && *after <= Duration::from_secs(5))
        );
        // op 9 true without a session to resume: identify as well.
        let mut fresh = Gateway::with_random(URL.into(), "dc", half);
        fresh.start();
        fresh.step(Input::Connected, t0);
        fresh.step(hello(), t0);
        let actions = fresh.step(Input::Frame(GatewayEvent::InvalidSession { resumable: true }), t0);
        assert!(
            matches!(&actions[..], [Action::Close { .. }, Action::Connect { url, .. }] if url == URL),
            "{actions:?}"
        );
    }

    #[test]
    fn fatal_close_codes_park_with_what_to_do() {
        for code in [4004, 4010, 4011, 4012, 4013, 4014] {
            let t0 = Instant::now();
            let (mut g, _) = running(t0);
            let actions = g.step(Input::Closed { code: Some(code), reason: "Disallowed intent(s).".into() }, t0);
            let [Action::Park { reason }] = &actions[..] else { panic!("{code}: {actions:?}") };
            assert!(reason.contains(&code.to_string()) && reason.contains("\"dc\""), "{reason}");
            assert!(g.is_parked());
            assert_eq!(g.step(Input::Tick, t0 + Duration::from_secs(100)), vec![]);
            assert_eq!(g.next_wake(), None);
        }
        assert!(fatal(4014).unwrap().contains("Message Content Intent"));
        assert!(fatal(4004).unwrap().contains("token"));
        for code in [1000, 1001, 4000, 4001, 4002, 4003, 4005, 4007, 4008, 4009] {
            assert_eq!(fatal(code), None, "{code}");
        }
    }

    #[test]
    fn repeated_failures_back_off_to_a_minute() {
        let t0 = Instant::now();
        let mut g = Gateway::with_random(URL.into(), "dc", || 0);
        g.start();
        let mut delays = Vec::new();
        for _ in 0..10 {
            let actions = g.step(Input::Closed { code: None, reason: "refused".into() }, t0);
            let [Action::Connect { after, url }] = &actions[..] else { panic!("{actions:?}") };
            assert_eq!(url, URL, "no session yet: identify URL");
            delays.push(after.as_secs());
        }
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // READY resets the streak.
        g.step(Input::Connected, t0);
        g.step(hello(), t0);
        g.step(ready(), t0);
        let actions = g.step(Input::Closed { code: None, reason: String::new() }, t0);
        assert_eq!(actions, vec![Action::Connect { url: RESUME_URL.into(), after: Duration::ZERO }]);
    }

    #[test]
    fn sequence_numbers_only_grow() {
        let t0 = Instant::now();
        let (mut g, _) = running(t0);
        g.step(dispatch(5, "X", json!(null)), t0);
        g.step(dispatch(3, "Y", json!(null)), t0);
        g.step(Input::Frame(GatewayEvent::Dispatch { seq: None, name: "Z".into(), data: json!(null) }), t0);
        assert_eq!(g.seq(), Some(5));
    }
}
