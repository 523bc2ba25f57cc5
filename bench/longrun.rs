//! Long-run check: many messages through tether against the loopback fake Bot API and the
//! demo agent, with faults injected at random (getUpdates 502/409/dropped connection,
//! sendMessage 502/429/dropped connection, agent crashes, clean restarts of tether), then the
//! counts: every message must be answered exactly once. Run through `bench/longrun.sh`.
//!
//! Each simulated user has one message in flight at a time, so every reply to a chat can be
//! attributed: an echo names its message; an agent crash's notice answers the one in flight.
//!
//! Environment: LONGRUN_MESSAGES (default 10000), LONGRUN_USERS (8), LONGRUN_FAULTS (100),
//! LONGRUN_RESTARTS (3, SIGTERM then start), LONGRUN_KILLS (0, `kill -9` then start: an
//! answer in flight at that moment may be sent twice, as Telegram has no idempotent send),
//! LONGRUN_SEED.

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use support::fake_telegram::{FakeTelegram, Fault, TOKEN};
use support::{Service, TempDir, demo_agent, tether_bin};

/// How long one message may wait for its answer before it is counted missing.
const ANSWER_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    Poll502,
    Poll409,
    PollDrop,
    Send502,
    Send429,
    SendDrop,
    AgentCrash,
    Restart,
    Kill9,
}

/// xorshift64*: reproducible with LONGRUN_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One user's message in flight, and since when.
#[derive(Default)]
struct User {
    in_flight: Option<(u64, Instant)>,
}

#[derive(Default)]
struct Counts {
    sent: u64,
    echoed: u64,
    crash_notices: u64,
    missing: u64,
    duplicates: u64,
    unexpected: Vec<String>,
}

