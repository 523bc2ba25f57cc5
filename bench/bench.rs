//! Benchmark: the release binary against the loopback fake Bot API, its own web chat and the
//! demo agent (which answers at once: no `--chunk-delay`, so the agent is not what is measured).
//! Prints, in one run: binary size; exec → first `getUpdates`; memory at start, after 10,000
//! messages and after a 2 MB answer (and how much of it is the binary's own file); CPU of the
//! tether process (not the agent) per 1,000 messages and per idle minute; reply latency for
//! one chat writing sequentially and for 50 users at once; throughput. Run through
//! `bench/run.sh` (about two minutes).
//!
//! Knobs (environment): BENCH_PACED (messages in one Telegram chat, each 1.5 s after the
//! previous answer, as a person writes; default 8), BENCH_SEQUENTIAL (messages in one
//! Telegram chat at machine speed, default 20),
//! BENCH_USERS (concurrent Telegram users, 50), BENCH_ROUNDS (messages per such user, 4),
//! BENCH_USER_RUNS (how many times the concurrent users write their ROUNDS messages: the
//! first run starts their conversations; the others, at the end, give the going rate as
//! their median; 5),
//! BENCH_WEB_MESSAGES (web chat messages for the memory run, 10000), BENCH_IDLE_SECS (10),
//! BENCH_HUGE (0: skip the 2 MB answer; for profiling), BENCH_SMAPS (1: also where the
//! memory is, the threads, and context switches and CPU µs per message by thread for the
//! concurrent users; 2: also each anonymous mapping). A glibc build restarts itself once
//! with its allocator tuned (src/malloc_tuning.rs); under a profiler such as valgrind set
//! TETHER_MALLOC=default, or the restarted process escapes the profiler.

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use support::fake_telegram::{FakeTelegram, TOKEN};
use support::{Service, TempDir, demo_agent, tether_bin};

