//! What the poll thread and the delivery share for one WeChat channel: the login (re-read
//! when `tether weixin-login` replaces the account file, so a running service picks a new
//! login up by itself), every user's context token (persisted), typing tickets, and the
//! operations that talk to iLink: fetch a message's media, send a text or a file, show typing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::event::Attachment;
use crate::store::{self, Fingerprint};

use super::account::{self, Account, Contexts};
use super::api::Api;
use super::crypto;
use super::media;
use super::wire::{self, Failure, Message};

/// How long a typing ticket is used before asking for a new one (Tencent refreshes within
/// 24 h; an hour keeps it fresh without asking per turn).
const TICKET_LIFE: Duration = Duration::from_secs(3600);
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
const MEDIA_TIMEOUT: Duration = Duration::from_secs(120);
/// Upload attempts on 5xx and network errors (the reference: up to 3).
const UPLOAD_ATTEMPTS: u32 = 3;

/// The platform keys of a WeChat channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub channel: String,
    /// `baseUrl`: where logins happen, and the API when the account names none.
    pub login_base: String,
    /// `cdnBaseUrl`.
    pub cdn_base: String,
    /// The channel's `cwd`: answers may send files from under it.
    pub cwd: PathBuf,
}

/// The login in use.
#[derive(Clone)]
pub struct Session {
    pub account: Account,
    pub api: Api,
}

struct Loaded {
    session: Option<Session>,
    fingerprint: Option<Fingerprint>,
}

pub struct Link {
    pub settings: Settings,
    pub home: PathBuf,
    loaded: Mutex<Loaded>,
    contexts: Mutex<Contexts>,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why there is no session to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSession {
    NotLoggedIn,
    Unreadable(String),
}

impl Link {
    pub fn new(settings: Settings, home: &Path) -> Link {
        Link {
            settings,
            home: home.to_path_buf(),
            loaded: Mutex::new(Loaded { session: None, fingerprint: None }),
            contexts: Mutex::new(Contexts::default()),
            tickets: Mutex::new(HashMap::new()),
        }
    }

    pub fn channel(&self) -> &str {
        &self.settings.channel
    }

    pub fn media_dir(&self) -> PathBuf {
        media::media_dir(&self.home, self.channel())
    }

    /// The login to use: the account file as it is now (read again when it changed).
    pub fn session(&self) -> Result<Session, NoSession> {
        let path = account::account_path(&self.home, self.channel());
        let now = store::fingerprint(&path);
        let mut loaded = lock(&self.loaded);
        if loaded.fingerprint != now || (loaded.session.is_none() && now.is_some()) {
            loaded.fingerprint = now;
            let account =
                account::load_account(&self.home, self.channel()).map_err(|e| NoSession::Unreadable(e.to_string()));
            let account = match account {
                Ok(Some(account)) => account,
                Ok(None) => {
                    loaded.session = None;
                    return Err(NoSession::NotLoggedIn);
                }
                Err(e) => {
                    loaded.session = None;
                    return Err(e);
                }
            };
            // The token never shows in a log line or status text, even if a server echoes it.
            crate::redact::register(&account.token);
            let same_bot = loaded.session.as_ref().is_some_and(|s| s.account.bot_id == account.bot_id);
            let base =
                if account.base_url.is_empty() { self.settings.login_base.clone() } else { account.base_url.clone() };
            let api = Api::new(&base, &self.settings.cdn_base, Some(account.token.clone()));
            if !same_bot || account.saved_at != loaded.session.as_ref().map_or(0, |s| s.account.saved_at) {
                // A new login: its context tokens (the login wiped the old ones).
                *lock(&self.contexts) = Contexts::load(&self.home, self.channel(), &account.bot_id);
                lock(&self.tickets).clear();
            }
            log::info!(target: self.channel(), "using the WeChat login of bot {} (API {base})", account.bot_id);
            loaded.session = Some(Session { account, api });
        }
        loaded.session.clone().ok_or(NoSession::NotLoggedIn)
    }

