//! Health of the running service: each channel's state (connected, last success, last error,
//! messages in and out), the deaf-bot watchdog rule, and `status.json` (its shape and the text
//! `tether status` prints from it). The model is pure: callers pass the time as [`Now`].
//! [`Probe`] is the shared handle adapter threads report through; it only reads the clock.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::vec_map::VecMap;

/// A channel whose loop has not succeeded for this long is unhealthy.
pub const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(120);
/// A polling loop reports at least every poll (30 s hold + 10 s margin); one silent for this
/// long is stuck, even when it has not reported a failure.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(90);

/// A moment on two clocks: monotonic for durations (the wall clock of a board without a
/// real-time clock jumps at boot), wall for what people read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds since this process started (monotonic).
    pub mono_ms: u64,
    /// Unix time in milliseconds.
    pub wall_ms: u64,
}

impl Now {
    pub fn read() -> Now {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        Now { mono_ms: start.elapsed().as_millis() as u64, wall_ms: wall_ms() }
    }
}

/// Unix time in milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What changed when the watchdog looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    BecameUnhealthy { why: String },
    BecameHealthy { after_ms: u64 },
}

/// One channel's health, as its threads reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHealth {
    pub kind: String,
    /// The channel's loop reports progress by itself (a poller does; a local web server just
    /// waits for browsers), so silence means it is stuck.
    pub heartbeats: bool,
    pub connected: bool,
    /// Stopped for good until the config changes (a rejected token), and why.
    pub parked: Option<String>,
    pub last_ok_wall: Option<u64>,
    /// The first failure since the last success (or since start, before any success).
    failing_since: Option<u64>,
    last_activity: u64,
    pub last_error: Option<String>,
    pub last_error_wall: Option<u64>,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Times the channel was started again after one of its threads ended on its own.
    pub restarts: u64,
    /// Unhealthy when last evaluated, and since when (monotonic), for one warning per episode.
    unhealthy_since: Option<u64>,
}

impl ChannelHealth {
    pub fn new(kind: &str, heartbeats: bool, now: Now) -> ChannelHealth {
        ChannelHealth {
            kind: kind.to_string(),
            heartbeats,
            connected: false,
            parked: None,
            last_ok_wall: None,
            failing_since: heartbeats.then_some(now.mono_ms),
            last_activity: now.mono_ms,
            last_error: None,
            last_error_wall: None,
            messages_in: 0,
            messages_out: 0,
            restarts: 0,
            unhealthy_since: None,
        }
    }

    /// The loop succeeded (a poll came back, the server is listening).
    pub fn ok(&mut self, now: Now) {
        self.connected = true;
        self.last_ok_wall = Some(now.wall_ms);
        self.failing_since = None;
        self.last_activity = now.mono_ms;
    }

    /// The loop failed; returns true for the first failure after a success (worth a warning;
    /// the rest of the streak is detail).
    pub fn failed(&mut self, now: Now, error: &str) -> bool {
        let first = self.connected || self.last_error.as_deref() != Some(error);
        self.connected = false;
        self.failing_since.get_or_insert(now.mono_ms);
        self.last_activity = now.mono_ms;
        self.note_error(now, error);
        first
    }

    /// A send failed: worth showing, but the channel still hears.
    pub fn note_error(&mut self, now: Now, error: &str) {
        self.last_error = Some(error.to_string());
        self.last_error_wall = Some(now.wall_ms);
    }

    pub fn park(&mut self, now: Now, reason: &str) {
        self.connected = false;
        self.parked = Some(reason.to_string());
        self.note_error(now, reason);
    }

