//! The audit log's vocabulary and its line format, pure: the closed set of events worth a
//! record ([`AuditEvent`]), how one becomes a JSON line under the configured content mode,
//! the rotated files' names, and how `tether audit` reads, filters and prints lines back.
//! The writer thread (`audit_writer.rs`) does the file I/O.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `audit.content`: what of people's texts the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The texts themselves.
    Full,
    /// Their SHA-256 (hex): the log proves what was sent without keeping it.
    Hash,
    /// Nothing of them.
    None,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Full => "full",
            Content::Hash => "hash",
            Content::None => "none",
        }
    }
}

/// The top-level `audit` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The live file; rotated ones are `<path>.1` (newest) … `<path>.<maxFiles - 1>`.
    pub path: PathBuf,
    pub content: Content,
    /// `maxBytes`: the live file is rotated before it grows past this (default 10 MiB).
    pub max_bytes: u64,
    /// `maxFiles`: files kept in all, the live one included (default 5, at least 1).
    pub max_files: usize,
}

pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: usize = 5;

/// Who made a pairing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// `tether pairing …` on the host.
    Cli,
    /// The web chat's admin page, with the client's address.
    AdminPage { client: String },
}

impl Actor {
    fn describe(&self) -> String {
        match self {
            Actor::Cli => "cli".to_string(),
            Actor::AdminPage { client } => format!("admin page ({client})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingDecision {
    Approved,
    Denied,
    Revoked,
}

/// One record. The core emits the ones it decides (gates, accepted messages, pairing
/// requests, permissions); the daemon and the adapters the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// A message passed the gates.
    MessageAccepted {
        channel: String,
        chat: String,
        sender: String,
        sender_name: String,
        message: Option<String>,
        session: String,
        text: String,
    },
    /// A message the gates dropped; `gate` says which rule.
    MessageRefused {
        channel: String,
        chat: String,
        sender: String,
        sender_name: String,
        message: Option<String>,
        gate: String,
        text: String,
    },
    /// An unknown sender was given a pairing code.
    PairingRequested {
        channel: String,
        sender: String,
        sender_name: String,
        chat: String,
    },
    PairingDecided {
        channel: String,
        decision: PairingDecision,
        /// The sender id, or the code when the decision named only a code.
        sender: String,
        by: Actor,
    },
    /// A tool permission went to the chat (`permissions: relay`).
    PermissionAsked {
        channel: String,
        chat: String,
        session: String,
        request: String,
        tool: String,
        kind: String,
        preview: String,
    },
    /// `by` is the answering sender's id, or `policy` for `permissions: allow|deny`.
    PermissionAnswered {
        channel: String,
        chat: String,
        session: String,
        request: String,
        tool: String,
        by: String,
        option: String,
    },
    PermissionTimedOut {
        channel: String,
        chat: String,
        session: String,
        request: String,
        tool: String,
    },
    /// Every part of a reply was delivered.
    AnswerDelivered {
        channel: String,
        chat: String,
        bytes: usize,
        parts: usize,
        duration_ms: u64,
    },
    AgentStarted {
        agent: String,
    },
    AgentCrashed {
        agent: String,
        reason: String,
    },
    AgentRestarted {
        agent: String,
    },
    ConfigReloaded {
        added: Vec<String>,
        removed: Vec<String>,
        restarted: Vec<String>,
    },
}

impl AuditEvent {
    /// The `event` value of the line.
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::MessageAccepted { .. } => "message.accepted",
            AuditEvent::MessageRefused { .. } => "message.refused",
            AuditEvent::PairingRequested { .. } => "pairing.requested",
            AuditEvent::PairingDecided { decision: PairingDecision::Approved, .. } => "pairing.approved",
            AuditEvent::PairingDecided { decision: PairingDecision::Denied, .. } => "pairing.denied",
            AuditEvent::PairingDecided { decision: PairingDecision::Revoked, .. } => "pairing.revoked",
            AuditEvent::PermissionAsked { .. } => "permission.asked",
            AuditEvent::PermissionAnswered { .. } => "permission.answered",
            AuditEvent::PermissionTimedOut { .. } => "permission.timed_out",
            AuditEvent::AnswerDelivered { .. } => "answer.delivered",
            AuditEvent::AgentStarted { .. } => "agent.started",
            AuditEvent::AgentCrashed { .. } => "agent.crashed",
            AuditEvent::AgentRestarted { .. } => "agent.restarted",
            AuditEvent::ConfigReloaded { .. } => "config.reloaded",
        }
    }
}

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One JSON line (without the newline) for `event` at `at_ms` (unix ms). Texts follow
/// `content`; `clean` removes secrets from the finished line (the logs' redaction).
pub fn format_line(event: &AuditEvent, at_ms: u64, content: Content, clean: &dyn Fn(&str) -> String) -> String {
    // In this order: time and event first, then the event's fields as listed.
    let mut fields: Vec<(&str, Value)> = vec![("time", format_time(at_ms).into()), ("event", event.name().into())];
    let mut put = |key: &'static str, value: Value| fields.push((key, value));
    let text = |put: &mut dyn FnMut(&'static str, Value), text: &str| match content {
        Content::Full => put("text", text.into()),
        Content::Hash => put("textSha256", sha256_hex(text).into()),
        Content::None => {}
    };
    match event {
        AuditEvent::MessageAccepted { channel, chat, sender, sender_name, message, session, text: body } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("sender", sender.as_str().into());
            put("senderName", sender_name.as_str().into());
            put("message", message.clone().into());
            put("session", session.as_str().into());
            text(&mut put, body);
        }
        AuditEvent::MessageRefused { channel, chat, sender, sender_name, message, gate, text: body } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("sender", sender.as_str().into());
            put("senderName", sender_name.as_str().into());
            put("message", message.clone().into());
            put("gate", gate.as_str().into());
            // A stranger's text is kept only when the operator asked for everything.
            if content == Content::Full {
                put("text", body.as_str().into());
            }
        }
        AuditEvent::PairingRequested { channel, sender, sender_name, chat } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("sender", sender.as_str().into());
            put("senderName", sender_name.as_str().into());
        }
        AuditEvent::PairingDecided { channel, sender, by, .. } => {
            put("channel", channel.as_str().into());
            put("sender", sender.as_str().into());
            put("by", by.describe().into());
        }
        AuditEvent::PermissionAsked { channel, chat, session, request, tool, kind, preview } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("session", session.as_str().into());
            put("request", request.as_str().into());
            put("tool", tool.as_str().into());
            put("kind", kind.as_str().into());
            put("preview", preview.as_str().into());
        }
        AuditEvent::PermissionAnswered { channel, chat, session, request, tool, by, option } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("session", session.as_str().into());
            put("request", request.as_str().into());
            put("tool", tool.as_str().into());
            put("by", by.as_str().into());
            put("option", option.as_str().into());
        }
        AuditEvent::PermissionTimedOut { channel, chat, session, request, tool } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("session", session.as_str().into());
            put("request", request.as_str().into());
            put("tool", tool.as_str().into());
        }
        AuditEvent::AnswerDelivered { channel, chat, bytes, parts, duration_ms } => {
            put("channel", channel.as_str().into());
            put("chat", chat.as_str().into());
            put("bytes", (*bytes).into());
            put("parts", (*parts).into());
            put("durationMs", (*duration_ms).into());
        }
        AuditEvent::AgentStarted { agent } | AuditEvent::AgentRestarted { agent } => {
            put("agent", agent.as_str().into());
        }
        AuditEvent::AgentCrashed { agent, reason } => {
            put("agent", agent.as_str().into());
            put("reason", reason.as_str().into());
        }
        AuditEvent::ConfigReloaded { added, removed, restarted } => {
            put("added", added.clone().into());
            put("removed", removed.clone().into());
            put("restarted", restarted.clone().into());
        }
    }
    let members: Vec<String> = fields.into_iter().map(|(key, value)| format!("{}:{value}", Value::from(key))).collect();
    clean(&format!("{{{}}}", members.join(",")))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for unix ms.
