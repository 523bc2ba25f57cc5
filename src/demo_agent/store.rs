//! The demo agent's session history: the in-memory record of one session and its file in the
//! state directory (one JSON file per session, written atomically), so that a restarted demo
//! agent can `session/load` a session created by an earlier process.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Who said a history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Agent,
}

/// One prompt or one answer, replayed by `session/load` as one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub role: Role,
    pub text: String,
}

/// Everything the demo agent remembers about a session (also the file's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    pub session_id: String,
    pub cwd: String,
    pub history: Vec<Entry>,
    /// The model chosen with `session/set_config_option` (files from older versions lack it).
    #[serde(default = "default_model")]
    pub model: String,
}

/// The model a new session starts with.
pub fn default_model() -> String {
    super::script::MODELS[0].to_string()
}

/// How many numbers [`Store::claim`] tries before giving up (a directory that full is a bug).
const MAX_CLAIM_ATTEMPTS: u64 = 100_000;

/// The state directory holding `<sessionId>.json` files.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Session ids we accept as file names: no separators, no dots, so no path tricks.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The session id for session number `n`.
pub fn session_id_for(n: u64) -> String {
    format!("demo-{n}")
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Reserve the first free session number from `first`, by creating its file exclusively, so
    /// two demo agents sharing a directory never hand out the same id. Returns the number.
    pub fn claim(&self, first: u64) -> Result<u64, String> {
        for n in first..first.saturating_add(MAX_CLAIM_ATTEMPTS) {
            let path = self.path(&session_id_for(n));
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            set_private_mode(&mut options);
            match options.open(&path) {
                Ok(_) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create session file {}: {e}; check that the state directory is writable",
                        path.display()
                    ));
                }
            }
        }
        Err(format!(
            "no free session id in {} after {MAX_CLAIM_ATTEMPTS} tries; clean the directory",
            self.dir.display()
        ))
    }

    /// Write the record atomically: temporary file, fsync, rename over the old file.
    pub fn save(&self, record: &SessionRecord) -> Result<(), String> {
        let path = self.path(&record.session_id);
        let tmp = self.dir.join(format!(".{}.json.tmp-{}", record.session_id, std::process::id()));
        let json =
            serde_json::to_vec(record).map_err(|e| format!("cannot encode session {}: {e}", record.session_id))?;
        let written = (|| -> std::io::Result<()> {
            let mut options = fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            set_private_mode(&mut options);
            let mut file = options.open(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write session file {}: {e}; check that the state directory is writable", path.display())
        })
    }

    /// Read a session's record. `Ok(None)` when there is no such session (or its file is
    /// still the empty placeholder [`Store::claim`] made).
    pub fn load(&self, id: &str) -> Result<Option<SessionRecord>, String> {
        if !valid_session_id(id) {
            return Ok(None);
        }
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read session file {}: {e}", path.display())),
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let record: SessionRecord = serde_json::from_slice(&bytes).map_err(|e| {
            format!("cannot parse session file {}: {e}; delete it or restore a good copy", path.display())
        })?;
        if record.session_id != id {
            return Err(format!(
                "session file {} holds session {:?}, not {id:?}; delete it or rename it",
                path.display(),
                record.session_id
            ));
        }
        Ok(Some(record))
    }
}

#[cfg(unix)]
fn set_private_mode(options: &mut fs::OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600);
}

#[cfg(not(unix))]
fn set_private_mode(_options: &mut fs::OpenOptions) {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, unique per call.
    pub(crate) fn temp_dir(label: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("tether-demo-{label}-{hex}"));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(id: &str) -> SessionRecord {
        SessionRecord {
            session_id: id.to_string(),
            cwd: "/tmp/ws".to_string(),
            history: vec![
                Entry { role: Role::User, text: "hi".into() },
                Entry { role: Role::Agent, text: "echo: hi".into() },
            ],
            model: "demo-fast".to_string(),
        }
    }

    #[test]
    fn valid_session_ids() {
        let cases = [
            ("demo-1", true),
            ("a_B-9", true),
            ("", false),
            ("../x", false),
            ("a/b", false),
            ("a.json", false),
            ("sp ace", false),
        ];
        for (id, want) in cases {
            assert_eq!(valid_session_id(id), want, "{id:?}");
        }
        assert!(!valid_session_id(&"x".repeat(129)));
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = temp_dir("store-rt");
        let store = Store::new(dir.clone());
        store.save(&record("demo-1")).unwrap();
        assert_eq!(store.load("demo-1").unwrap(), Some(record("demo-1")));
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["demo-1.json".to_string()]);
        let text = fs::read_to_string(dir.join("demo-1.json")).unwrap();
        assert!(text.contains("\"sessionId\":\"demo-1\""), "{text}");
        assert!(text.contains("\"role\":\"agent\""), "{text}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn load_missing_invalid_placeholder_corrupt_and_mismatched() {
        let dir = temp_dir("store-load");
        let store = Store::new(dir.clone());
        assert_eq!(store.load("demo-9").unwrap(), None);
        assert_eq!(store.load("../etc/passwd").unwrap(), None);
        fs::write(dir.join("demo-2.json"), "").unwrap();
        assert_eq!(store.load("demo-2").unwrap(), None);
        fs::write(dir.join("demo-3.json"), "{not json").unwrap();
        let err = store.load("demo-3").unwrap_err();
        assert!(err.contains("demo-3.json") && err.contains("cannot parse"), "{err}");
        store.save(&record("demo-4")).unwrap();
        fs::rename(dir.join("demo-4.json"), dir.join("demo-5.json")).unwrap();
        let err = store.load("demo-5").unwrap_err();
        assert!(err.contains("demo-4"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claim_skips_taken_numbers() {
        let dir = temp_dir("store-claim");
        let store = Store::new(dir.clone());
        assert_eq!(store.claim(1).unwrap(), 1);
        assert_eq!(store.claim(1).unwrap(), 2);
        store.save(&record("demo-3")).unwrap();
        assert_eq!(store.claim(1).unwrap(), 4);
        assert_eq!(store.claim(10).unwrap(), 10);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn claim_and_save_report_the_path_when_the_directory_is_missing() {
        let parent = temp_dir("store-missing");
        let dir = parent.join("gone");
        let store = Store::new(dir.clone());
        let err = store.claim(1).unwrap_err();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        let err = store.save(&record("demo-1")).unwrap_err();
        assert!(err.contains("demo-1.json"), "{err}");
        fs::remove_dir_all(parent).unwrap();
    }
}