/// Web chat sockets used for the 10,000 messages, each writing sequentially. All come from
/// 127.0.0.1, and the web chat serves at most 32 connections per address (the warm-up
/// socket stays open too).
const WEB_SOCKETS: usize = 30;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn main() {
    let paced = knob("BENCH_PACED", 8);
    let sequential = knob("BENCH_SEQUENTIAL", 20);
    let users = knob("BENCH_USERS", 50);
    let rounds = knob("BENCH_ROUNDS", 4);
    let runs = knob("BENCH_USER_RUNS", 5).max(1);
    let web_messages = knob("BENCH_WEB_MESSAGES", 10_000);
    let idle_secs = knob("BENCH_IDLE_SECS", 10) as u64;
    let bench_start = Instant::now();

    let bin = tether_bin();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("binary: {bin}");
    println!("size: {size} bytes ({:.2} MB)", size as f64 / 1e6);

    let fake = FakeTelegram::start();
    let home = TempDir::new("bench");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "bench": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "senderPolicy": "open"},
            "web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open"}
        }
    }));
    let exec = Instant::now();
    let mut service = Service::start_quiet(&home);
    let pid = service.pid();
    assert!(
        support::wait_until(Duration::from_secs(20), || fake.first_poll_at().is_some()),
        "no getUpdates within 20 s:\n{}",
        service.log()
    );
    let first_poll = fake.first_poll_at().map(|at| at.duration_since(exec)).unwrap_or_default();
    println!("exec → first getUpdates: {:.1} ms", ms(first_poll));
    assert!(
        service.wait_for_log("connected as @", Duration::from_secs(20))
            && service.wait_for_log("listening on http://", Duration::from_secs(20)),
        "service did not connect:\n{}",
        service.log()
    );
    let port = web_port(&service.log());

    // Warm up: one answer on each channel, then let the process settle.
    fake.send_dm(111, "warm up");
    fake.next_text_to(111, Duration::from_secs(10)).expect("no reply to the Telegram warm-up message");
    let mut warm = WebClient::connect(port, 0);
    warm.round_trip("warm up");
    std::thread::sleep(Duration::from_secs(2));
    print_memory("memory at start", pid);
    if knob("BENCH_SMAPS", 0) != 0 {
        println!("  threads: {}", thread_names(pid));
    }
    let (start_rss, _, _) = memory(pid);

    // Idle CPU: on-CPU time of every thread (ns, from schedstat) over a short idle spell.
    let before = thread_cpu_ns(pid);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let idle_ns = thread_cpu_ns(pid).saturating_sub(before);
    println!(
        "CPU per idle minute: {:.1} ms (measured over {idle_secs} s with one web chat socket open, scaled ×{:.0})",
        idle_ns as f64 / 1e6 * 60.0 / idle_secs as f64,
        60.0 / idle_secs as f64
    );

    // One Telegram chat where a person writes the next message a moment after each answer.
    let mut times = Vec::with_capacity(paced);
    for n in 0..paced {
        let text = format!("paced {n}");
        let start = Instant::now();
        fake.send_dm(400, &text);
        let reply = fake.next_text_to(400, Duration::from_secs(10)).expect("a reply did not arrive within 10 s");
        times.push(start.elapsed());
        assert_eq!(reply, format!("echo: {text}"));
        std::thread::sleep(Duration::from_millis(1500));
    }
    print_latency(&format!("Telegram, one chat, {paced} messages each 1.5 s after the answer"), &mut times);

    // One Telegram chat writing the next message as soon as the previous answer arrives:
    // after a burst of 4, one answer a second (Telegram's pace for one chat).
    let cpu = cpu_mark(pid);
    let mut times = Vec::with_capacity(sequential);
    for n in 0..sequential {
        let text = format!("sequential {n}");
        let start = Instant::now();
        fake.send_dm(500, &text);
        let reply = fake.next_text_to(500, Duration::from_secs(10)).expect("a reply did not arrive within 10 s");
        times.push(start.elapsed());
        assert_eq!(reply, format!("echo: {text}"));
    }
    let cpu = cpu_since(pid, &cpu);
    print_latency(
        &format!("Telegram, one chat, {sequential} messages at machine speed (burst of 4, then 1/s)"),
        &mut times,
    );
    println!(
        "  CPU per 1,000 messages: {:.0} ms (includes the idle time between replies)",
        cpu * 1e6 / sequential as f64
    );

    // Many Telegram users at once, each writing again as soon as its answer arrives. This
    // first run also starts each user's conversation (`session/new`, `sessions.json`), and
    // costs more per message (30–55% more with 4 messages a user, 2026-12-06).
    // Runs 2 to BENCH_USER_RUNS, after the memory figures (so that those are taken after the
    // same work whatever the knob), are the cost of a message in a conversation going on.
    users_run(&fake, pid, users, rounds, 1, runs);

    // The memory run: many messages through the web chat (no platform pacing there).
    web_run(port, pid, web_messages);
    std::thread::sleep(Duration::from_secs(2));
    print_memory(&format!("memory after {web_messages} messages (2 s later)"), pid);

    // One 2 MB answer.
    if knob("BENCH_HUGE", 1) != 0 {
        huge_answer(&mut warm, pid, start_rss);
    }
    // One run's CPU figure moves by a tenth or more on a shared machine: the median of the
    // runs in conversations going on is the figure to quote.
    let mut cpu_runs: Vec<f64> = (2..=runs).map(|run| users_run(&fake, pid, users, rounds, run, runs)).collect();
    if !cpu_runs.is_empty() {
        cpu_runs.sort_by(f64::total_cmp);
        let middle = cpu_runs.len() / 2;
        let median = if cpu_runs.len().is_multiple_of(2) {
            (cpu_runs[middle - 1] + cpu_runs[middle]) / 2.0
        } else {
            cpu_runs[middle]
        };
        let runs_ms: Vec<String> = cpu_runs.iter().map(|ms| format!("{ms:.0}")).collect();
        println!(
            "Telegram, {users} users at once, conversations going on: CPU per 1,000 messages {median:.0} ms (median of runs 2 to {runs}: {})",
            runs_ms.join(", ")
        );
    }
    drop(warm);
    // A graceful stop (SIGTERM), so that a profiler around tether writes its data.
    service.signal("TERM");
    service.wait_exit(Duration::from_secs(60));
    println!("bench took {:.0} s", bench_start.elapsed().as_secs_f64());
}

