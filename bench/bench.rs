//! Benchmark: the release binary against the loopback fake Bot API and the demo agent.
//! Prints binary size, idle memory of the tether process, the time from a message queued on
//! the fake to its reply arriving, and pacing as one chat sees it (a long answer's parts, a
//! chat writing again as soon as each reply arrives). Run through `bench/run.sh`.

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;

use support::fake_telegram::{FakeTelegram, TOKEN};
use support::{Service, TempDir, demo_agent, tether_bin};

fn main() {
    let messages: usize = std::env::var("BENCH_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let bin = tether_bin();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("binary: {bin}");
    println!("binary size: {size} bytes ({:.2} MB)", size as f64 / 1e6);

    let fake = FakeTelegram::start();
    let home = TempDir::new("bench");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"bench": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "senderPolicy": "open"}}
    }));
    let service = Service::start_quiet(&home);
    assert!(
        service.wait_for_log("connected as @", Duration::from_secs(20)),
        "service did not connect:\n{}",
        service.log()
    );

    // Warm up one session, then let the process settle before reading its memory.
    fake.send_dm(111, "warm up");
    fake.next_text_to(111, Duration::from_secs(10)).expect("no reply to the warm-up message");
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = memory(service.pid());
    println!(
        "idle memory of tether (pid {}): VmRSS {rss} kB ({:.2} MiB), VmHWM {hwm} kB",
        service.pid(),
        rss as f64 / 1024.0
    );

    // Telegram allows about one message a second per chat on average (tether: a burst of 4,
    // then one a second) and 30 a second per bot, and tether paces itself to match. So each message comes from another chat, 100 ms apart: the figure
    // is the time through tether and the agent, not the pacing.
    let mut times = Vec::with_capacity(messages);
    for n in 0..messages {
        let chat = 10_000 + n as i64;
        let text = format!("message {n}");
        let start = Instant::now();
        fake.send_dm(chat, &text);
        let reply = fake.next_text_to(chat, Duration::from_secs(10)).expect("a reply did not arrive within 10 s");
        times.push(start.elapsed());
        assert_eq!(reply, format!("echo: {text}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "round trip over {messages} messages: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(times[times.len() - 1])
    );
    let (rss, hwm) = memory(service.pid());
    println!("after the run: VmRSS {rss} kB, VmHWM {hwm} kB");

    // Pacing, as one chat sees it: the parts of a long answer, then a person (or a script)
    // writing again as soon as each reply arrives.
    let chat = 9_000;
    let end = "other words that script the demo agent.";
    fake.send_dm(chat, "long");
    let sent = fake
        .wait_delivered(Duration::from_secs(30), |sent| {
            sent.iter().any(|s| s.chat_id == json!(chat) && s.visible.contains(end))
        })
        .expect("the long answer did not arrive within 30 s");
    let parts: Vec<Instant> = sent.iter().filter(|s| s.chat_id == json!(chat)).map(|s| s.at).collect();
    if let (Some(first), Some(last)) = (parts.first(), parts.last()) {
        println!("a long answer in {} parts, first to last part: {:.1} ms", parts.len(), ms(*last - *first));
    }
    // Another chat, so its bucket is full: the first 4 replies go at once, then one a second.
    let chat = 9_001;
    let mut times = Vec::new();
    for n in 0..20 {
        let text = format!("again {n}");
        let start = Instant::now();
        fake.send_dm(chat, &text);
        let echo = format!("echo: {text}");
        fake.wait_delivered(Duration::from_secs(10), |sent| sent.iter().any(|s| s.visible == echo))
            .expect("a reply did not arrive within 10 s");
        times.push(start.elapsed());
    }
    let first_four = times[..4].iter().map(|d| ms(*d)).fold(0.0, f64::max);
    times.sort();
    println!(
        "one chat writing as soon as each reply arrives, 20 messages: median {:.1} ms, slowest of the first 4 {:.1} ms",
        ms(times[times.len() / 2]),
        first_four
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (VmRSS, VmHWM) in kB from /proc.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
