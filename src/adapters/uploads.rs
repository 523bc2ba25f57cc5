//! Files people send, kept privately until the agent has read them: under TETHER_HOME
//! (`uploads/<channel>/<sender>/`), directories 0700 and files 0600, created so that nothing
//! another user prepared (a directory, a link) is ever used, and deleted after [`RETENTION`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
