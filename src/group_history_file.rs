//! `<channel>-group-history.jsonl` in TETHER_HOME: a channel's group history (see
//! `core::history`), one JSON object per line as Qwen Code keeps it. Rewritten whole and
//! atomically on each change (it is bounded), read once at start.

use std::path::{Path, PathBuf};

use crate::core::Event;
use crate::core::history::HistoryEntry;
use crate::error::Error;

pub fn path(home: &Path, channel: &str) -> PathBuf {
    home.join(format!("{channel}-group-history.jsonl"))
}

/// Write every entry of the channel (an empty history removes the file).
pub fn save(home: &Path, channel: &str, entries: &[HistoryEntry]) -> Result<(), Error> {
    let path = path(home, channel);
    if entries.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::File { path, action: "remove", source: e })
            }
            _ => Ok(()),
        };
    }
    let mut text = String::new();
    for entry in entries {
        let line = serde_json::to_string(entry).map_err(|e| Error::Other(format!("group history: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::store::ensure_private_dir(home)?;
    crate::store::write_atomic(&path, text.as_bytes())
}

/// The channel's saved history as an event for the core; `None` when there is none. A
/// line that does not read is skipped (logged): it is context, not state worth stopping for.
pub fn load(home: &Path, channel: &str) -> Option<Event> {
    let path = path(home, channel);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(target: channel, "cannot read {}: {e}; group history starts empty", path.display());
            return None;
        }
    };
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_slice::<HistoryEntry>(line.as_bytes()) {
            Ok(entry) => entries.push(entry),
            Err(e) => log::warn!(target: channel, "{} line {}: {e}; skipped", path.display(), number + 1),
        }
    }
    Some(Event::GroupHistory { channel: channel.to_string(), entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_history_reads_back_and_bad_lines_are_skipped() {
        let home = std::env::temp_dir().join(format!("tether-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let entry = HistoryEntry {
            chat_id: "-1".into(),
            thread_id: Some("5".into()),
            sender_id: "7".into(),
            sender_name: "Ann".into(),
            text: "hi".into(),
            at: 1,
        };
        assert_eq!(load(&home, "g"), None);
        save(&home, "g", &[entry.clone(), entry.clone()]).unwrap();
        let text = std::fs::read_to_string(path(&home, "g")).unwrap();
        assert!(text.starts_with(r#"{"chatId":"-1","threadId":"5","senderId":"7""#), "{text}");
        std::fs::write(path(&home, "g"), format!("{text}not json\n")).unwrap();
        let expected = Event::GroupHistory { channel: "g".into(), entries: vec![entry.clone(), entry] };
        assert_eq!(load(&home, "g"), Some(expected));
        save(&home, "g", &[]).unwrap();
        assert!(!path(&home, "g").exists());
        let _ = std::fs::remove_dir_all(&home);
    }
}
