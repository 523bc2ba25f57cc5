//! The admin page's own credential: a random token in `TETHER_HOME/admin-token` (0600 in the
//! 0700 home), made from the OS's random source on first start and kept afterwards. The chat's
//! `token` never grants the admin page, nor does a loopback address: whoever can chat is not
//! thereby allowed to approve strangers, revoke users or clear sessions.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::store;

/// The file in TETHER_HOME that holds the token.
pub const FILE: &str = "admin-token";
/// The query parameter that carries it once, in the printed admin URL.
pub const QUERY: &str = "admin_token";

/// Where the token of `home` lives.
pub fn path(home: &Path) -> PathBuf {
    home.join(FILE)
}

/// The token of `home`, made (and the home created, 0700) when there is none yet.
pub fn load_or_create(home: &Path) -> Result<String, Error> {
    if let Some(token) = read(home)? {
        return Ok(token);
    }
    store::ensure_private_dir(home)?;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Other(format!("cannot make the admin token: no random bytes from the OS: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    store::write_atomic(&path(home), format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// The token of `home`; `None` when none was made yet. A file that holds no usable token is an
/// error naming the file (delete it and a new one is made at the next start).
pub fn read(home: &Path) -> Result<Option<String>, Error> {
    let path = path(home);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::File { path, action: "read", source }),
    };
    let token = text.trim();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::Other(format!(
            "{}: not an admin token (expected at least 32 letters or digits); delete the file \
             and restart tether to make a new one",
            path.display()
        )));
    }
    Ok(Some(token.to_string()))
}

/// The admin page's address with the token, from the chat's base URL (`http://host:port/`).
pub fn admin_url(base: &str, token: &str) -> String {
    format!("{}/admin?{QUERY}={token}", base.trim_end_matches('/'))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn made_once_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("tether-admin-token-{}", std::process::id()));
        let home = dir.join("home");
        let first = load_or_create(&home).unwrap();
        assert_eq!(first.len(), 48);
        assert_eq!(load_or_create(&home).unwrap(), first, "kept across starts");
        let mode = std::fs::metadata(path(&home)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let other = dir.join("other");
        assert_ne!(load_or_create(&other).unwrap(), first, "random per home");
        std::fs::write(path(&other), "short\n").unwrap();
        assert!(read(&other).unwrap_err().to_string().contains("admin-token"));
        assert_eq!(admin_url("http://127.0.0.1:8787/", "abc"), "http://127.0.0.1:8787/admin?admin_token=abc");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