pub fn format_time(at_ms: u64) -> String {
    crate::logging::utc_at(at_ms)
}

/// The unix ms of a [`format_time`] string.
pub fn parse_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (23, b'Z')];
    if b.len() != 24 || separators.iter().any(|(i, c)| b.get(*i) != Some(c)) {
        return None;
    }
    let num = |from: usize, to: usize| text.get(from..to).and_then(|s| s.parse::<u64>().ok());
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(i64::try_from(y).ok()?, m, d);
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(secs * 1000 + ms)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm, the inverse of the log's).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let (m, d) = (m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `n`th rotated file of `path` (`n` ≥ 1: `<path>.n`; 0 is the live file).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The files of the log to read, oldest first (the ones that do not exist are skipped by
/// the reader).
pub fn files_oldest_first(path: &Path, max_files: usize) -> Vec<PathBuf> {
    (0..max_files.max(1)).rev().map(|n| rotated(path, n)).collect()
}

/// What `tether audit` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Unix ms: lines before it are skipped.
    pub since_ms: Option<u64>,
    pub channel: Option<String>,
    /// Matches the sender, or who answered a permission.
    pub user: Option<String>,
}

impl Filter {
    pub fn matches(&self, line: &Value) -> bool {
        let field = |key: &str| line.get(key).and_then(Value::as_str);
        if let Some(since) = self.since_ms
            && field("time").and_then(parse_time).is_none_or(|t| t < since)
        {
            return false;
        }
        if let Some(channel) = &self.channel
            && field("channel") != Some(channel.as_str())
        {
            return false;
        }
        if let Some(user) = &self.user
            && field("sender") != Some(user.as_str())
            && field("by") != Some(user.as_str())
        {
            return false;
        }
        true
    }
}

