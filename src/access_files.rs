//! A channel's pairing files in TETHER_HOME, shared by the running service and the
//! `tether pairing` command: `<channel>-pairing.json` (pending requests) and
//! `<channel>-allowlist.json` (approved user ids) and `<channel>-groups.json` (group chat ids
//! approved under `groupPolicy: pairing`), in Qwen Code's shapes. Every change is a
//! read-modify-write under `<channel>-pairing.lock`, so the service adding a request and the
//! operator approving one at the same moment do not overwrite each other; the service
//! notices the operator's changes by polling the files' fingerprints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::core::Event;
use crate::core::pairing::{PairingBook, PairingRequest};
use crate::error::Error;
use crate::store::{self, Fingerprint};

/// How often the service looks for changes made by `tether pairing`.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait for the other process to finish its change.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The paths of one channel's pairing files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFiles {
    pub home: PathBuf,
    pub pairing: PathBuf,
    pub allowlist: PathBuf,
    pub groups: PathBuf,
    lock: PathBuf,
}

impl AccessFiles {
    /// `channel` must be a valid channel name (letters, digits, `-`, `_`): it becomes part
    /// of file names.
    pub fn new(home: &Path, channel: &str) -> AccessFiles {
        AccessFiles {
            home: home.to_path_buf(),
            pairing: home.join(format!("{channel}-pairing.json")),
            allowlist: home.join(format!("{channel}-allowlist.json")),
            groups: home.join(format!("{channel}-groups.json")),
            lock: home.join(format!("{channel}-pairing.lock")),
        }
    }

    fn fingerprints(&self) -> [Option<Fingerprint>; 3] {
        [store::fingerprint(&self.pairing), store::fingerprint(&self.allowlist), store::fingerprint(&self.groups)]
    }

    /// Both files as they are (missing files are empty lists). Takes the lock when either
    /// file exists, so a change half-made by another process is never seen.
    pub fn read(&self) -> Result<PairingBook, Error> {
        let _lock = match self.fingerprints() {
            [None, None, None] => None,
            _ => Some(store::lock(&self.lock, LOCK_WAIT)?),
        };
        self.read_unlocked()
    }

    fn read_unlocked(&self) -> Result<PairingBook, Error> {
        let pending: Vec<PairingRequest> = store::read_json(&self.pairing)?.unwrap_or_default();
        let approved: Vec<serde_json::Value> = store::read_json(&self.allowlist)?.unwrap_or_default();
        let approved = approved.into_iter().map(|id| user_id(id, &self.allowlist)).collect::<Result<_, _>>()?;
        let groups: Vec<serde_json::Value> = store::read_json(&self.groups)?.unwrap_or_default();
        let groups = groups.into_iter().map(|id| user_id(id, &self.groups)).collect::<Result<_, _>>()?;
        Ok(PairingBook::new(pending, approved).with_groups(groups))
    }

    /// Lock, read both files, apply `change`, write back each file whose content changed
    /// (expired requests are dropped on the way), unlock. Returns what `change` returned.
    pub fn update<R>(&self, now_ms: u64, change: impl FnOnce(&mut PairingBook) -> R) -> Result<R, Error> {
        store::ensure_private_dir(&self.home)?;
        let _lock = store::lock(&self.lock, LOCK_WAIT)?;
        let mut book = self.read_unlocked()?;
        let (pending, approved) = (book.pending().to_vec(), book.approved().to_vec());
        let groups = book.approved_groups().to_vec();
        book.drop_expired(now_ms);
        let result = change(&mut book);
        // The allowlist first: a reader without the lock then never sees a request gone
        // before its sender is approved.
        if book.approved() != approved {
            store::write_json_atomic(&self.allowlist, book.approved())?;
        }
        if book.approved_groups() != groups {
            store::write_json_atomic(&self.groups, book.approved_groups())?;
        }
        if book.pending() != pending {
            store::write_json_atomic(&self.pairing, book.pending())?;
        }
        Ok(result)
    }
}

/// The service's view of every pairing channel's files: loads them at start, notices
/// changes made by `tether pairing`, and adds the requests the core makes.
#[derive(Debug)]
pub struct Watcher {
    channels: Vec<Watched>,
    last_poll: Option<Instant>,
}

#[derive(Debug)]
struct Watched {
    name: String,
    files: AccessFiles,
    /// The fingerprints of what was last read; `None` before the first read.
    seen: Option<[Option<Fingerprint>; 3]>,
}