/// One run of `users` Telegram users writing `rounds` messages each (run `run` of `runs`):
/// prints latency, throughput, CPU and context switches per message (by thread too with
/// BENCH_SMAPS=1); returns the CPU milliseconds per 1,000 messages.
fn users_run(fake: &FakeTelegram, pid: u32, users: usize, rounds: usize, run: usize, runs: usize) -> f64 {
    let switches_by_thread = context_switches_by_thread(pid);
    let cpu_by_thread = cpu_ns_by_thread_name(pid);
    let split = process_cpu_split(pid);
    let (times, elapsed, cpu) = telegram_concurrent(fake, pid, users, rounds);
    let after_by_thread = context_switches_by_thread(pid);
    let switches = after_by_thread.values().sum::<u64>().saturating_sub(switches_by_thread.values().sum());
    let (user, kernel) = process_cpu_split(pid);
    let total = users * rounds;
    let mut times = times;
    let what = if run == 1 { "their first messages" } else { "conversations going on" };
    print_latency(
        &format!("Telegram, {users} users at once, {rounds} messages each, run {run} of {runs} ({what})"),
        &mut times,
    );
    let per_thousand = cpu * 1e6 / total as f64;
    println!(
        "  throughput {:.1} messages/s; CPU per 1,000 messages: {per_thousand:.0} ms ({}); {:.1} context switches per message",
        total as f64 / elapsed.as_secs_f64(),
        kernel_share(user - split.0, kernel - split.1),
        switches as f64 / total as f64
    );
    if knob("BENCH_SMAPS", 0) != 0 {
        let per_thread: Vec<String> = after_by_thread
            .iter()
            .map(|(name, n)| (name, n.saturating_sub(switches_by_thread.get(name).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {:.1}", n as f64 / total as f64))
            .collect();
        println!("  context switches per message by thread: {}", per_thread.join(", "));
        let before = cpu_by_thread;
        let per_thread: Vec<String> = cpu_ns_by_thread_name(pid)
            .iter()
            .map(|(name, ns)| (name, ns.saturating_sub(before.get(name).copied().unwrap_or(0))))
            .filter(|(_, ns)| *ns > 0)
            .map(|(name, ns)| format!("{name} {:.0}", ns as f64 / 1e3 / total as f64))
            .collect();
        println!("  CPU µs per message by thread: {}", per_thread.join(", "));
    }
    per_thousand
}

/// One 2 MB answer through the web chat, and the memory after it: compared with just before
/// it and with the start (the goal: back within 1 MiB of the start).
fn huge_answer(warm: &mut WebClient, pid: u32, start_rss: u64) {
    let (before, _, _) = memory(pid);
    let start = Instant::now();
    let answer = warm.round_trip("huge");
    println!("2 MB answer: {} characters through the web chat in {:.0} ms", answer.len(), ms(start.elapsed()));
    print_memory("memory right after the 2 MB answer", pid);
    std::thread::sleep(Duration::from_secs(3));
    print_memory("memory 3 s after the 2 MB answer", pid);
    let (after, _, _) = memory(pid);
    let mib = |a: u64, b: u64| (a as f64 - b as f64) / 1024.0;
    println!(
        "  3 s after the 2 MB answer: {:+.2} MiB over just before it, {:+.2} MiB over the start",
        mib(after, before),
        mib(after, start_rss)
    );
}

/// Telegram, `users` chats, each sending its next message when its answer arrives. Returns
/// the reply times, the wall time and the CPU seconds of tether.
fn telegram_concurrent(fake: &FakeTelegram, pid: u32, users: usize, rounds: usize) -> (Vec<Duration>, Duration, f64) {
    let chat = |u: usize| 20_000 + u as i64;
    let mut sent_at: HashMap<i64, (Instant, usize)> = HashMap::new();
    let mut times = Vec::with_capacity(users * rounds);
    let cpu = cpu_mark(pid);
    let start = Instant::now();
    for u in 0..users {
        sent_at.insert(chat(u), (Instant::now(), 0));
        fake.send_dm(chat(u), &format!("user {u} message 0"));
    }
    while times.len() < users * rounds {
        let call = fake.next_call("sendMessage", Duration::from_secs(30)).expect("no reply within 30 s");
        let Some(id) = call.body["chat_id"].as_i64() else { continue };
        let Some((at, n)) = sent_at.get(&id).copied() else { continue };
        let expected = format!("echo: user {} message {n}", id - 20_000);
        if call.body["text"].as_str() != Some(expected.as_str()) {
            continue;
        }
        times.push(at.elapsed());
        if n + 1 < rounds {
            sent_at.insert(id, (Instant::now(), n + 1));
            fake.send_dm(id, &format!("user {} message {}", id - 20_000, n + 1));
        } else {
            sent_at.remove(&id);
        }
    }
    let elapsed = start.elapsed();
    (times, elapsed, cpu_since(pid, &cpu))
}

/// `total` messages from [`WEB_SOCKETS`] browsers at once; prints latency, throughput, CPU and
/// the memory every quarter of the way (to see that it stays flat).
fn web_run(port: u16, pid: u32, total: usize) {
    let done = Arc::new(AtomicUsize::new(0));
    let per_socket = total.div_ceil(WEB_SOCKETS);
    let cpu = cpu_mark(pid);
    let start = Instant::now();
    let workers: Vec<_> = (0..WEB_SOCKETS)
        .map(|s| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut client = WebClient::connect(port, s + 1);
                let mut times = Vec::with_capacity(per_socket);
                for n in 0..per_socket {
                    let start = Instant::now();
                    let answer = client.round_trip(&format!("browser {s} message {n}"));
                    times.push(start.elapsed());
                    assert_eq!(answer, format!("echo: browser {s} message {n}"));
                    done.fetch_add(1, Ordering::SeqCst);
                }
                times
            })
        })
        .collect();
    let mut next_quarter = 1;
    let mut rss_line = String::new();
    while workers.iter().any(|w| !w.is_finished()) {
        let finished = done.load(Ordering::SeqCst);
        if next_quarter <= 4 && finished * 4 >= next_quarter * total {
            let (rss, _, _) = memory(pid);
            rss_line.push_str(&format!(" {finished}: {:.2} MiB;", rss as f64 / 1024.0));
            next_quarter += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_since(pid, &cpu);
    let mut times: Vec<Duration> =
        workers.into_iter().flat_map(|w| w.join().expect("a web chat client failed")).collect();
    let count = times.len();
    print_latency(&format!("web chat, {WEB_SOCKETS} browsers at once, {count} messages"), &mut times);
    println!(
        "  throughput {:.0} messages/s; CPU per 1,000 messages: {:.0} ms",
        count as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / count as f64
    );
    println!("  VmRSS during the run (after N messages):{rss_line}");
}

/// One browser on the web chat: its own id cookie, one WebSocket.
struct WebClient {
    ws: WebSocket<TcpStream>,
}

impl WebClient {
    fn connect(port: u16, browser: usize) -> WebClient {
        let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().expect("a WebSocket request");
        let cookie = format!("tether_sid={browser:032x}");
        request.headers_mut().insert("Cookie", cookie.parse().expect("a cookie header"));
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the web chat");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("a read timeout");
        let (ws, _) = tungstenite::client::client(request, stream).expect("a WebSocket handshake");
        WebClient { ws }
    }

    /// Send `text` and wait for the agent's finished answer; returns its text.
    fn round_trip(&mut self, text: &str) -> String {
        self.ws.send(Message::text(json!({"type": "message", "text": text}).to_string())).expect("a frame sent");
        loop {
            let Message::Text(frame) = self.ws.read().expect("a frame within 30 s") else { continue };
            let frame: Value = serde_json::from_str(frame.as_str()).expect("JSON from the web chat");
            if frame["type"] == "message" && frame["from"] == "agent" {
                return frame["text"].as_str().unwrap_or_default().to_string();
            }
        }
    }
}

/// The port from "web chat "web" listening on http://127.0.0.1:PORT/".
fn web_port(log: &str) -> u16 {
    log.lines()
        .find_map(|line| line.split("listening on http://127.0.0.1:").nth(1))
        .and_then(|rest| rest.trim_end_matches('/').split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("the web chat's port in the log")
}

fn print_latency(what: &str, times: &mut [Duration]) {
    if times.is_empty() {
        println!("{what}: none");
        return;
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what}: reply p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(times[times.len() - 1])
    );
}

fn print_memory(what: &str, pid: u32) {
    let (rss, hwm, threads) = memory(pid);
    let (file, anon) = rss_file_and_anon(pid);
    println!(
        "{what}: VmRSS {rss} kB ({:.2} MiB: {:.2} mapped from files, {:.2} its own), VmHWM {hwm} kB ({:.2} MiB), {threads} threads",
        rss as f64 / 1024.0,
        file as f64 / 1024.0,
        anon as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // The figure that shows stale hot-code lists (scripts/hot-code.sh): code every message
    // runs that a list lacks sits among cold code, and this grows by 64 KiB windows.
    println!("  of the files, the binary itself: {} kB", rss_of_binary(pid));
    if knob("BENCH_SMAPS", 0) != 0 {
        println!("  by mapping: {}", rss_by_mapping(pid));
    }
}

/// Each mapping of the process (its header line in /proc/PID/smaps: range, permissions,
/// offset, device, inode, path) with its resident kB.
fn smaps_mappings(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut mappings: Vec<(String, u64)> = Vec::new();
    for line in smaps.lines() {
        if let Some(rss) = line.strip_prefix("Rss:") {
            if let Some((_, kb)) = mappings.last_mut() {
                *kb += rss.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
            }
        } else if line.split_whitespace().next().is_some_and(|range| range.contains('-') && !range.ends_with(':')) {
            mappings.push((line.to_string(), 0));
        }
    }
    mappings
}

/// Resident kB of the mappings of the process's own binary (code, constants, relocated data),
/// whether or not it is dirty.
fn rss_of_binary(pid: u32) -> u64 {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return 0 };
    let exe = exe.to_string_lossy();
    smaps_mappings(pid)
        .iter()
        .filter(|(header, _)| header.split_whitespace().nth(5) == Some(exe.as_ref()))
        .map(|(_, kb)| kb)
        .sum()
}

/// Resident kB per kind of mapping (the binary, each library, heap, anonymous), largest
/// first: where the memory is, for BENCH_SMAPS=1.
fn rss_by_mapping(pid: u32) -> String {
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for (header, kb) in smaps_mappings(pid) {
        let path = header.split_whitespace().nth(5).unwrap_or("[anon]");
        let mut name = path.rsplit('/').next().unwrap_or(path).to_string();
        if name == "[anon]" && knob("BENCH_SMAPS", 0) > 1 {
            // Anonymous mappings by size: thread stacks, malloc arenas, big buffers.
            let range = header.split_whitespace().next().unwrap_or("0-0");
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(b, 16).unwrap_or(0).saturating_sub(u64::from_str_radix(a, 16).unwrap_or(0));
            name = format!("[anon {} kB]", size / 1024);
        }
        *by_name.entry(name).or_default() += kb;
    }
    let mut list: Vec<_> = by_name.into_iter().filter(|(_, kb)| *kb > 0).collect();
    list.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    list.iter().map(|(name, kb)| format!("{name} {kb} kB")).collect::<Vec<_>>().join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (VmRSS, VmHWM) in kB and the thread count, from /proc.
fn memory(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status_field(&status, "VmRSS:"), status_field(&status, "VmHWM:"), status_field(&status, "Threads:"))
}

/// The number after `name` in /proc/PID/status, 0 when missing.
fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (RssFile, RssAnon) in kB: the resident pages read from files (the binary's code and data,
/// shared libraries; the page cache holds them and other processes share them) and those
/// that are the process's own (heap, stacks). VmRSS is their sum plus shared memory.
fn rss_file_and_anon(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status_field(&status, "RssFile:"), status_field(&status, "RssAnon:"))
}

/// User + system CPU seconds of the process so far, threads that ended included
/// (/proc/PID/stat, in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> f64 {
    let (user, kernel) = process_cpu_split(pid);
    user + kernel
}

/// CPU seconds of the process (ended threads included) in user space and in the kernel, in
/// 10 ms ticks.
fn process_cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) as f64 / 100.0, ticks(12) as f64 / 100.0)
}