    /// The watchdog rule: parked, failing for longer than `bound`, or silent for longer than
    /// `max(bound, SILENCE_LIMIT)` is unhealthy. Returns why, or `None` when healthy.
    pub fn problem(&self, now: Now, bound: Duration) -> Option<String> {
        if let Some(reason) = &self.parked {
            return Some(format!("parked: {reason}"));
        }
        if !self.heartbeats {
            return (!self.connected).then(|| self.last_error.clone().unwrap_or_else(|| "not connected".into()));
        }
        let bound_ms = bound.as_millis() as u64;
        if let Some(since) = self.failing_since {
            let for_ms = now.mono_ms.saturating_sub(since);
            if for_ms >= bound_ms {
                let what = if self.last_ok_wall.is_some() { "no successful poll" } else { "not connected" };
                let error = self.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
                return Some(format!("{what} for {}{error}", format_duration(for_ms / 1000)));
            }
        }
        let silence_ms = bound_ms.max(SILENCE_LIMIT.as_millis() as u64);
        let quiet = now.mono_ms.saturating_sub(self.last_activity);
        (quiet >= silence_ms).then(|| format!("its loop has reported nothing for {}", format_duration(quiet / 1000)))
    }

    /// Look again; returns a change worth one log line.
    pub fn evaluate(&mut self, now: Now, bound: Duration) -> Option<Change> {
        match (self.problem(now, bound), self.unhealthy_since) {
            (Some(why), None) => {
                self.unhealthy_since = Some(now.mono_ms);
                Some(Change::BecameUnhealthy { why })
            }
            (None, Some(since)) => {
                self.unhealthy_since = None;
                Some(Change::BecameHealthy { after_ms: now.mono_ms.saturating_sub(since) })
            }
            _ => None,
        }
    }

    /// One word for people: `ok`, `connecting`, `retrying`, `unhealthy`, `parked`.
    pub fn state(&self, now: Now, bound: Duration) -> &'static str {
        match (self.parked.is_some(), self.problem(now, bound).is_some(), self.connected, self.last_ok_wall) {
            (true, ..) => "parked",
            (_, true, ..) => "unhealthy",
            (_, _, true, _) => "ok",
            (_, _, false, None) => "connecting",
            (_, _, false, Some(_)) => "retrying",
        }
    }

    pub fn snapshot(&self, now: Now, bound: Duration, extra: ChannelExtra) -> ChannelStatus {
        ChannelStatus {
            kind: self.kind.clone(),
            state: self.state(now, bound).to_string(),
            healthy: self.problem(now, bound).is_none(),
            connected: self.connected,
            problem: self.problem(now, bound),
            last_ok_at: self.last_ok_wall,
            last_error: self.last_error.clone(),
            last_error_at: self.last_error_wall,
            messages_in: self.messages_in,
            messages_out: self.messages_out,
            restarts: self.restarts,
            sessions: extra.sessions,
            pending_pairing: extra.pending_pairing,
            journal_pending: extra.journal_pending,
        }
    }
}

/// What the status needs from outside a channel's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelExtra {
    pub sessions: usize,
    pub pending_pairing: usize,
    pub journal_pending: usize,
}

/// The shared handle through which a channel's threads report.
#[derive(Debug, Clone)]
pub struct Probe(Arc<Mutex<ChannelHealth>>);

impl Probe {
    pub fn new(kind: &str, heartbeats: bool) -> Probe {
        Probe(Arc::new(Mutex::new(ChannelHealth::new(kind, heartbeats, Now::read()))))
    }

