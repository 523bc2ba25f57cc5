//! Small private state files in TETHER_HOME: JSON written atomically (temporary file in the
//! same directory, fsync, rename) with mode 0600 in a 0700 directory, read back tolerantly of
//! absence, a lock file for read-modify-write across processes, and a cheap fingerprint to
//! notice another process's writes. Generic: pairing, sessions and the journal all use it.
//! Also [`json_text`]: JSON text in a buffer sized up front, for the lines written for every
//! message (the journal's here, and the ACP prompt, which shares it rather than keep a copy).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// `value` as JSON text, written into a buffer of `capacity` bytes to start with: a line of
/// about that size takes one allocation, where `serde_json::to_string` starts at 128 bytes and
/// grows (a copy each time). For the lines every message writes: the journal's, the prompt.
pub fn json_text<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Option<String> {
    let mut bytes = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut bytes, value).ok()?;
    // serde_json writes UTF-8; checked all the same, without `unsafe`.
    String::from_utf8(bytes).ok()
}

/// Mode of every state file: the owner only (they hold who may drive the agent).
pub const FILE_MODE: u32 = 0o600;
/// Mode of the state directory.
pub const DIR_MODE: u32 = 0o700;

/// Create `dir` (and its parents) if missing, and make it private (0700).
pub fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    set_dir_mode(&mut builder);
    builder.create(dir).map_err(|source| Error::File {
        path: dir.to_path_buf(),
        action: "create directory",
        source,
    })?;
    set_mode(dir, DIR_MODE).map_err(|source| Error::File {
        path: dir.to_path_buf(),
        action: "make private (chmod 700; pick a directory you own with --home)",
        source,
    })
}

/// Write `value` as pretty JSON (2 spaces, as Qwen Code writes its files) to `path`, atomically.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), Error> {
    write_atomic(path, &pretty_json(path, value)?)
}

/// [`write_json_atomic`] without the two disk flushes: a running reader still sees the old
/// or the new file whole, but after a power cut the file may be old, empty or missing. Only
/// for files that are rewritten as the service runs and that readers check (`status.json`:
/// published every second while things change, so its flushes were most of the disk writes
/// of a quiet bot, on an SD card that wears).
pub fn write_json_unsynced<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), Error> {
    replace(path, &pretty_json(path, value)?, Durability::Unsynced)
}

fn pretty_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Other(format!("cannot encode {} as JSON: {e}", path.display())))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replace `path` with `bytes` so a reader sees the old or the new file, never a part:
/// write a temporary file next to it (mode 0600), fsync it, rename it over `path`, fsync the
/// directory. The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    replace(path, bytes, Durability::Synced)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Unsynced,
}

fn replace(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), Error> {
    let file_error = |source| Error::File { path: path.to_path_buf(), action: "write", source };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp(dir, path).map_err(file_error)?;
    let written = (|| {
        set_mode(&tmp, FILE_MODE)?;
        file.write_all(bytes)?;
        if durability == Durability::Synced {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(file_error(e));
    }
    if durability == Durability::Unsynced {
        return Ok(());
    }
    // Make the rename itself durable; some file systems refuse to sync a directory: harmless.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new temporary file beside `target`, created exclusively (never through a planted link).
fn create_temp(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        set_file_mode(&mut options);
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary file name")))
}

/// Read and decode a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::File { path: path.to_path_buf(), action: "read", source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Other(format!("cannot parse {}: {e}; fix the JSON or delete the file", path.display())))
}

/// An exclusive lock on a lock file, held until dropped (closing the file releases it).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Take the exclusive lock on `path` (created 0600 if missing), waiting at most `within`.
/// Lock a separate file, not the data file: an atomic write replaces the data file's inode.
pub fn lock(path: &Path, within: Duration) -> Result<FileLock, Error> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    set_file_mode(&mut options);
    let file = options.open(path).map_err(|source| Error::File { path: path.to_path_buf(), action: "open", source })?;
    let deadline = Instant::now() + within;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(FileLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Other(format!(
                    "{} is locked by another tether process for more than {} s; try again",
                    path.display(),
                    within.as_secs()
                )));
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(Error::File { path: path.to_path_buf(), action: "lock", source });
            }
        }
    }
}

/// What identifies one version of a file cheaply: size, modification time and (on Unix) the
/// inode, which every atomic write changes even within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The file's fingerprint, or `None` when it does not exist (or cannot be examined).
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = fs::metadata(path).ok()?;
    Some(Fingerprint { len: meta.len(), modified: meta.modified().ok(), inode: inode(&meta) })
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> u64 {
    0
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_file_mode(options: &mut OpenOptions) {
    std::os::unix::fs::OpenOptionsExt::mode(options, FILE_MODE);
}

#[cfg(not(unix))]
fn set_file_mode(_options: &mut OpenOptions) {}

#[cfg(unix)]
fn set_dir_mode(builder: &mut fs::DirBuilder) {
    std::os::unix::fs::DirBuilderExt::mode(builder, DIR_MODE);
}

#[cfg(not(unix))]
fn set_dir_mode(_builder: &mut fs::DirBuilder) {}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::{Value, json};

    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!("tether-store-{label}-{hex}"))
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_are_private_pretty_and_leave_no_temporary_file() {
        let root = temp_dir("write");
        let dir = root.join("home");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let path = dir.join("x.json");
        write_json_atomic(&path, &json!(["a", "b"])).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "[\n  \"a\",\n  \"b\"\n]\n");
        assert_eq!(mode(&path), 0o600);
        // Overwriting a file someone made world-readable makes it private again.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_json_atomic(&path, &json!({"k": 1})).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read_json::<Value>(&path).unwrap(), Some(json!({"k": 1})));
        // Unsynced (status.json): the same file, as private, no temporary file left either.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_json_unsynced(&path, &json!({"k": 2})).unwrap();
        assert_eq!((mode(&path), read_json::<Value>(&path).unwrap()), (0o600, Some(json!({"k": 2}))));
        let names: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["x.json".to_string()]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_existing_open_directory_is_made_private() {
        let dir = temp_dir("dirmode");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reading_missing_corrupt_and_unwritable() {
        let dir = temp_dir("read");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(read_json::<Value>(&dir.join("none.json")).unwrap(), None);
        fs::write(dir.join("bad.json"), "[1,").unwrap();
        let err = read_json::<Value>(&dir.join("bad.json")).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("fix the JSON or delete"), "{err}");
        let err = write_json_atomic(&dir.join("gone/x.json"), &json!(1)).unwrap_err().to_string();
        assert!(err.contains("gone/x.json"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_lock_is_exclusive_and_times_out() {
        let dir = temp_dir("lock");
        ensure_private_dir(&dir).unwrap();
        let path = dir.join("x.lock");
        let held = lock(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(mode(&path), 0o600);
        let started = Instant::now();
        let err = lock(&path, Duration::from_millis(100)).unwrap_err().to_string();
        assert!(err.contains("locked by another tether process"), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(held);
        lock(&path, Duration::from_millis(100)).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fingerprint_changes_with_every_write() {
        let dir = temp_dir("fp");
        ensure_private_dir(&dir).unwrap();
        let path = dir.join("x.json");
        assert_eq!(fingerprint(&path), None);
        write_json_atomic(&path, &json!(1)).unwrap();
        let first = fingerprint(&path).unwrap();
        assert_eq!(fingerprint(&path), Some(first));
        // Same size, same second: the inode still tells them apart.
        write_json_atomic(&path, &json!(2)).unwrap();
        assert_ne!(fingerprint(&path), Some(first));
        fs::remove_dir_all(dir).unwrap();
    }
}