/// The kernel's share of CPU seconds counted in 10 ms ticks, or why it is not given: 200
/// messages take about five ticks, and the share printed from so few swung between 20% and
/// 60% for the same binary. `perf record` splits it properly.
fn kernel_share(user: f64, kernel: f64) -> String {
    let ticks = ((user + kernel) * 100.0).round();
    if ticks < 100.0 {
        format!("{ticks:.0} clock ticks: too few to split between user space and the kernel")
    } else {
        format!("{:.0}% in the kernel, from {ticks:.0} clock ticks", 100.0 * kernel / (user + kernel))
    }
}

/// Where the CPU count of tether stood: the process's ticks and each live thread's
/// nanoseconds.
struct CpuMark {
    ticks: f64,
    threads: HashMap<String, u64>,
}

fn cpu_mark(pid: u32) -> CpuMark {
    CpuMark { ticks: process_cpu(pid), threads: threads_cpu_ns(pid) }
}

/// CPU seconds of tether since `mark`: from the threads' nanoseconds when every thread of
/// the mark still lives (the 10 ms ticks of /proc/PID/stat are too coarse for a few hundred
/// messages), else from the ticks, which count ended threads too.
fn cpu_since(pid: u32, mark: &CpuMark) -> f64 {
    let now = threads_cpu_ns(pid);
    if mark.threads.keys().all(|tid| now.contains_key(tid)) {
        let ns: u64 = now.iter().map(|(tid, ns)| ns.saturating_sub(mark.threads.get(tid).copied().unwrap_or(0))).sum();
        ns as f64 / 1e9
    } else {
        process_cpu(pid) - mark.ticks
    }
}