    /// Run `f` on the health under the lock, with the current time.
    pub fn with<T>(&self, f: impl FnOnce(&mut ChannelHealth, Now) -> T) -> T {
        let mut health = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut health, Now::read())
    }

    pub fn ok(&self) {
        self.with(|h, now| h.ok(now));
    }

    /// See [`ChannelHealth::failed`]. Every text kept here is published (status.json, the
    /// admin page), so configured secrets an upstream error echoed are redacted first.
    pub fn failed(&self, error: &str) -> bool {
        let error = crate::redact::clean(error);
        self.with(|h, now| h.failed(now, &error))
    }

    /// Record a failure of the channel's loop and log it: a warning for the first of a streak
    /// (or a new error), detail after, so a long outage is one line, not thousands.
    pub fn report(&self, target: &str, error: &str) {
        if self.failed(error) {
            log::warn!(target: target, "{error}");
        } else {
            log::debug!(target: target, "{error}");
        }
    }

    pub fn note_error(&self, error: &str) {
        let error = crate::redact::clean(error);
        self.with(|h, now| h.note_error(now, &error));
    }

    pub fn park(&self, reason: &str) {
        let reason = crate::redact::clean(reason);
        self.with(|h, now| h.park(now, &reason));
    }

    /// One of the channel's threads ended on its own and the channel is being restarted.
    pub fn restarted(&self, why: &str) {
        self.with(|h, now| {
            h.restarts += 1;
            h.failed(now, why);
        });
    }

    pub fn received(&self) {
        self.with(|h, _| h.messages_in += 1);
    }

    pub fn sent(&self) {
        self.with(|h, _| h.messages_out += 1);
    }
}

/// `status.json`: what the running service publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub pid: u32,
    /// `starting`, `running`, `stopping`, `stopped`.
    pub state: String,
    /// Unix ms.
    pub started_at: u64,
    /// Unix ms; the service rewrites the file on every change and at least every 30 s.
    pub updated_at: u64,
    pub channels: VecMap<String, ChannelStatus>,
    /// Channels configured with `"enabled": false` (not started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled: Vec<String>,
    /// The audit log, when one is configured: counts, drops and the last write error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit_writer::AuditStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    pub healthy: bool,
    pub connected: bool,
    /// Why it is unhealthy.
    pub problem: Option<String>,
    /// Unix ms of the last successful poll or frame.
    pub last_ok_at: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Restarts after one of the channel's threads ended on its own (a panic).
    #[serde(default)]
    pub restarts: u64,
    pub sessions: usize,
    pub pending_pairing: usize,
    /// Journaled messages not yet answered.
    pub journal_pending: usize,
}

impl ServiceStatus {
    /// The same status apart from the time it was written (to publish on change only).
    pub fn same_as(&self, other: &ServiceStatus) -> bool {
        ServiceStatus { updated_at: 0, ..self.clone() } == ServiceStatus { updated_at: 0, ..other.clone() }
    }

    /// The same status apart from what moves with every message: the counters, the time of
    /// the last good poll, the sessions and the journal's backlog, the audit records written.
    /// A change there waits for [`STATUS_ACTIVITY_EVERY`]; any other change is shown at once.
    pub fn same_but_activity(&self, other: &ServiceStatus) -> bool {
        self.without_activity() == other.without_activity()
    }

    fn without_activity(&self) -> ServiceStatus {
        let channels = self
            .channels
            .iter()
            .map(|(name, c)| {
                let quiet = ChannelStatus {
                    last_ok_at: None,
                    messages_in: 0,
                    messages_out: 0,
                    sessions: 0,
                    journal_pending: 0,
                    ..c.clone()
                };
                (name.clone(), quiet)
            })
            .collect();
        let audit = self.audit.clone().map(|a| crate::audit_writer::AuditStatus { written: 0, ..a });
        ServiceStatus { updated_at: 0, channels, audit, ..self.clone() }
    }
}

/// Whether `status.json` is to be rewritten: `last` was written `written_ago`, and the service
/// is now `status`.
pub fn status_due(last: &ServiceStatus, written_ago: Duration, status: &ServiceStatus) -> bool {
    if written_ago >= STATUS_HEARTBEAT || !last.same_but_activity(status) {
        return true;
    }
    written_ago >= STATUS_ACTIVITY_EVERY && !last.same_as(status)
}

/// `status.json` is rewritten at least this often, so a stuck service shows.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(30);

/// How often `status.json` is rewritten while only [`ServiceStatus::same_but_activity`]'s
/// counters move: a busy service rewrote it every second (a file created and renamed over
/// the old one: with the journal's compactions, `rename` and `openat` took 3.7% of `perf`'s
/// samples under `bench/`'s 50 users, the agent's included; and a write a second to a
/// board's SD card).
pub const STATUS_ACTIVITY_EVERY: Duration = Duration::from_secs(5);

