//! Files people send, kept privately until the agent has read them: under TETHER_HOME
//! (`uploads/<channel>/<sender>/`), directories 0700 and files 0600, created so that nothing
//! another user prepared (a directory, a link) is ever used, and deleted after [`RETENTION`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::access_files::AccessFiles;
use crate::config::{ChannelConfig, SenderPolicy};
use crate::event::InboundMessage;

/// How long an upload is kept: long enough for the turn that reads it, and its follow-ups.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// `root/sub`, created (with `root`) as a private directory; an existing one is used only
/// when it is a real directory (not a link), owned by this user, and closed to others.
pub fn private_dir(root: &Path, sub: &str) -> io::Result<PathBuf> {
    create_dir(root, true)?;
    check_private(root)?;
    let dir = root.join(sub);
    create_dir(&dir, false)?;
    check_private(&dir)?;
    Ok(dir)
}

fn create_dir(dir: &Path, parents: bool) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(parents);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// A directory this user owns, not a link, without group or other permissions.
fn check_private(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!("{} is not a directory (a link?); not used", dir.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if own_uid().is_some_and(|uid| uid != meta.uid()) {
            return Err(io::Error::other(format!("{} belongs to another user; not used", dir.display())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(io::Error::other(format!(
                "{} is open to other users (mode {:o}); not used: remove it, or chmod 700 it",
                dir.display(),
                meta.mode() & 0o777
            )));
        }
    }
    Ok(())
}

/// This process's user id, read from `/proc/self` (its owner); `None` where there is no /proc.
#[cfg(unix)]
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Write to `dir/name`, or `dir/<n>-name` when that exists; never overwrite, never follow a
/// link; mode 0600.
pub fn write_new_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    for n in 0..1000u32 {
        let candidate = if n == 0 { dir.join(name) } else { dir.join(format!("{n}-{name}")) };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&candidate) {
            Ok(mut f) => {
                f.write_all(bytes)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("too many files named {name}")))
}

/// Who may have files kept for them: the channel's sender policy, applied by a platform
/// before it downloads or stores anything (the core's gates come later, and a stranger's
/// files must not fill the disk meanwhile).
pub struct Keeper {
    pub channel: String,
    pub policy: SenderPolicy,
    pub allowed_users: Vec<String>,
    /// The channel's pairing files (who was approved), for `senderPolicy: "pairing"`.
    pub access: Option<AccessFiles>,
    /// The whole channel, for the group rules of [`Keeper::may_store_message`].
    config: ChannelConfig,
}

impl Keeper {
    pub fn new(channel: &ChannelConfig, home: Option<&Path>) -> Keeper {
        Keeper {
            channel: channel.name.clone(),
            policy: channel.sender_policy,
            allowed_users: channel.allowed_users.clone(),
            access: home.map(|home| AccessFiles::new(home, &channel.name)),
            config: channel.clone(),
        }
    }

    /// Whether the files of `message` may be fetched and kept: the core's gates would let it
    /// through (group policy, mention rule, sender policy), so a busy group that does not
    /// address the bot costs no downloads.
    pub fn may_store_message(&self, message: &InboundMessage) -> bool {
        let sender = self.config.sender_policy == SenderPolicy::Pairing && self.may_store(&message.sender_id);
        let group = message.is_group
            && self
                .access
                .as_ref()
                .is_some_and(|files| files.read().is_ok_and(|book| book.approved_groups().contains(&message.chat_id)));
        let approvals = crate::core::gate::Approvals { sender, group };
        matches!(crate::core::gate::check(&self.config, message, approvals), crate::core::gate::Verdict::Pass)
    }

    /// Whether what `sender` sends may be stored: it passes the sender policy.
    pub fn may_store(&self, sender: &str) -> bool {
        let listed = self.allowed_users.iter().any(|u| u == sender);
        match self.policy {
            SenderPolicy::Open => true,
            SenderPolicy::Allowlist => listed,
            SenderPolicy::Pairing => {
                listed
                    || self.access.as_ref().is_some_and(|files| match files.read() {
                        Ok(book) => book.approved().iter().any(|u| u == sender),
                        Err(e) => {
                            log::warn!(target: self.channel.as_str(), "{e}; taking the sender as not approved");
                            false
                        }
                    })
            }
        }
    }
}

/// The files an agent may send out of a channel: those under one of `roots` (the channel's
/// `cwd` and its media directory), at most `max_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundFiles {
    pub roots: Vec<PathBuf>,
    pub max_bytes: u64,
}

impl OutboundFiles {
    /// The real path of `path` (links resolved) when it is a regular file under one of the
    /// roots (also resolved) and not too big; else why not, as the chat should read it.
    pub fn check(&self, path: &str) -> Result<(PathBuf, u64), String> {
        if !path.starts_with('/') {
            return Err(format!("{path} is not an absolute path"));
        }
        let outside = || format!("{path} is outside the allowed directories");
        let real = fs::canonicalize(path).map_err(|_| format!("{path} does not exist"))?;
        let inside = self
            .roots
            .iter()
            .filter_map(|root| fs::canonicalize(root).ok())
            .any(|root| real.starts_with(&root) && real != root);
        if !inside {
            return Err(outside());
        }
        let meta = fs::metadata(&real).map_err(|e| format!("{path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path} is not a file"));
        }
        if meta.len() > self.max_bytes {
            return Err(format!(
                "{path} is {}, over the limit of {}",
                crate::media::size_text(meta.len()),
                crate::media::size_text(self.max_bytes)
            ));
        }
        Ok((real, meta.len()))
    }

    /// The bytes of `path` after checking it again (it may have changed since it was
    /// queued), reading at most `max_bytes`.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        let (real, _) = self.check(&path.to_string_lossy())?;
        let file = fs::File::open(&real).map_err(|e| format!("cannot open {}: {e}", real.display()))?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, self.max_bytes + 1), &mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", real.display()))?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(format!(
                "{} grew over the limit of {}",
                real.display(),
                crate::media::size_text(self.max_bytes)
            ));
        }
        Ok(bytes)
    }
}