/// One line of the table: time, event, channel, who, and the rest as `key=value`.
pub fn table_row(line: &Value) -> String {
    let field = |key: &str| line.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let who = match (line.get("sender").and_then(Value::as_str), line.get("by").and_then(Value::as_str)) {
        (Some(sender), _) => sender.to_string(),
        (None, Some(by)) => by.to_string(),
        (None, None) => line.get("agent").and_then(Value::as_str).unwrap_or("-").to_string(),
    };
    let shown = ["time", "event", "channel", "sender", "agent"];
    let mut rest = Vec::new();
    if let Some(map) = line.as_object() {
        for (key, value) in map.iter().filter(|(k, _)| !shown.contains(&k.as_str())) {
            let value = match value {
                Value::String(s) => printable(s),
                Value::Null => continue,
                other => other.to_string(),
            };
            rest.push(format!("{key}={value}"));
        }
    }
    let channel = field("channel");
    let channel = if channel.is_empty() { "-".to_string() } else { channel };
    format!(
        "{:<24}  {:<20}  {:<12}  {:<14}  {}",
        field("time"),
        field("event"),
        channel,
        printable(&who),
        rest.join(" ")
    )
    .trim_end()
    .to_string()
}

/// The table's header.
pub fn table_header() -> String {
    format!("{:<24}  {:<20}  {:<12}  {:<14}  {}", "TIME", "EVENT", "CHANNEL", "WHO", "DETAILS")
}

