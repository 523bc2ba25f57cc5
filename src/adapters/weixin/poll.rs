//! The WeChat poll thread: long-polls `getupdates` with the server's cursor, turns each user
//! message into an inbound message (media fetched first), and moves the cursor only after the
//! batch is in the fsynced journal and the users' context tokens are saved: no message is
//! lost or answered twice across restarts, and a restarted tether can answer at once. The
//! cursor file is written lazily ([`crate::adapters::lazy_save_due`], and at stop by the
//! channel's [`CursorFlush`]): a stale one makes the server send again messages the journal
//! knows.
//!
//! An expired login (errcode -14) parks the channel with "run tether weixin-login CHANNEL",
//! logged once; it then waits for the account file to change (a new login is picked up
//! without a restart) and otherwise tries again only every few minutes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::access_files::AccessFiles;
use crate::config::ChannelConfig;
use crate::core::gate::{self, Verdict};
use crate::event::Inbound;
use crate::health::{Probe, wall_ms};
use crate::journal::{Journal, JournalEntry};

use super::account;
use super::api::{self, Api};
use super::link::{Link, NoSession};
use super::wire::{self, Failure};

/// Our wait beyond the server's hold before calling a poll dead.
const POLL_MARGIN: Duration = Duration::from_secs(10);
/// After an expired login, try the old one again this seldom (a new login is noticed at once).
pub const EXPIRED_RETRY: Duration = Duration::from_secs(300);
/// How often a waiting channel looks at the account file.
const ACCOUNT_CHECK: Duration = Duration::from_secs(1);

/// The pause after `consecutive` failed polls (both reference plugins: 2 s, and 30 s after
/// three in a row).
pub fn retry_delay(consecutive: u32) -> Duration {
    if consecutive >= 3 { Duration::from_secs(30) } else { Duration::from_secs(2) }
}

pub struct Poller {
    pub link: Arc<Link>,
    pub config: ChannelConfig,
    pub inbound: Sender<Inbound>,
    pub stop: Receiver<()>,
    pub probe: Probe,
    pub journal: Arc<Journal>,
    pub cursor: Arc<Mutex<CursorKeeper>>,
}

/// The cursor as polled and as last written to `<channel>-weixin-cursor.json`; shared by the
/// poll thread and the channel's [`CursorFlush`].
pub struct CursorKeeper {
    home: PathBuf,
    channel: String,
    /// The login the cursor belongs to: bot id and login time (a new login starts afresh).
    login: Option<(String, u64)>,
    current: String,
    saved: String,
    saved_at: Option<Instant>,
}

impl CursorKeeper {
    pub fn new(home: PathBuf, channel: &str) -> CursorKeeper {
        CursorKeeper {
            home,
            channel: channel.to_string(),
            login: None,
            current: String::new(),
            saved: String::new(),
            saved_at: None,
        }
    }

    /// The cursor to poll with for `login`: the one held, or for a login not seen yet in this
    /// run the one saved for its bot (what a cursor of the previous login had not written is
    /// dropped: it is not this login's).
    fn position(&mut self, login: &(String, u64)) -> String {
        if self.login.as_ref() != Some(login) {
            let saved = account::load_cursor(&self.home, &self.channel, &login.0);
            if !saved.is_empty() {
                log::info!(target: self.channel.as_str(), "resuming from the saved cursor");
            }
            (self.current, self.saved, self.saved_at) = (saved.clone(), saved, None);
            self.login = Some(login.clone());
        }
        self.current.clone()
    }

    /// Take the server's next cursor; write it when due.
    fn moved(&mut self, next: String, now: Instant) {
        self.current = next;
        if self.current != self.saved && crate::adapters::lazy_save_due(self.saved_at, now) {
            self.save(now);
        }
    }

    /// Write the cursor if the file is behind (at stop).
    pub fn flush(&mut self) {
        if self.current != self.saved {
            self.save(Instant::now());
        }
    }

    fn save(&mut self, now: Instant) {
        let Some((bot, _)) = &self.login else { return };
        match account::save_cursor(&self.home, &self.channel, bot, &self.current) {
            Ok(()) => self.saved = self.current.clone(),
            // Not fatal: the journal knows these messages if the server sends them again.
            Err(e) => log::warn!(target: self.channel.as_str(), "{e}"),
        }
        self.saved_at = Some(now);
    }
}

