//! A WeChat channel's state in TETHER_HOME, each file written atomically with mode 0600:
//! `<channel>-weixin-account.json` (the login: token, bot id, API base, owner, when),
//! `<channel>-weixin-cursor.json` (the server's `get_updates_buf`) and
//! `<channel>-weixin-contexts.json` (each user's latest `context_token`, which every send
//! must echo; kept across restarts so a restarted tether can still answer).
//! Cursor and tokens are bound to the bot id: another login starts them afresh.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::store;
use crate::vec_map::VecMap;

/// The login, as `tether weixin-login` stores it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub token: String,
    /// `ilink_bot_id`, e.g. `b0f5860fdecb@im.bot`.
    pub bot_id: String,
    /// The API base the login named (or the one it was made at).
    pub base_url: String,
    /// The WeChat user who scanned the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// When the login was confirmed (unix ms).
    pub saved_at: u64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("bot_id", &self.bot_id)
            .field("base_url", &self.base_url)
            .field("user_id", &self.user_id)
            .field("saved_at", &self.saved_at)
            .finish_non_exhaustive()
    }
}

pub fn account_path(home: &Path, channel: &str) -> PathBuf {
    home.join(format!("{channel}-weixin-account.json"))
}

pub fn cursor_path(home: &Path, channel: &str) -> PathBuf {
    home.join(format!("{channel}-weixin-cursor.json"))
}

pub fn contexts_path(home: &Path, channel: &str) -> PathBuf {
    home.join(format!("{channel}-weixin-contexts.json"))
}

pub fn load_account(home: &Path, channel: &str) -> Result<Option<Account>, Error> {
    store::read_json(&account_path(home, channel))
}

/// Store a new login, and forget the cursor and context tokens of the previous one (a cursor
/// of an old session makes the server withhold or repeat messages).
pub fn save_account(home: &Path, channel: &str, account: &Account) -> Result<(), Error> {
    store::ensure_private_dir(home)?;
    store::write_json_atomic(&account_path(home, channel), account)?;
    for path in [cursor_path(home, channel), contexts_path(home, channel)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::File { path, action: "remove", source: e });
            }
            _ => {}
        }
    }
    Ok(())
}

/// One line about a channel's login for `tether status` and `tether check`.
pub fn describe(home: &Path, channel: &str, now_ms: u64) -> String {
    match load_account(home, channel) {
        Ok(Some(account)) => format!(
            "bot {}{}, logged in {} ({} ago), API {}",
            account.bot_id,
            account.user_id.as_deref().map(|u| format!(" for {u}")).unwrap_or_default(),
            crate::logging::utc_at(account.saved_at),
            crate::health::format_duration(now_ms.saturating_sub(account.saved_at) / 1000),
            account.base_url,
        ),
        Ok(None) => format!("not logged in: run `tether weixin-login {channel}`"),
        Err(e) => format!("unreadable login ({e}); run `tether weixin-login {channel}`"),
    }
}

/// The channels with a stored WeChat login in `home`, by name.
pub fn logged_in_channels(home: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(home) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix("-weixin-account.json").map(str::to_string))
        .filter(|name| !name.is_empty() && !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CursorFile {
    bot_id: String,
    cursor: String,
}

/// The saved cursor of this bot ("" when none: the server starts from what it kept).
pub fn load_cursor(home: &Path, channel: &str, bot_id: &str) -> String {
    match store::read_json::<CursorFile>(&cursor_path(home, channel)) {
        Ok(Some(file)) if file.bot_id == bot_id => file.cursor,
        Ok(_) => String::new(),
        Err(e) => {
            log::warn!(target: "weixin", "{e}; starting from the server's own position");
            String::new()
        }
    }
}

pub fn save_cursor(home: &Path, channel: &str, bot_id: &str, cursor: &str) -> Result<(), Error> {
    let file = CursorFile { bot_id: bot_id.to_string(), cursor: cursor.to_string() };
    store::write_json_atomic(&cursor_path(home, channel), &file)
}

/// A user's latest context token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub token: String,
    /// When the user's message carrying it arrived (unix ms).
    pub received_at_ms: u64,
    /// Messages sent with it since (the server allows about ten per user message).
    pub sends_since: u32,
}

/// Every user's context token, bound to one bot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contexts {
    bot_id: String,
    users: VecMap<String, Context>,
}

/// At most this many users are remembered (the oldest are dropped): the file stays small.
const MAX_USERS: usize = 1000;