impl Watcher {
    pub fn new<'a>(home: &Path, channels: impl IntoIterator<Item = &'a str>) -> Watcher {
        let channels = channels
            .into_iter()
            .map(|name| Watched { name: name.to_string(), files: AccessFiles::new(home, name), seen: None })
            .collect();
        Watcher { channels, last_poll: None }
    }

    /// True when no channel uses pairing (nothing to watch).
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Read every channel's files; at start, where a broken file should stop the service
    /// with a message rather than quietly forget who was approved.
    pub fn load_all(&mut self) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for watched in &mut self.channels {
            let fingerprints = watched.files.fingerprints();
            let book = watched.files.read()?;
            watched.seen = Some(fingerprints);
            events.push(event(&watched.name, book));
        }
        Ok(events)
    }

    /// The channels whose files changed since they were last read, at most once per
    /// [`POLL_INTERVAL`]. A file that cannot be read now is logged and tried again later;
    /// the core keeps what it had.
    pub fn poll(&mut self, now: Instant) -> Vec<Event> {
        if self.last_poll.is_some_and(|last| now.saturating_duration_since(last) < POLL_INTERVAL) {
            return Vec::new();
        }
        self.last_poll = Some(now);
        let mut events = Vec::new();
        for watched in &mut self.channels {
            let fingerprints = watched.files.fingerprints();
            if watched.seen == Some(fingerprints) {
                continue;
            }
            match watched.files.read() {
                Ok(book) => {
                    log::debug!(target: watched.name.as_str(), "pairing files changed; reloaded");
                    watched.seen = Some(fingerprints);
                    events.push(event(&watched.name, book));
                }
                Err(e) => log::error!(target: watched.name.as_str(), "{e}; keeping the previous pairing state"),
            }
        }
        events
    }

    /// `channel`'s files now, if they changed since they were last read, whenever the last
    /// poll was: called before a message of that channel goes to the core, so a sender
    /// approved a moment ago is not taken for a stranger still waiting.
    pub fn refresh(&mut self, channel: &str) -> Vec<Event> {
        let Some(watched) = self.channels.iter_mut().find(|w| w.name == channel) else { return Vec::new() };
        let fingerprints = watched.files.fingerprints();
        if watched.seen == Some(fingerprints) {
            return Vec::new();
        }
        match watched.files.read() {
            Ok(book) => {
                watched.seen = Some(fingerprints);
                vec![event(&watched.name, book)]
            }
            Err(e) => {
                log::error!(target: watched.name.as_str(), "{e}; keeping the previous pairing state");
                Vec::new()
            }
        }
    }

    /// Add a request the core made to the channel's file. The next [`Watcher::poll`] reads
    /// the file back, with whatever the operator changed meanwhile.
    pub fn save_request(&mut self, channel: &str, request: PairingRequest, now_ms: u64) {
        let Some(watched) = self.channels.iter().find(|w| w.name == channel) else {
            log::error!(target: channel, "no pairing files for this channel; the request is not saved");
            return;
        };
        match watched.files.update(now_ms, |book| book.insert(request)) {
            Ok(false) => {}
            Ok(true) => log::warn!(target: channel, "the pairing file held an older request of this sender; replaced"),
            Err(e) => {
                log::error!(target: channel, "cannot save a pairing request: {e}; the sender's code will not work")
            }
        }
    }
}

/// An id in the allowlist: a string, or a number written by hand (as `allowedUsers` allows).
fn user_id(id: serde_json::Value, path: &Path) -> Result<String, Error> {
    match id {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(Error::Other(format!(
            "{}: {other} is not a user id: the file must be a JSON array of id strings, like [\"123456789\"]",
            path.display()
        ))),
    }
}