/// The channel's guard ([`crate::adapters::RunningChannel::guard`]): dropped when the channel
/// stops, it writes the cursor the poll thread took last, since that thread may be inside a
/// long poll the stop cannot interrupt.
pub struct CursorFlush(pub Arc<Mutex<CursorKeeper>>);

impl Drop for CursorFlush {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).flush();
    }
}

/// Wait `delay` unless asked to stop; true when the loop should end.
fn pause(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}

fn stopped(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

impl Poller {
    fn target(&self) -> &str {
        self.link.channel()
    }

    fn cursor(&self) -> MutexGuard<'_, CursorKeeper> {
        self.cursor.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn run(self) {
        let removed = super::media::clean_old(&self.link.home, self.target());
        if removed > 0 {
            log::info!(target: self.target(), "removed {removed} media files older than 7 days");
        }
        let mut failures = 0u32;
        let mut hold = wire::DEFAULT_HOLD;
        let mut parked: Option<String> = None;
        loop {
            if stopped(&self.stop) {
                return;
            }
            let session = match self.link.session() {
                Ok(session) => session,
                Err(why) => {
                    let reason = match why {
                        NoSession::NotLoggedIn => format!(
                            "not logged in to WeChat: run `tether weixin-login {}` (looked for {})",
                            self.target(),
                            account::account_path(&self.link.home, self.target()).display()
                        ),
                        NoSession::Unreadable(e) => format!("{e}; run `tether weixin-login {}`", self.target()),
                    };
                    self.park(&mut parked, reason);
                    if self.wait_for_login(Duration::from_secs(3600)) {
                        return;
                    }
                    continue;
                }
            };
            let bot = session.account.bot_id.clone();
            let login = (bot.clone(), session.account.saved_at);
            let position = self.cursor().position(&login);
            let result =
                session.api.post(wire::path::GET_UPDATES, &wire::get_updates_body(&position), hold + POLL_MARGIN);
            match result {
                Ok(reply) => {
                    self.resume(&mut parked, failures);
                    failures = 0;
                    let updates = wire::parse_updates(&reply);
                    hold = updates.hold.unwrap_or(wire::DEFAULT_HOLD);
                    match self.take(&session.api, updates) {
                        Ok(Some(next)) => self.cursor().moved(next, Instant::now()),
                        Ok(None) => {}
                        Err(error) => {
                            // The cursor did not move: the server sends these messages again.
                            if self.probe.failed(&error) {
                                log::error!(target: self.target(), "{error}; not taking messages until it can");
                            }
                            if pause(&self.stop, retry_delay(3)) {
                                return;
                            }
                        }
                    }
                }
                // Our own timeout at the end of a long poll: nothing new, same cursor.
                Err(f) if api::is_timeout(&f) => self.resume(&mut parked, failures),
                Err(Failure::SessionExpired(detail)) => {
                    let reason = format!(
                        "the WeChat login expired or was replaced ({detail}): run `tether weixin-login {}`",
                        self.target()
                    );
                    self.park(&mut parked, reason);
                    if self.wait_for_login(EXPIRED_RETRY) {
                        return;
                    }
                }
                Err(failure) => {
                    failures += 1;
                    let error = format!("getupdates failed: {failure}");
                    self.probe.report(self.target(), &error);
                    if pause(&self.stop, retry_delay(failures)) {
                        return;
                    }
                }
            }
        }
    }

    /// Say once why the channel cannot work, and show it unhealthy.
    fn park(&self, parked: &mut Option<String>, reason: String) {
        if parked.as_deref() != Some(reason.as_str()) {
            log::error!(target: self.target(), "{reason}");
            self.probe.park(&reason);
            *parked = Some(reason);
        }
    }

    /// A poll came back: healthy again (after a new login, say so).
    fn resume(&self, parked: &mut Option<String>, failures: u32) {
        if parked.take().is_some() {
            log::info!(target: self.target(), "WeChat answers again; polling");
            self.probe.with(|health, _| health.parked = None);
        } else if failures > 0 {
            log::info!(target: self.target(), "polling again after {failures} failed attempts");
        }
        self.probe.ok();
    }

    /// Wait until the account file changes or `at_most` passes; true when asked to stop.
    fn wait_for_login(&self, at_most: Duration) -> bool {
        let path = account::account_path(&self.link.home, self.target());
        let seen = self.link.account_fingerprint();
        let deadline = Instant::now() + at_most;
        while Instant::now() < deadline {
            if pause(&self.stop, ACCOUNT_CHECK) {
                return true;
            }
            if crate::store::fingerprint(&path) != seen {
                return false;
            }
        }
        false
    }

    /// Journal one batch, save the context tokens, then pass the new messages on; returns the
    /// new cursor, for the caller to move to. On a journal error nothing moves.
    fn take(&self, api: &Api, updates: wire::Updates) -> Result<Option<String>, String> {
        let now = wall_ms();
        let mut entries = Vec::new();
        let mut tokens_changed = false;
        for raw in &updates.messages {
            // Its id only, in the log: the text is a stranger's.
            let id = raw.get("message_id").or_else(|| raw.get("seq")).map(|v| v.to_string()).unwrap_or_default();
            let input = crate::adapters::Fingerprint::of(&[self.target().as_bytes(), id.as_bytes()]);
            let Some(message) = crate::adapters::contain(input, || wire::parse_message(raw)) else {
                log::warn!(target: self.target(), "skipped message {id}: it could not be decoded");
                continue;
            };
            let Some(message) = message else { continue };
            if let Some(token) = &message.context_token {
                tokens_changed |= self.link.context_received(&message.from_user_id, token, now);
            }
            let skeleton = wire::to_inbound(self.target(), &message, Vec::new(), &[]);
            let (attachments, failed) = if message.media.is_empty() {
                (Vec::new(), Vec::new())
            } else if self.may_fetch_media(&skeleton) {
                self.link.fetch_media(api, &message)
            } else {
                log::debug!(target: self.target(), "media of {} not fetched: the sender is not allowed", message.from_user_id);
                (Vec::new(), Vec::new())
            };
            let inbound = wire::to_inbound(self.target(), &message, attachments, &failed);
            self.probe.received();
            entries.push(JournalEntry { sent_at_ms: inbound.sent_at_ms.unwrap_or(now), message: inbound });
        }
        let fresh = self
            .journal
            .record(entries)
            .map_err(|e| format!("cannot write the journal {}: {e}", self.journal.path().display()))?;
        if tokens_changed && let Err(e) = self.link.save_contexts() {
            // Not fatal: the token is in memory; a restart before the next message loses it.
            log::warn!(target: self.target(), "{e}");
        }
        for message in fresh {
            log::debug!(target: self.target(), "message {:?} from {}", message.message_id, message.sender_id);
            if self.inbound.send(Inbound::Message(message)).is_err() {
                break; // The daemon is gone; the journal replays these at the next start.
            }
        }
        Ok(updates.cursor)
    }

    /// Files are fetched only for senders the gates would pass: nothing from a stranger is
    /// stored (the pairing request itself needs no file).
    fn may_fetch_media(&self, message: &crate::event::InboundMessage) -> bool {
        let approvals = AccessFiles::new(&self.link.home, self.target())
            .read()
            .map(|book| gate::Approvals {
                sender: book.is_approved(&message.sender_id),
                group: book.is_group_approved(&message.chat_id),
            })
            .unwrap_or_default();
        matches!(gate::check(&self.config, message, approvals), Verdict::Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays() {
        let delays: Vec<u64> = (1..=5).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 2, 30, 30, 30]);
    }

    #[test]
    fn the_cursor_is_written_at_first_then_when_due_and_at_stop() {
        let home = std::env::temp_dir().join(format!("tether-wx-cursor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let saved = || account::load_cursor(&home, "wx", "bot1");
        let mut keeper = CursorKeeper::new(home.clone(), "wx");
        let t0 = Instant::now();
        assert_eq!(keeper.position(&("bot1".into(), 1)), "");
        keeper.moved("c1".into(), t0);
        assert_eq!(saved(), "c1", "the first move is written at once");
        keeper.moved("c2".into(), t0 + Duration::from_secs(1));
        assert_eq!((saved(), keeper.position(&("bot1".into(), 1))), ("c1".to_string(), "c2".to_string()));
        keeper.moved("c3".into(), t0 + crate::adapters::LAZY_SAVE_EVERY);
        assert_eq!(saved(), "c3");
        keeper.moved("c4".into(), t0 + crate::adapters::LAZY_SAVE_EVERY);
        keeper.flush();
        assert_eq!(saved(), "c4", "written at stop");
        // A new login starts from what is saved for its bot; nothing of the old one is pending.
        keeper.moved("c5".into(), t0 + crate::adapters::LAZY_SAVE_EVERY);
        assert_eq!(keeper.position(&("bot1".into(), 2)), "c4");
        keeper.flush();
        assert_eq!(saved(), "c4", "the old login's unwritten cursor was dropped");
        let _ = std::fs::remove_dir_all(&home);
    }
}
