//! The adapter seam: the one way the daemon starts a platform's channel, and what the core may
//! know about a platform (its [`Capabilities`], never its name).
//!
//! A platform is a folder `src/adapters/<name>/` that defines a [`Platform`] and one line in
//! [`PLATFORMS`]. It parses its own config keys, starts its threads through the
//! [`Supervisor`] it is given (so the daemon learns when any of them ends, panics included,
//! and restarts the channel), turns platform traffic into [`Inbound`] events, and delivers
//! [`Outbound`] actions.

pub(crate) mod admin;
mod contain;
pub(crate) mod dingtalk;
pub mod discord;
pub(crate) mod exec;
pub mod outbox;
pub mod pacing;
pub mod telegram;
pub(crate) mod uploads;
pub mod webchat;
pub(crate) mod webhook;
pub(crate) mod weixin;

pub use contain::{Fingerprint, POISONED_FILE, contain, contained_panics, remember_poisoned_in};

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::{ChannelConfig, ConfigError, PlatformKeys, PlatformSettings};
use crate::error::Error;
use crate::event::{Inbound, Outbound};
use crate::health::Probe;
use crate::journal::Journal;
use admin::AdminSource;

/// Every platform this build has. Adding a platform adds one line here.
pub const PLATFORMS: &[&Platform] = &[
    &telegram::PLATFORM,
    &webchat::PLATFORM,
    &discord::PLATFORM,
    &weixin::PLATFORM,
    &dingtalk::PLATFORM,
    &exec::PLATFORM,
    &webhook::PLATFORM,
];

/// A chat platform, as the rest of tether sees it.
pub struct Platform {
    /// The config's `type` value, e.g. `"telegram"`.
    pub name: &'static str,
    /// The platform's own config keys; the common keys are parsed by `config.rs`.
    pub keys: &'static [&'static str],
    /// Read and check the platform's keys (errors name the file, channel, key and value).
    pub parse: fn(&PlatformKeys<'_>) -> Result<PlatformSettings, ConfigError>,
    pub capabilities: Capabilities,
    /// The channel's loop reports progress by itself (a long poll, a socket), so silence
    /// means it is stuck; a local server that waits for browsers does not.
    pub heartbeats: bool,
    /// Start the channel's threads.
    pub spawn: fn(&ChannelConfig, ChannelIo) -> Result<RunningChannel, Error>,
}

/// Platforms are one per name.
impl PartialEq for Platform {
    fn eq(&self, other: &Platform) -> bool {
        self.name == other.name
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Platform({})", self.name)
    }
}

/// The platform registered as `name` among `platforms`.
pub fn find(platforms: &[&'static Platform], name: &str) -> Option<&'static Platform> {
    platforms.iter().copied().find(|p| p.name == name)
}

/// How a platform shows text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Telegram's HTML subset.
    TelegramHtml,
    /// Markdown as the agent writes it (Discord, DingTalk, the web chat render it).
    Markdown,
    /// No formatting at all.
    Plain,
}

/// What a platform can do: the core reads these, never a platform's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Shows the answer live while the turn runs ([`Outbound::Draft`]); block streaming is
    /// then pointless.
    pub live_drafts: bool,
    /// [`Outbound::Edit`] changes a sent message in place.
    pub edits: bool,
    /// [`Outbound::Ask`] shows buttons.
    pub buttons: bool,
    /// The longest message the platform takes, in its own units.
    pub max_message_len: usize,
    pub markup: Markup,
    /// Repeat "typing…" this often while a turn runs; `None`: the platform has no indicator.
    pub typing_refresh: Option<Duration>,
    /// Inbound messages go through the journal before the platform's cursor moves.
    pub journaled: bool,
    /// Commands may be addressed to one bot as `/cmd@botname` (Telegram groups), and `/start`
    /// is the platform's first-contact command.
    pub addressed_commands: bool,
}

/// Everything a channel's threads share with the daemon.
pub struct ChannelIo {
    /// To the core thread.
    pub inbound: Sender<Inbound>,
    /// From the core, for a platform that delivers replies itself (the web chat); closes when
    /// the channel must stop (deliver what is queued, then end). A platform that uses the
    /// shared [`outbox`] leaves it unread: the core reaches its [`outbox::Intake`] instead.
    pub outbox: Receiver<Outbound>,
    /// Disconnects when the channel must stop.
    pub stop: Receiver<()>,
    pub probe: Probe,
    /// This channel's journal, when its platform is journaled.
    pub journal: Option<Arc<Journal>>,
    /// TETHER_HOME: cursors, tokens, media.
    pub home: PathBuf,
    /// The operator's view, for a platform that serves the admin page (the web chat).
    pub admin: Arc<dyn AdminSource>,
    pub supervisor: Supervisor,
}