fn event(channel: &str, book: PairingBook) -> Event {
    Event::AccessFiles {
        channel: channel.to_string(),
        pending: book.pending().to_vec(),
        approved: book.approved().to_vec(),
        approved_groups: book.approved_groups().to_vec(),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn temp_home(label: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!("tether-access-{label}-{hex}"))
    }

    fn request(sender: &str, code: &str, created_at: u64) -> PairingRequest {
        PairingRequest {
            sender_id: sender.into(),
            sender_name: format!("name {sender}"),
            code: code.into(),
            created_at,
            chat_id: Some(sender.into()),
            subject: None,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn update_writes_only_what_changed_privately_and_in_qwen_shapes() {
        let home = temp_home("update");
        let files = AccessFiles::new(&home, "phone");
        assert!(files.read().unwrap().pending().is_empty());
        assert!(!files.update(T0, |b| b.insert(request("7", "ZZZZZZZZ", T0))).unwrap());
        assert!(files.update(T0, |b| b.insert(request("7", "ABCDEFGH", T0))).unwrap(), "replaces the older one");
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&files.pairing), 0o600);
        assert!(!files.allowlist.exists(), "nothing approved yet: no allowlist file");
        let text = std::fs::read_to_string(&files.pairing).unwrap();
        assert!(text.starts_with("[\n  {\n    \"senderId\": \"7\","), "{text}");
        let approved = files.update(T0 + 1, |b| b.approve("abcdefgh", T0 + 1)).unwrap();
        assert_eq!(approved.map(|r| r.sender_id), Some("7".to_string()));
        assert_eq!(std::fs::read_to_string(&files.allowlist).unwrap(), "[\n  \"7\"\n]\n");
        assert_eq!(std::fs::read_to_string(&files.pairing).unwrap(), "[]\n");
        assert_eq!(mode(&files.allowlist), 0o600);
        assert_eq!(mode(&files.pairing), 0o600);
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn an_old_request_in_the_file_is_expired() {
        let home = temp_home("expired");
        let files = AccessFiles::new(&home, "phone");
        store::ensure_private_dir(&home).unwrap();
        let hour = 60 * 60 * 1000;
        store::write_json_atomic(&files.pairing, &[request("7", "ABCDEFGH", T0 - hour), request("8", "JKLMNPQR", T0)])
            .unwrap();
        assert_eq!(files.update(T0, |b| b.approve("ABCDEFGH", T0)).unwrap(), None);
        // The miss still dropped the expired entry from the file.
        let book = files.read().unwrap();
        assert_eq!(book.pending().iter().map(|r| r.code.as_str()).collect::<Vec<_>>(), ["JKLMNPQR"]);
        std::fs::remove_dir_all(home).unwrap();
    }

    #[test]
    fn the_watcher_sees_other_processes_changes_once() {
        let home = temp_home("watch");
        let files = AccessFiles::new(&home, "phone");
        let mut watcher = Watcher::new(&home, ["phone"]);
        let t = Instant::now();
        let empty = Event::AccessFiles {
            channel: "phone".into(),
            pending: Vec::new(),
            approved: Vec::new(),
            approved_groups: vec![],
        };
        assert_eq!(watcher.load_all().unwrap(), vec![empty]);
        assert_eq!(watcher.poll(t), vec![]);
        // The service saves a request: the next poll reads it back.
        watcher.save_request("phone", request("7", "ABCDEFGH", T0), T0);
        assert_eq!(watcher.poll(t + Duration::from_millis(10)), vec![], "at most one poll a second");
        let got = watcher.poll(t + POLL_INTERVAL);
        assert_eq!(
            got,
            vec![Event::AccessFiles {
                channel: "phone".into(),
                pending: vec![request("7", "ABCDEFGH", T0)],
                approved: vec![],
                approved_groups: vec![]
            }]
        );
        assert_eq!(watcher.poll(t + 2 * POLL_INTERVAL), vec![]);
        // The operator approves from another process.
        files.update(T0 + 5, |b| b.approve("ABCDEFGH", T0 + 5)).unwrap();
        let got = watcher.poll(t + 3 * POLL_INTERVAL);
        assert_eq!(
            got,
            vec![Event::AccessFiles {
                channel: "phone".into(),
                pending: vec![],
                approved: vec!["7".into()],
                approved_groups: vec![]
            }]
        );
        // Ids written by hand as numbers are read as strings.
        std::fs::write(&files.allowlist, "[7, \"8\"]").unwrap();
        let got = watcher.poll(t + 4 * POLL_INTERVAL);
        assert_eq!(
            got,
            vec![Event::AccessFiles {
                channel: "phone".into(),
                pending: vec![],
                approved: vec!["7".into(), "8".into()],
                approved_groups: vec![]
            }]
        );
        std::fs::write(&files.allowlist, "[{\"id\": 7}]").unwrap();
        let err = watcher.load_all().unwrap_err().to_string();
        assert!(err.contains("phone-allowlist.json: {\"id\":7} is not a user id"), "{err}");
        // A broken file is reported, not fatal, and the event waits for a good one.
        std::fs::write(&files.allowlist, "[\"7\",").unwrap();
        assert_eq!(watcher.poll(t + 5 * POLL_INTERVAL), vec![]);
        let err = watcher.load_all().unwrap_err().to_string();
        assert!(err.contains("phone-allowlist.json"), "{err}");
        std::fs::remove_dir_all(home).unwrap();
    }
}