/// Delete files under `root/*/` last modified before `now - older_than`, then the
/// directories left empty. Returns how many files went. Errors are skipped (next sweep).
pub fn sweep(root: &Path, older_than: Duration, now: SystemTime) -> usize {
    let Some(cutoff) = now.checked_sub(older_than) else { return 0 };
    let Ok(dirs) = fs::read_dir(root) else { return 0 };
    let mut removed = 0;
    for dir in dirs.flatten() {
        let is_dir = dir.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            continue;
        }
        let Ok(files) = fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            let old = file.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|at| at < cutoff);
            if old && file.file_type().is_ok_and(|t| !t.is_dir()) && fs::remove_file(file.path()).is_ok() {
                removed += 1;
            }
        }
        // Only succeeds when empty.
        let _ = fs::remove_dir(dir.path());
    }
    removed
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-uploads-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_and_files() {
        let root = temp("private").join("uploads").join("web");
        let dir = private_dir(&root, "abc").unwrap();
        let file = write_new_file(&dir, "a.txt", b"hi").unwrap();
        let second = write_new_file(&dir, "a.txt", b"again").unwrap();
        assert_eq!(second.file_name().unwrap(), "1-a.txt");
        assert_eq!((mode(&root), mode(&dir), mode(&file)), (0o700, 0o700, 0o600));
        let _ = fs::remove_dir_all(temp("private"));
    }

    #[test]
    fn a_pre_created_open_directory_or_link_is_not_used() {
        let base = temp("foreign");
        let root = base.join("uploads");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        // Someone prepared the browser's directory, open to all.
        let planted = root.join("victim");
        fs::create_dir(&planted).unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&root, "victim").unwrap_err();
        assert!(err.to_string().contains("open to other users"), "{err}");
        // Or a link to somewhere else.
        let elsewhere = base.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("linked")).unwrap();
        let err = private_dir(&root, "linked").unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        // The root itself open to others: refused as well.
        let open_root = base.join("open");
        fs::create_dir(&open_root).unwrap();
        fs::set_permissions(&open_root, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&open_root, "x").is_err());
        assert!(!open_root.join("x").exists());
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn outbound_files_stay_under_their_roots() {
        let base = temp("outbound");
        let work = base.join("work");
        let media = base.join("media");
        fs::create_dir_all(work.join("sub")).unwrap();
        fs::create_dir_all(&media).unwrap();
        fs::write(work.join("sub/plot.png"), b"png").unwrap();
        fs::write(media.join("in.jpg"), b"jpg").unwrap();
        fs::write(base.join("secret.txt"), b"secret").unwrap();
        fs::write(work.join("big.bin"), vec![0u8; 100]).unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), work.join("link.txt")).unwrap();
        let files = OutboundFiles { roots: vec![work.clone(), media.clone()], max_bytes: 50 };
        let p = |rel: &Path| rel.display().to_string();
        assert_eq!(files.check(&p(&work.join("sub/plot.png"))).unwrap().1, 3);
        assert!(files.check(&p(&media.join("in.jpg"))).is_ok());
        let refused = [
            (p(&base.join("secret.txt")), "outside the allowed directories"),
            (p(&work.join("../secret.txt")), "outside the allowed directories"),
            (p(&work.join("sub/../../secret.txt")), "outside the allowed directories"),
            (p(&work.join("link.txt")), "outside the allowed directories"),
            ("/etc/passwd".to_string(), "outside the allowed directories"),
            (p(&work.join("big.bin")), "over the limit of 50 bytes"),
            (p(&work.join("sub")), "is not a file"),
            (p(&work.join("gone.png")), "does not exist"),
            ("sub/plot.png".to_string(), "not an absolute path"),
        ];
        for (path, why) in refused {
            let err = files.check(&path).unwrap_err();
            assert!(err.contains(why), "{path}: {err}");
        }
        assert_eq!(files.read(&work.join("sub/plot.png")).unwrap(), b"png");
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn sweep_removes_old_files_and_empty_dirs() {
        let root = temp("sweep");
        let dir = private_dir(&root, "b").unwrap();
        write_new_file(&dir, "old.txt", b"x").unwrap();
        let now = SystemTime::now();
        assert_eq!(sweep(&root, RETENTION, now), 0, "fresh files stay");
        assert!(dir.join("old.txt").exists());
        assert_eq!(sweep(&root, RETENTION, now + RETENTION + Duration::from_secs(1)), 1);
        assert!(!dir.exists(), "the empty directory went too");
        let _ = fs::remove_dir_all(&root);
    }
}