    /// The fingerprint of the account file when it was last read.
    pub fn account_fingerprint(&self) -> Option<Fingerprint> {
        lock(&self.loaded).fingerprint
    }

    /// A user wrote with `token` (kept in memory until [`Link::save_contexts`]).
    pub fn context_received(&self, user: &str, token: &str, now_ms: u64) -> bool {
        let changed = lock(&self.contexts).received(user, token, now_ms);
        if changed {
            lock(&self.tickets).remove(user);
        }
        changed
    }

    pub fn save_contexts(&self) -> Result<(), crate::error::Error> {
        let contexts = lock(&self.contexts).clone();
        contexts.save(&self.home, self.channel())
    }

    /// The token to echo to `user`, or why a send cannot work.
    fn context_token(&self, user: &str) -> Result<String, Failure> {
        match lock(&self.contexts).get(user) {
            Some(context) => Ok(context.token.clone()),
            None => Err(Failure::NoContext(format!(
                "no context token for {user}: WeChat lets the bot answer only after the user wrote to it"
            ))),
        }
    }

    /// Send one text message to `user`.
    pub fn send_text(&self, user: &str, text: &str) -> Result<(), Failure> {
        self.send_item(user, wire::text_item(text))
    }

    fn send_item(&self, user: &str, item: serde_json::Value) -> Result<(), Failure> {
        let session = self.session().map_err(no_session_failure)?;
        let token = self.context_token(user)?;
        let client_id = wire::client_id(crate::health::wall_ms(), getrandom::u32().unwrap_or(0));
        let body = wire::send_body(user, &token, &client_id, item);
        session.api.post(wire::path::SEND_MESSAGE, &body, SEND_TIMEOUT)?;
        lock(&self.contexts).sent(user);
        if let Err(e) = self.save_contexts() {
            log::warn!(target: self.channel(), "{e}");
        }
        Ok(())
    }

    /// Upload the file at `path` and send it to `user`: as a picture when its bytes are one,
    /// else as a file. Only files under the channel's cwd or its media directory.
    pub fn send_file(&self, user: &str, path: &Path) -> Result<(), Failure> {
        let roots = [self.settings.cwd.clone(), self.media_dir()];
        let real = media::allowed_outgoing(path, &roots).map_err(Failure::Rejected)?;
        let plain = std::fs::read(&real).map_err(|e| Failure::Rejected(format!("{}: {e}", real.display())))?;
        let session = self.session().map_err(no_session_failure)?;
        // Fail before uploading when the user cannot be answered anyway.
        self.context_token(user)?;
        let is_image = media::is_image(media::sniff_mime(&plain, crate::event::AttachmentKind::File));
        let kind = if is_image { wire::UploadKind::Image } else { wire::UploadKind::File };
        let key = crypto::random_key().map_err(Failure::Transient)?;
        let filekey = crypto::to_hex(&crypto::random_key().map_err(Failure::Transient)?);
        let body = wire::get_upload_url_body(&filekey, kind, user, &plain, &key);
        let reply = session.api.post(wire::path::GET_UPLOAD_URL, &body, SEND_TIMEOUT)?;
        let url = wire::upload_url(&session.api.cdn_base, &reply, &filekey)
            .ok_or_else(|| Failure::Rejected(format!("getuploadurl named no upload URL: {reply}")))?;
        let cipher = crypto::encrypt(&key, &plain);
        let mut attempt = 0;
        let download_param = loop {
            attempt += 1;
            match session.api.upload(&url, &cipher, MEDIA_TIMEOUT) {
                Ok(param) => break param,
                Err(Failure::Transient(e)) if attempt < UPLOAD_ATTEMPTS => {
                    log::debug!(target: self.channel(), "{e}; trying the upload again");
                    std::thread::sleep(Duration::from_secs(1 << attempt));
                }
                Err(f) => return Err(f),
            }
        };
        let uploaded = wire::Uploaded { download_param, key, plain_len: plain.len() };
        let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let item = if is_image { wire::image_item(&uploaded) } else { wire::file_item(&uploaded, &name) };
        self.send_item(user, item)
    }