fn main() {
    let messages = env("LONGRUN_MESSAGES", 10_000);
    let users = env("LONGRUN_USERS", 8).max(1);
    let faults = env("LONGRUN_FAULTS", 100);
    let restarts = env("LONGRUN_RESTARTS", 3);
    let kills = env("LONGRUN_KILLS", 0);
    let seed = env("LONGRUN_SEED", getrandom::u64().unwrap_or(1)).max(1);
    println!("binary: {}", tether_bin());
    println!(
        "messages {messages}, users {users}, random faults {faults}, restarts {restarts}, kill -9 {kills}, seed {seed}"
    );

    // The fault plan: which message number triggers which fault.
    let mut rng = Rng(seed);
    let kinds = [
        FaultKind::Poll502,
        FaultKind::Poll409,
        FaultKind::PollDrop,
        FaultKind::Send502,
        FaultKind::Send429,
        FaultKind::SendDrop,
        FaultKind::AgentCrash,
    ];
    let mut plan: BTreeMap<u64, FaultKind> = BTreeMap::new();
    let mut place = |kind, rng: &mut Rng| {
        for _ in 0..100 {
            let at = 1 + rng.below(messages.saturating_sub(1).max(1));
            if let std::collections::btree_map::Entry::Vacant(slot) = plan.entry(at) {
                slot.insert(kind);
                return;
            }
        }
    };
    for _ in 0..faults {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        place(kind, &mut rng);
    }
    for _ in 0..restarts {
        place(FaultKind::Restart, &mut rng);
    }
    for _ in 0..kills {
        place(FaultKind::Kill9, &mut rng);
    }

    let fake = FakeTelegram::start();
    let home = TempDir::new("longrun");
    let allowed: Vec<String> = (0..users).map(|u| (1001 + u).to_string()).collect();
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"bench": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": allowed}}
    }));
    let mut service = Service::start_quiet(&home);
    assert!(service.wait_for_log("connected as @", Duration::from_secs(30)), "no start:\n{}", service.log());

    let started = Instant::now();
    let mut injected: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut state: Vec<User> = (0..users).map(|_| User::default()).collect();
    let mut counts = Counts::default();
    let mut answered: BTreeMap<u64, u32> = BTreeMap::new();
    let mut next_number: u64 = 0;
    let mut last_progress = Instant::now();
    let mut reported: u64 = 0;
    loop {
        // Send: every idle user takes the next message number.
        for (u, user) in state.iter_mut().enumerate() {
            if user.in_flight.is_some() || next_number >= messages {
                continue;
            }
            let n = next_number;
            next_number += 1;
            let mut text = format!("m{n} from user {u}");
            if let Some(kind) = plan.get(&n).copied() {
                *injected.entry(kind).or_default() += 1;
                match kind {
                    FaultKind::Poll502 => fake.fail_next("getUpdates", Fault::bad_gateway()),
                    FaultKind::Poll409 => fake.fail_next("getUpdates", Fault::conflict()),
                    FaultKind::PollDrop => fake.fail_next("getUpdates", Fault::Drop),
                    FaultKind::Send502 => fake.fail_next("sendMessage", Fault::bad_gateway()),
                    FaultKind::Send429 => fake.fail_next("sendMessage", Fault::too_many(1)),
                    FaultKind::SendDrop => fake.fail_next("sendMessage", Fault::Drop),
                    FaultKind::AgentCrash => text.push_str(" crash"),
                    FaultKind::Restart | FaultKind::Kill9 => {}
                }
                if matches!(kind, FaultKind::Poll502 | FaultKind::Poll409 | FaultKind::PollDrop) {
                    fake.interrupt_polls();
                }
            }
            fake.send_dm(1001 + u as i64, &text);
            user.in_flight = Some((n, Instant::now()));
            counts.sent += 1;
            // Restarts happen with this message already queued on the fake.
            if let Some(kind @ (FaultKind::Restart | FaultKind::Kill9)) = plan.get(&n).copied() {
                if kind == FaultKind::Restart {
                    service.signal("TERM");
                    assert_eq!(
                        service.wait_exit(Duration::from_secs(10)),
                        Some(0),
                        "no clean stop:\n{}",
                        service.log()
                    );
                } else {
                    service.kill_hard();
                }
                service = Service::start_quiet(&home);
            }
        }
        // Receive one reply (or time out briefly) and attribute it.
        if let Some(call) = fake.next_call("sendMessage", Duration::from_millis(200)) {
            last_progress = Instant::now();
            let chat = call.body["chat_id"].as_i64().unwrap_or(0);
            let text = call.body["text"].as_str().unwrap_or("").to_string();
            let u = (chat - 1001) as usize;
            let Some(user) = state.get_mut(u) else {
                counts.unexpected.push(format!("chat {chat}: {text}"));
                continue;
            };
            let number = if let Some(rest) = text.strip_prefix("echo: m") {
                rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok())
            } else if text.starts_with("The agent stopped") {
                user.in_flight.map(|(n, _)| n)
            } else {
                counts.unexpected.push(format!("chat {chat}: {text}"));
                None
            };
            let Some(number) = number else { continue };
            let times = answered.entry(number).or_default();
            *times += 1;
            if *times > 1 {
                counts.duplicates += 1;
                continue;
            }
            if text.starts_with("echo:") {
                counts.echoed += 1;
            } else {
                counts.crash_notices += 1;
            }
            if user.in_flight.is_some_and(|(n, _)| n == number) {
                user.in_flight = None;
            }
        }
        // Give up on messages that waited too long (counted missing, not retried).
        for user in state.iter_mut() {
            if let Some((n, since)) = user.in_flight
                && since.elapsed() > ANSWER_LIMIT
            {
                eprintln!("message m{n} got no answer within {} s", ANSWER_LIMIT.as_secs());
                user.in_flight = None;
            }
        }
        let done = next_number >= messages && state.iter().all(|u| u.in_flight.is_none());
        if done || last_progress.elapsed() > ANSWER_LIMIT {
            break;
        }
        let answered_now = counts.echoed + counts.crash_notices;
        if answered_now >= reported + 1000 {
            reported = answered_now / 1000 * 1000;
            println!("  {reported} answered after {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    // Late duplicates would show up now.
    while let Some(call) = fake.next_call("sendMessage", Duration::from_secs(3)) {
        let text = call.body["text"].as_str().unwrap_or("");
        match text.strip_prefix("echo: m").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if answered.contains_key(&n) => counts.duplicates += 1,
            _ => counts.unexpected.push(text.to_string()),
        }
    }
    counts.missing = (0..counts.sent).filter(|n| !answered.contains_key(n)).count() as u64;
    let elapsed = started.elapsed();
    println!("elapsed: {:.1} s ({:.1} messages/s)", elapsed.as_secs_f64(), counts.sent as f64 / elapsed.as_secs_f64());
    println!("faults injected: {injected:?}");
    println!("sent:                     {}", counts.sent);
    println!("answered (agent's echo):  {}", counts.echoed);
    println!("answered (crash notice):  {}", counts.crash_notices);
    println!("answered exactly once:    {}", answered.values().filter(|t| **t == 1).count());
    println!("missing:                  {}", counts.missing);
    println!("duplicates:               {}", counts.duplicates);
    println!("unexpected texts:         {}", counts.unexpected.len());
    for text in counts.unexpected.iter().take(10) {
        println!("  {text}");
    }
    let journal = std::fs::read_to_string(home.path().join("journal/bench.jsonl")).unwrap_or_default();
    println!("journal lines left:       {}", journal.lines().count());
    let ok = counts.missing == 0 && counts.duplicates == 0 && counts.unexpected.is_empty();
    println!("{}", if ok { "OK: every message answered exactly once" } else { "FAILED" });
    if !ok {
        std::process::exit(1);
    }
}