/// Uptime as the reference prints it: `2d 3h 4m`, `3h 4m`, `4m 5s`, `5s`.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// A short duration for messages: `45s`, `2m 5s`, `3h 4m`.
pub fn format_duration(secs: u64) -> String {
    format_uptime(secs)
}

fn ago(then_ms: Option<u64>, now_ms: u64) -> String {
    match then_ms {
        Some(t) => format!("{} ago", format_duration(now_ms.saturating_sub(t) / 1000)),
        None => "never".to_string(),
    }
}

/// What `tether status` prints for a running service.
pub fn render(pid: u32, status: Option<&ServiceStatus>, now_wall_ms: u64) -> String {
    let mut out = format!("Channel service: running (PID {pid})\n");
    let Some(status) = status else {
        out.push_str("Status:          not published yet (status.json missing: is it still starting?)\n");
        return out;
    };
    let uptime = format_uptime(now_wall_ms.saturating_sub(status.started_at) / 1000);
    out.push_str(&format!("Uptime:          {uptime}\n"));
    let age = now_wall_ms.saturating_sub(status.updated_at) / 1000;
    let stale = if age > 90 { " (stale: the service may be stuck)" } else { "" };
    out.push_str(&format!("State:           {} (updated {} ago{stale})\n\n", status.state, format_duration(age)));
    let width = status.channels.keys().map(|n| n.len() + 2).max().unwrap_or(0).max(15);
    out.push_str(&format!(
        "{:<width$}{:<11}{:<14}{:>6}{:>6}{:>10}{:>9}{:>9}\n",
        "Channel", "State", "Last OK", "In", "Out", "Sessions", "Pairing", "Pending"
    ));
    out.push_str(&format!("{}\n", "-".repeat(width + 11 + 14 + 6 + 6 + 10 + 9 + 9)));
    for (name, c) in &status.channels {
        out.push_str(&format!(
            "{name:<width$}{:<11}{:<14}{:>6}{:>6}{:>10}{:>9}{:>9}\n",
            c.state,
            ago(c.last_ok_at, now_wall_ms),
            c.messages_in,
            c.messages_out,
            c.sessions,
            c.pending_pairing,
            c.journal_pending
        ));
        if c.restarts > 0 {
            out.push_str(&format!("  {name}: restarted {} time(s) after a thread of it ended\n", c.restarts));
        }
        if let Some(problem) = &c.problem {
            out.push_str(&format!("  {name}: {problem}\n"));
        } else if let Some(error) = &c.last_error {
            out.push_str(&format!("  {name}: last error {}: {error}\n", ago(c.last_error_at, now_wall_ms)));
        }
    }
    for name in &status.disabled {
        out.push_str(&format!("{name:<width$}disabled (\"enabled\": false; not started)\n"));
    }
    if let Some(audit) = &status.audit {
        out.push_str(&format!(
            "\nAudit log:       {} (content {}): {} written, {} dropped\n",
            audit.path, audit.content, audit.written, audit.dropped
        ));
        if let Some(error) = audit.last_error.as_ref().filter(|_| audit.dropped > 0) {
            out.push_str(&format!("  audit: {error}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(120);

    fn at(secs: u64) -> Now {
        Now { mono_ms: secs * 1000, wall_ms: 1_700_000_000_000 + secs * 1000 }
    }

    /// Events: "ok", "fail", "park", "quiet" (no report); each at its second.
    fn drive(heartbeats: bool, events: &[(u64, &str)], look_at: u64) -> (Option<String>, &'static str) {
        let mut h = ChannelHealth::new("telegram", heartbeats, at(0));
        for (secs, event) in events {
            match *event {
                "ok" => h.ok(at(*secs)),
                "fail" => {
                    h.failed(at(*secs), "HTTP 502: Bad Gateway");
                }
                "park" => h.park(at(*secs), "token rejected"),
                _ => {}
            }
        }
        (h.problem(at(look_at), BOUND), h.state(at(look_at), BOUND))
    }

    #[test]
    fn watchdog_rule() {
        type Case = (bool, Vec<(u64, &'static str)>, u64, Option<&'static str>, &'static str);
        let cases: Vec<Case> = vec![
            (true, vec![], 10, None, "connecting"),
            (true, vec![], 120, Some("not connected for 2m 0s"), "unhealthy"),
            (true, vec![(1, "ok")], 60, None, "ok"),
            (true, vec![(1, "ok"), (30, "ok"), (60, "ok")], 150, None, "ok"),
            (true, vec![(1, "ok"), (10, "fail")], 100, None, "retrying"),
            (
                true,
                vec![(1, "ok"), (10, "fail"), (70, "fail"), (125, "fail")],
                130,
                Some("no successful poll for 2m 0s; last error: HTTP 502: Bad Gateway"),
                "unhealthy",
            ),
            (true, vec![(1, "ok"), (10, "fail"), (100, "ok")], 200, None, "ok"),
            // Silence: no report at all for max(bound, 90 s) (a stuck loop) is unhealthy too.
            (true, vec![(1, "ok")], 100, None, "ok"),
            (true, vec![(1, "ok")], 121, Some("its loop has reported nothing for 2m 0s"), "unhealthy"),
            (true, vec![(1, "ok"), (2, "park")], 3, Some("parked: token rejected"), "parked"),
            // A channel without heartbeats is healthy while connected, whatever the silence.
            (false, vec![(1, "ok")], 10_000, None, "ok"),
            (false, vec![], 5, Some("not connected"), "unhealthy"),
        ];
        for (heartbeats, events, look_at, problem, state) in cases {
            let got = drive(heartbeats, &events, look_at);
            assert_eq!((got.0.as_deref(), got.1), (problem, state), "{events:?} at {look_at}");
        }
    }

    #[test]
    fn one_warning_per_episode() {
        let mut h = ChannelHealth::new("telegram", true, at(0));
        h.ok(at(1));
        let mut changes = Vec::new();
        for secs in 2..400 {
            if (10..300).contains(&secs) {
                h.failed(at(secs), "HTTP 502");
            }
            if secs == 300 {
                h.ok(at(secs));
            }
            changes.extend(h.evaluate(at(secs), BOUND));
        }
        assert_eq!(
            changes,
            vec![
                Change::BecameUnhealthy { why: "no successful poll for 2m 0s; last error: HTTP 502".into() },
                Change::BecameHealthy { after_ms: 170_000 },
            ]
        );
    }

    #[test]
    fn first_failure_of_a_streak_is_flagged() {
        let mut h = ChannelHealth::new("telegram", true, at(0));
        h.ok(at(1));
        let flags: Vec<bool> =
            ["a", "a", "a", "b", "b"].iter().enumerate().map(|(i, e)| h.failed(at(2 + i as u64), e)).collect();
        assert_eq!(flags, vec![true, false, false, true, false]);
        h.ok(at(10));
        assert!(h.failed(at(11), "b"));
    }

    #[test]
    fn uptime_formats() {
        for (secs, text) in
            [(0, "0s"), (59, "59s"), (60, "1m 0s"), (3599, "59m 59s"), (3600, "1h 0m"), (90_061, "1d 1h 1m")]
        {
            assert_eq!(format_uptime(secs), text);
        }
    }

    /// A running service (PID 42, started at 0, written at 10 s) with one channel, "phone".
    fn running_with(h: &ChannelHealth, extra: ChannelExtra) -> ServiceStatus {
        ServiceStatus {
            pid: 42,
            state: "running".into(),
            started_at: at(0).wall_ms,
            updated_at: at(10).wall_ms,
            channels: VecMap::from_iter([("phone".to_string(), h.snapshot(at(10), BOUND, extra))]),
            disabled: vec![],
            audit: None,
        }
    }

    fn audit_status(written: u64) -> crate::audit_writer::AuditStatus {
        crate::audit_writer::AuditStatus {
            path: "/var/log/audit.jsonl".into(),
            content: "hash".into(),
            written,
            dropped: 2,
            last_error: Some("disk full".into()),
        }
    }

    #[test]
    fn status_is_rewritten_at_once_on_a_change_and_every_5_s_for_activity() {
        let mut h = ChannelHealth::new("telegram", true, at(0));
        h.ok(at(5));
        let extra = ChannelExtra { sessions: 1, pending_pairing: 0, journal_pending: 0 };
        let last = ServiceStatus { audit: Some(audit_status(5)), ..running_with(&h, extra) };
        let channel = |change: fn(&mut ChannelStatus)| {
            let mut status = ServiceStatus { updated_at: at(11).wall_ms, ..last.clone() };
            status.channels.values_mut().for_each(change);
            status
        };
        let secs = Duration::from_secs;
        let audited = |written| ServiceStatus { audit: Some(audit_status(written)), ..last.clone() };
        let table: [(&str, ServiceStatus, Duration, bool); 13] = [
            ("an audit record written, 1 s after", audited(6), secs(1), false),
            ("an audit record written, 5 s after", audited(6), secs(5), true),
            ("nothing changed", channel(|_| {}), secs(1), false),
            ("nothing changed, heartbeat", channel(|_| {}), secs(30), true),
            ("a message in, 1 s after", channel(|c| c.messages_in += 1), secs(1), false),
            ("a message in, 5 s after", channel(|c| c.messages_in += 1), secs(5), true),
            ("a poll, 4 s after", channel(|c| c.last_ok_at = Some(at(11).wall_ms)), secs(4), false),
            ("a reply out, 5 s after", channel(|c| c.messages_out += 1), secs(5), true),
            ("the journal's backlog, 1 s after", channel(|c| c.journal_pending = 3), secs(1), false),
            ("unhealthy, 1 s after", channel(|c| c.healthy = false), secs(1), true),
            ("an error, 1 s after", channel(|c| c.last_error = Some("HTTP 502".into())), secs(1), true),
            ("a pairing request, 1 s after", channel(|c| c.pending_pairing = 1), secs(1), true),
            ("stopping, 1 s after", ServiceStatus { state: "stopping".into(), ..last.clone() }, secs(1), true),
        ];
        for (what, status, written_ago, due) in table {
            assert_eq!(status_due(&last, written_ago, &status), due, "{what}");
        }
    }

    #[test]
    fn status_json_round_trips_and_renders() {
        let mut h = ChannelHealth::new("telegram", true, at(0));
        h.ok(at(5));
        h.messages_in = 3;
        h.messages_out = 2;
        let extra = ChannelExtra { sessions: 1, pending_pairing: 0, journal_pending: 1 };
        let status =
            ServiceStatus { disabled: vec!["spare".into()], audit: Some(audit_status(5)), ..running_with(&h, extra) };
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""type":"telegram""#) && text.contains(r#""lastOkAt":1700000005000"#), "{text}");
        assert_eq!(serde_json::from_str::<ServiceStatus>(&text).unwrap(), status);
        let shown = render(42, Some(&status), at(75).wall_ms);
        assert!(shown.starts_with("Channel service: running (PID 42)\nUptime:          1m 15s\n"), "{shown}");
        assert!(shown.contains("phone          ok         1m 10s ago"), "{shown}");
        assert!(shown.contains("spare          disabled"), "{shown}");
        assert!(shown.contains("5 written, 2 dropped\n  audit: disk full"), "{shown}");
        let later = ServiceStatus { updated_at: 1, ..status.clone() };
        assert!(later.same_as(&status));
        assert!(later.same_but_activity(&status));
        assert!(render(42, Some(&status), at(200).wall_ms).contains("stale"));
    }
}