/// Text for a terminal: control characters (a stranger's name could hold escape sequences)
/// become spaces, and long values are cut (on a char boundary).
fn printable(text: &str) -> String {
    const MAX_CHARS: usize = 120;
    let mut out: String = text.chars().take(MAX_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    if out.contains(' ') && !out.is_empty() { format!("{out:?}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> AuditEvent {
        AuditEvent::MessageAccepted {
            channel: "tg".into(),
            chat: "42".into(),
            sender: "111".into(),
            sender_name: "Ann".into(),
            message: Some("7".into()),
            session: "tg:42:111".into(),
            text: "hello".into(),
        }
    }

    fn refused() -> AuditEvent {
        AuditEvent::MessageRefused {
            channel: "tg".into(),
            chat: "9".into(),
            sender: "999".into(),
            sender_name: "Eve".into(),
            message: None,
            gate: "sender not in allowedUsers".into(),
            text: "secret plan".into(),
        }
    }

    fn keep(text: &str) -> String {
        text.to_string()
    }

    #[test]
    fn texts_follow_the_content_mode() {
        let hello_hash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let cases = [
            (accepted(), Content::Full, Some("hello"), None),
            (accepted(), Content::Hash, None, Some(hello_hash)),
            (accepted(), Content::None, None, None),
            (refused(), Content::Full, Some("secret plan"), None),
            (refused(), Content::Hash, None, None),
            (refused(), Content::None, None, None),
        ];
        for (event, content, text, hash) in cases {
            let line = format_line(&event, 0, content, &keep);
            let value: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["text"].as_str(), text, "{line}");
            assert_eq!(value["textSha256"].as_str(), hash, "{line}");
            if content != Content::Full {
                assert!(!line.contains("hello") && !line.contains("secret plan"), "{line}");
            }
        }
    }

    #[test]
    fn every_event_has_its_name_and_fields() {
        let cases = [
            (
                accepted(),
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"message.accepted","channel":"tg","chat":"42","sender":"111","senderName":"Ann","message":"7","session":"tg:42:111","text":"hello"}"#,
            ),
            (
                refused(),
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"message.refused","channel":"tg","chat":"9","sender":"999","senderName":"Eve","message":null,"gate":"sender not in allowedUsers","text":"secret plan"}"#,
            ),
            (
                AuditEvent::PairingDecided {
                    channel: "tg".into(),
                    decision: PairingDecision::Approved,
                    sender: "5".into(),
                    by: Actor::AdminPage { client: "127.0.0.1".into() },
                },
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"pairing.approved","channel":"tg","sender":"5","by":"admin page (127.0.0.1)"}"#,
            ),
            (
                AuditEvent::PermissionAnswered {
                    channel: "tg".into(),
                    chat: "42".into(),
                    session: "k".into(),
                    request: "1".into(),
                    tool: "touch x".into(),
                    by: "111".into(),
                    option: "allow_once".into(),
                },
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"permission.answered","channel":"tg","chat":"42","session":"k","request":"1","tool":"touch x","by":"111","option":"allow_once"}"#,
            ),
            (
                AuditEvent::AnswerDelivered {
                    channel: "tg".into(),
                    chat: "42".into(),
                    bytes: 12,
                    parts: 1,
                    duration_ms: 30,
                },
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"answer.delivered","channel":"tg","chat":"42","bytes":12,"parts":1,"durationMs":30}"#,
            ),
            (
                AuditEvent::ConfigReloaded { added: vec!["b".into()], removed: vec![], restarted: vec![] },
                r#"{"time":"1970-01-01T00:00:01.500Z","event":"config.reloaded","added":["b"],"removed":[],"restarted":[]}"#,
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(format_line(&event, 1500, Content::Full, &keep), expected);
        }
    }

    #[test]
    fn secrets_are_cleaned_from_the_line() {
        let mut event = accepted();
        if let AuditEvent::MessageAccepted { text, .. } = &mut event {
            *text = "token 123:SECRETSECRETSECRET".into();
        }
        let clean = |line: &str| crate::redact::clean_with(line, &["SECRETSECRETSECRET".to_string()]).into_owned();
        let line = format_line(&event, 0, Content::Full, &clean);
        assert!(line.contains("token 123:[redacted]") && !line.contains("SECRETSECRET"), "{line}");
    }

    #[test]
    fn times_round_trip() {
        for ms in [0, 1500, 951_782_400_005, 1_795_236_007_876] {
            assert_eq!(parse_time(&format_time(ms)), Some(ms));
        }
        for bad in ["", "2026-13-01T00:00:00.000Z", "2026-01-01 00:00:00.000Z", "2026-01-01T00:00:00.000"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn rotated_names_oldest_first() {
        let path = Path::new("/var/log/tether-audit.jsonl");
        let names: Vec<String> = files_oldest_first(path, 3).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            ["/var/log/tether-audit.jsonl.2", "/var/log/tether-audit.jsonl.1", "/var/log/tether-audit.jsonl"]
        );
    }

    #[test]
    fn filter_table() {
        let line = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        let a = line(r#"{"time":"2026-01-01T00:00:10.000Z","event":"message.accepted","channel":"tg","sender":"1"}"#);
        let b = line(r#"{"time":"2026-01-01T00:00:20.000Z","event":"permission.answered","channel":"web","by":"2"}"#);
        let c = line(r#"{"time":"2026-01-01T00:00:30.000Z","event":"agent.started","agent":"default"}"#);
        let t10 = parse_time("2026-01-01T00:00:10.000Z").unwrap();
        let cases: [(Filter, [bool; 3]); 5] = [
            (Filter::default(), [true, true, true]),
            (Filter { channel: Some("tg".into()), ..Filter::default() }, [true, false, false]),
            (Filter { user: Some("2".into()), ..Filter::default() }, [false, true, false]),
            (Filter { user: Some("1".into()), channel: Some("tg".into()), ..Filter::default() }, [true, false, false]),
            (Filter { since_ms: Some(t10 + 5000), ..Filter::default() }, [false, true, true]),
        ];
        for (filter, expected) in cases {
            assert_eq!([filter.matches(&a), filter.matches(&b), filter.matches(&c)], expected, "{filter:?}");
        }
    }

    #[test]
    fn table_rows_are_one_printable_line() {
        let line: Value = serde_json::from_str(
            r#"{"time":"2026-01-01T00:00:10.000Z","event":"message.accepted","channel":"tg","sender":"1","senderName":"A\u001b[31mB\nC","text":null}"#,
        )
        .unwrap();
        let row = table_row(&line);
        assert!(!row.contains('\n') && !row.contains('\u{1b}'), "{row:?}");
        assert!(row.starts_with("2026-01-01T00:00:10.000Z  message.accepted"), "{row}");
    }
}