/// How often a platform's position file (Telegram's offset, WeChat's cursor, the newest
/// Discord message seen per channel) is written at most while messages come; once more when
/// the channel stops.
pub const LAZY_SAVE_EVERY: Duration = Duration::from_secs(30);

/// Whether a position file is written now: the first change of a run at once, then at most
/// every [`LAZY_SAVE_EVERY`]. Lazy is safe because a position moves only past messages already
/// journaled: after a crash a stale file makes the platform (or tether's catch-up) bring back
/// messages the journal recognises (it keeps the marks of the last 1,024 answered). Writing it
/// on every batch cost two or three disk flushes each.
pub fn lazy_save_due(last_save: Option<Instant>, now: Instant) -> bool {
    last_save.is_none_or(|at| now.saturating_duration_since(at) >= LAZY_SAVE_EVERY)
}

/// What the daemon keeps of a started channel.
#[derive(Default)]
pub struct RunningChannel {
    /// How people reach it, as a phrase printed and logged at start ("web chat on http://…").
    pub reached_at: Option<String>,
    /// Printed on the terminal after it, never logged (an address with a credential in it).
    pub private_note: Option<String>,
    /// Disconnects once delivery has drained what was queued (the platform's sender thread).
    pub drained: Option<Receiver<()>>,
    /// Where the core's replies go when the platform uses the shared [`outbox`] (else to
    /// [`ChannelIo::outbox`]); dropped to close it.
    pub intake: Option<outbox::Intake>,
    /// Dropped to stop what the stop channel cannot reach (a listening server).
    pub guard: Option<Box<dyn Send>>,
}

impl RunningChannel {
    /// A channel that delivers through the shared [`outbox`] it started.
    pub fn delivering(outbox: outbox::Outbox) -> RunningChannel {
        RunningChannel { drained: Some(outbox.drained), intake: Some(outbox.intake), ..RunningChannel::default() }
    }
}

/// How one of a channel's threads ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadEnd {
    pub thread: String,
    pub panicked: bool,
}

/// Starts a channel's threads so that each reports its end (a panic included) to the daemon.
#[derive(Debug, Clone)]
pub struct Supervisor {
    ended: Sender<ThreadEnd>,
}

impl Supervisor {
    /// A supervisor and the receiver its threads report their ends to.
    pub fn new() -> (Supervisor, Receiver<ThreadEnd>) {
        let (ended, rx) = crossbeam_channel::unbounded();
        (Supervisor { ended }, rx)
    }

    /// Start a named thread (256 KiB of stack) that reports when it ends.
    pub fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let report = EndReport { ended: self.ended.clone(), thread: name.clone() };
        thread::Builder::new()
            .name(name.clone())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _report = report;
                f();
            })
            .map(drop)
            .map_err(|e| Error::Other(format!("cannot start thread {name}: {e}")))
    }
}

/// Reports a thread's end when dropped: at its normal return, or while a panic unwinds it.
struct EndReport {
    ended: Sender<ThreadEnd>,
    thread: String,
}

impl Drop for EndReport {
    fn drop(&mut self) {
        let end = ThreadEnd { thread: std::mem::take(&mut self.thread), panicked: thread::panicking() };
        let _ = self.ended.send(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reports_its_end_and_its_panic() {
        let (supervisor, ended) = Supervisor::new();
        supervisor.spawn("quiet".into(), || {}).unwrap();
        let end = ended.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(end, ThreadEnd { thread: "quiet".into(), panicked: false });
        supervisor.spawn("loud".into(), || panic!("boom")).unwrap();
        let end = ended.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(end, ThreadEnd { thread: "loud".into(), panicked: true });
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in PLATFORMS.iter().enumerate() {
            assert!(PLATFORMS.iter().skip(i + 1).all(|b| b.name != a.name), "{} twice", a.name);
        }
    }
}

#[cfg(test)]
mod lazy_save_tests {
    use super::*;

    #[test]
    fn a_position_is_written_at_first_then_at_most_every_30_s() {
        let t0 = Instant::now();
        let cases = [
            (None, 0, true),
            (Some(0), 0, false),
            (Some(0), 29_999, false),
            (Some(0), 30_000, true),
            (Some(0), 90_000, true),
        ];
        for (last, now_ms, due) in cases {
            let last = last.map(|ms| t0 + Duration::from_millis(ms));
            assert_eq!(lazy_save_due(last, t0 + Duration::from_millis(now_ms)), due, "{last:?} {now_ms}");
        }
    }
}