/// On-CPU nanoseconds of each live thread, by thread id (/proc/PID/task/*/schedstat).
fn threads_cpu_ns(pid: u32) -> HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return HashMap::new() };
    tasks
        .flatten()
        .filter_map(|task| Some((task.file_name().to_string_lossy().into_owned(), task_cpu_ns(&task.path())?)))
        .collect()
}

/// On-CPU nanoseconds of one thread (the first field of its `schedstat`).
fn task_cpu_ns(task: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// On-CPU nanoseconds of the live threads so far, summed by thread name, for BENCH_SMAPS=1.
fn cpu_ns_by_thread_name(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let Some(ns) = task_cpu_ns(&task.path()) else { continue };
        *by_name.entry(thread_name(&status)).or_insert(0) += ns;
    }
    by_name
}

/// Context switches (voluntary and not) of the live threads so far, summed by thread name:
/// each is a thread going to sleep or being put aside, so the count shows how many thread
/// hops a message costs, and where.
fn context_switches_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        *by_name.entry(thread_name(&status)).or_insert(0) +=
            status_field(&status, "voluntary_ctxt_switches:") + status_field(&status, "nonvoluntary_ctxt_switches:");
    }
    by_name
}

/// The thread's name from its /proc status (`Name:` line).
fn thread_name(status: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix("Name:")).map(|n| n.trim().to_string()).unwrap_or_default()
}

/// On-CPU nanoseconds of the live threads (/proc/PID/task/*/schedstat): finer than
/// [`process_cpu`], for the idle figure where no thread ends.
fn thread_cpu_ns(pid: u32) -> u64 {
    threads_cpu_ns(pid).values().sum()
}

/// The process's threads by name, and how many of each, for BENCH_SMAPS=1.
fn thread_names(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return String::new() };
    let mut names: Vec<String> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    let mut counted: Vec<(String, usize)> = Vec::new();
    for name in names {
        match counted.last_mut() {
            Some((last, n)) if *last == name => *n += 1,
            _ => counted.push((name, 1)),
        }
    }
    counted
        .iter()
        .map(|(name, n)| if *n > 1 { format!("{name} ×{n}") } else { name.clone() })
        .collect::<Vec<_>>()
        .join(", ")
}