    /// Show "typing…" to `user` (best effort: the caller ignores failures).
    pub fn typing(&self, user: &str) -> Result<(), Failure> {
        let session = self.session().map_err(no_session_failure)?;
        let cached = lock(&self.tickets).get(user).filter(|(_, at)| at.elapsed() < TICKET_LIFE).map(|(t, _)| t.clone());
        let ticket = match cached {
            Some(ticket) => ticket,
            None => {
                let token = self.context_token(user)?;
                let reply =
                    session.api.post(wire::path::GET_CONFIG, &wire::get_config_body(user, &token), SEND_TIMEOUT)?;
                let ticket = wire::typing_ticket(&reply)
                    .ok_or_else(|| Failure::Rejected("getconfig gave no typing_ticket".into()))?;
                lock(&self.tickets).insert(user.to_string(), (ticket.clone(), Instant::now()));
                ticket
            }
        };
        session.api.post(wire::path::SEND_TYPING, &wire::send_typing_body(user, &ticket, true), SEND_TIMEOUT)?;
        Ok(())
    }

    /// Download, decrypt and save the media of `message`: the attachments, and the names of
    /// the files that could not be fetched (the user is told in the message text).
    pub fn fetch_media(&self, api: &Api, message: &Message) -> (Vec<Attachment>, Vec<String>) {
        let mut attachments = Vec::new();
        let mut failed = Vec::new();
        for (n, item) in message.media.iter().enumerate() {
            match self.fetch_one(api, message, n + 1, item) {
                Ok(attachment) => attachments.push(attachment),
                Err(why) => {
                    log::warn!(target: self.channel(), "media {} of message {}: {why}", item.file_name, message.message_id);
                    failed.push(item.file_name.clone());
                }
            }
        }
        (attachments, failed)
    }

    fn fetch_one(&self, api: &Api, message: &Message, n: usize, item: &wire::MediaItem) -> Result<Attachment, String> {
        if item.announced_len.is_some_and(|len| len > media::MAX_MEDIA_BYTES as u64) {
            return Err(format!("larger than the {} MB limit", media::MAX_MEDIA_BYTES >> 20));
        }
        let url = wire::download_url(&api.cdn_base, &item.media).ok_or("no download parameter")?;
        let key = item.media.key().map_err(|e| e.to_string())?;
        // Ciphertext is at most one block longer than the plaintext.
        let cipher = api.download(&url, media::MAX_MEDIA_BYTES + 16, MEDIA_TIMEOUT).map_err(|e| e.to_string())?;
        let plain = match key {
            Some(key) => crypto::decrypt(&key, &cipher).map_err(|e| e.to_string())?,
            None => cipher,
        };
        let mime = media::sniff_mime(&plain, item.kind);
        let name = media::safe_file_name(&item.file_name);
        let file_name = match (item.kind, mime.split('/').nth(1)) {
            (crate::event::AttachmentKind::Image, Some(ext)) => format!("{name}.{ext}"),
            _ => name,
        };
        let received =
            media::Received { sender: &message.from_user_id, message_id: &message.message_id, n, name: &file_name };
        let path = media::save(&self.home, self.channel(), received, &plain).map_err(|e| e.to_string())?;
        Ok(Attachment { kind: item.kind, path, file_name, mime_type: mime.to_string() })
    }
}

/// A missing login as a send failure: the same class as an expired one (not retried).
fn no_session_failure(why: NoSession) -> Failure {
    match why {
        NoSession::NotLoggedIn => Failure::SessionExpired("not logged in".into()),
        NoSession::Unreadable(e) => Failure::SessionExpired(e),
    }
}