impl Contexts {
    pub fn load(home: &Path, channel: &str, bot_id: &str) -> Contexts {
        match store::read_json::<Contexts>(&contexts_path(home, channel)) {
            Ok(Some(file)) if file.bot_id == bot_id => file,
            Ok(_) => Contexts { bot_id: bot_id.to_string(), users: VecMap::new() },
            Err(e) => {
                log::warn!(target: "weixin", "{e}; replies wait until each user writes again");
                Contexts { bot_id: bot_id.to_string(), users: VecMap::new() }
            }
        }
    }

    pub fn save(&self, home: &Path, channel: &str) -> Result<(), Error> {
        store::write_json_atomic(&contexts_path(home, channel), self)
    }

    pub fn get(&self, user: &str) -> Option<&Context> {
        self.users.get(user)
    }

    /// A user wrote with `token`: it replaces the previous one and the send count restarts.
    /// Returns whether anything changed.
    pub fn received(&mut self, user: &str, token: &str, now_ms: u64) -> bool {
        if self.users.get(user).is_some_and(|c| c.token == token) {
            return false;
        }
        self.users
            .insert(user.to_string(), Context { token: token.to_string(), received_at_ms: now_ms, sends_since: 0 });
        if self.users.len() > MAX_USERS
            && let Some(oldest) = self.users.iter().min_by_key(|(_, c)| c.received_at_ms).map(|(u, _)| u.clone())
        {
            self.users.remove(&oldest);
        }
        true
    }

    /// One message was sent to `user` with their token.
    pub fn sent(&mut self, user: &str) {
        if let Some(context) = self.users.get_mut(user) {
            context.sends_since = context.sends_since.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-wx-account-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn account(bot: &str) -> Account {
        Account { token: "secret".into(), bot_id: bot.into(), base_url: "http://b".into(), user_id: None, saved_at: 5 }
    }

    #[test]
    fn account_cursor_and_contexts_survive_and_a_new_login_forgets_them() {
        let home = home("cycle");
        assert_eq!(load_account(&home, "wx").unwrap(), None);
        save_account(&home, "wx", &account("b1")).unwrap();
        assert_eq!(load_account(&home, "wx").unwrap(), Some(account("b1")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(account_path(&home, "wx")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{:?}", account("b1")).contains("secret"));

        assert_eq!(load_cursor(&home, "wx", "b1"), "");
        save_cursor(&home, "wx", "b1", "c42").unwrap();
        assert_eq!(load_cursor(&home, "wx", "b1"), "c42");
        assert_eq!(load_cursor(&home, "wx", "b2"), "", "another bot's cursor is not ours");

        let mut contexts = Contexts::load(&home, "wx", "b1");
        assert!(contexts.received("u1", "t1", 100));
        assert!(!contexts.received("u1", "t1", 200), "the same token again changes nothing");
        contexts.sent("u1");
        contexts.sent("nobody");
        contexts.save(&home, "wx").unwrap();
        let loaded = Contexts::load(&home, "wx", "b1");
        assert_eq!(loaded.get("u1"), Some(&Context { token: "t1".into(), received_at_ms: 100, sends_since: 1 }));
        assert_eq!(Contexts::load(&home, "wx", "b2").get("u1"), None);
        let mut again = loaded.clone();
        assert!(again.received("u1", "t2", 300));
        assert_eq!(again.get("u1").unwrap().sends_since, 0);

        assert_eq!(logged_in_channels(&home), vec!["wx".to_string()]);
        let line = describe(&home, "wx", 5 + 3_600_000);
        assert_eq!(line, "bot b1, logged in 1970-01-01T00:00:00.005Z (1h 0m ago), API http://b");
        assert!(describe(&home, "other", 0).contains("run `tether weixin-login other`"));

        save_account(&home, "wx", &account("b1")).unwrap();
        assert_eq!(load_cursor(&home, "wx", "b1"), "");
        assert_eq!(Contexts::load(&home, "wx", "b1").get("u1"), None);
        let _ = std::fs::remove_dir_all(&home);
    }

    #[test]
    fn the_oldest_users_are_dropped_past_the_cap() {
        let mut contexts = Contexts::default();
        for n in 0..=MAX_USERS as u64 {
            contexts.received(&format!("u{n}"), "t", n + 1);
        }
        assert_eq!(contexts.users.len(), MAX_USERS);
        assert!(contexts.get("u0").is_none() && contexts.get("u1").is_some());
    }
}
