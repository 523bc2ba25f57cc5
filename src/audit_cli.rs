//! `tether audit [--since DURATION] [--channel NAME] [--user ID] [--json]`: the audit log
//! read back, oldest first across its rotated files, as a table or as its JSON lines.

use std::io::{BufRead, BufReader, Write};

use serde_json::Value;

use crate::audit::{self, Filter};
use crate::config::Config;
use crate::error::Error;

pub const USAGE: &str = "\
Usage:
  tether audit [--since DURATION] [--channel NAME] [--user ID] [--json]
      --since DURATION   only the last DURATION (\"90s\", \"30m\", \"24h\", \"7d\")
      --channel NAME     only this channel's events
      --user ID          only events of this sender (or answered by them)
      --json             the log's JSON lines instead of a table
";

/// What `tether audit` was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// `--since`, in seconds before now.
    pub since_secs: Option<u64>,
    pub channel: Option<String>,
    pub user: Option<String>,
    pub json: bool,
}

/// Parse `--since D`, `--channel N`, `--user U` (as the command line parser hands them over).
pub fn parse(words: &[String], json: bool) -> Result<AuditQuery, Error> {
    let usage = |problem: String| Error::Usage(format!("{problem}\n\n{USAGE}"));
    let mut query = AuditQuery { json, ..AuditQuery::default() };
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let mut value = || words.next().cloned().ok_or_else(|| usage(format!("{word} needs a value")));
        match word.as_str() {
            "--since" => {
                let text = value()?;
                let secs = crate::config::parse_duration_secs(text.trim())
                    .ok_or_else(|| usage(format!("--since {text:?}: expected a duration such as 90s, 30m, 24h, 7d")))?;
                query.since_secs = Some(secs);
            }
            "--channel" => query.channel = Some(value()?),
            "--user" => query.user = Some(value()?),
            other => return Err(usage(format!("`tether audit` does not take {other:?}"))),
        }
    }
    Ok(query)
}

/// Print the matching lines of `config`'s audit log to `out`; returns the exit status.
pub fn run(config: &Config, query: &AuditQuery, now_ms: u64, out: &mut dyn Write) -> Result<i32, Error> {
    let Some(audit) = &config.audit else {
        return Err(Error::Other(format!(
            "no audit log configured in {}: add \"audit\": {{\"path\": \"...\", \"content\": \"hash\"}} (see README)",
            config.path.display()
        )));
    };
    let filter = Filter {
        since_ms: query.since_secs.map(|s| now_ms.saturating_sub(s.saturating_mul(1000))),
        channel: query.channel.clone(),
        user: query.user.clone(),
    };
    let io = |e: std::io::Error| Error::Other(format!("cannot print: {e}"));
    if !query.json {
        writeln!(out, "{}", audit::table_header()).map_err(io)?;
    }
    for path in audit::files_oldest_first(&audit.path, audit.max_files) {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::Other(format!("cannot read the audit log {}: {e}", path.display()))),
        };
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            // A line cut short by a crash is skipped, not fatal.
            let Ok(value) = serde_json::from_slice::<Value>(line.as_bytes()) else { continue };
            if !filter.matches(&value) {
                continue;
            }
            let shown = if query.json { line } else { audit::table_row(&value) };
            writeln!(out, "{shown}").map_err(io)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_table() {
        let ok = |w: &[&str]| parse(&words(w), false).unwrap();
        assert_eq!(ok(&[]), AuditQuery::default());
        assert_eq!(
            ok(&["--since", "2h", "--channel", "tg", "--user", "111"]),
            AuditQuery { since_secs: Some(7200), channel: Some("tg".into()), user: Some("111".into()), json: false }
        );
        for bad in [&["--since"][..], &["--since", "soon"], &["--color"], &["extra"]] {
            assert!(parse(&words(bad), false).is_err(), "{bad:?}");
        }
    }
}
