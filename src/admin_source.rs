//! What the admin page shows and does, for a running service: the daemon publishes channel
//! health and sessions into a shared snapshot when the page asks for it (nothing is built
//! while no page looks); pairing is read from (and changed in) the same files `tether
//! pairing` uses; clearing a conversation goes to the core as an event.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde_json::{Value, json};

use crate::access_files::AccessFiles;
use crate::adapters::admin::{AdminAction, AdminSource};
use crate::config::ChannelConfig;
use crate::event::Inbound;
use crate::health::wall_ms;
use crate::pairing_cli::{self, PairingCommand};
use crate::vec_map::VecMap;

/// How long a state request waits for the daemon's fresh snapshot before it answers with
/// the last one (a daemon busy for that long is rare; the page asks again in 3 s).
const FRESH_WAIT: Duration = Duration::from_secs(1);

/// The part of the page's state the daemon refreshes: `service`, `channels`, `sessions`.
#[derive(Debug, Default)]
pub struct Published {
    pub state: Value,
    pub channels: VecMap<String, ChannelConfig>,
    /// Counts the daemon's publications: a request waits for the next one.
    generation: u64,
}

/// The daemon's [`AdminSource`].
#[derive(Debug, Clone)]
pub struct DaemonAdmin {
    home: PathBuf,
    published: Arc<(Mutex<Published>, Condvar)>,
    /// Asks the daemon for a fresh snapshot ([`DaemonAdmin::new`] returns the other end).
    wanted: Sender<()>,
    inbound: Sender<Inbound>,
    /// The admin page's credential (`admin-token` in the home); `None` turns the page off.
    token: Option<String>,
}

impl DaemonAdmin {
    /// The admin of the service in `home`; makes the admin token there on first start. The
    /// receiver gets a message when the page wants a fresh state: the daemon then calls
    /// [`DaemonAdmin::publish`] (and never builds the state for nobody on its tick).
    pub fn new(home: PathBuf, inbound: Sender<Inbound>) -> (DaemonAdmin, Receiver<()>) {
        let token = match crate::admin_token::load_or_create(&home) {
            Ok(token) => {
                crate::redact::register(&token);
                Some(token)
            }
            Err(e) => {
                log::warn!(target: "tether", "{e}; the admin page stays off");
                None
            }
        };
        // One slot: requests that come while one is pending are answered by the same snapshot.
        let (wanted, wanted_rx) = bounded(1);
        (DaemonAdmin { home, published: Arc::default(), wanted, inbound, token }, wanted_rx)
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replace what the page shows of health and sessions (the daemon calls this when asked),
    /// and the channels' configs when they changed (at start and reload: not copied otherwise).
    pub fn publish(&self, state: Value, channels: Option<&VecMap<String, ChannelConfig>>) {
        let mut published = self.lock();
        published.state = state;
        if let Some(channels) = channels {
            published.channels = channels.clone();
        }
        published.generation += 1;
        self.published.1.notify_all();
    }

    /// Ask the daemon for a fresh snapshot and wait for it (at most `within`); then the
    /// published state and channels.
    fn fresh(&self, within: Duration) -> (Value, VecMap<String, ChannelConfig>) {
        let published = self.lock();
        let seen = published.generation;
        let _ = self.wanted.try_send(());
        let (published, _) = self
            .published
            .1
            .wait_timeout_while(published, within, |p| p.generation == seen)
            .unwrap_or_else(PoisonError::into_inner);
        (published.state.clone(), published.channels.clone())
    }

    fn channel(&self, name: &str) -> Result<ChannelConfig, String> {
        let published = self.lock();
        published.channels.get(name).cloned().ok_or_else(|| format!("no channel \"{name}\" is running"))
    }

    fn pairing(&self, command: PairingCommand, client: &str) -> Result<String, String> {
        let channel = self.channel(command.channel())?;
        let files = AccessFiles::new(&self.home, &channel.name);
        let decision = pairing_cli::decision(&command, &files, wall_ms());
        let report = pairing_cli::execute(&command, &files, Some(&channel), wall_ms()).map_err(|e| e.to_string())?;
        if let (Some(decision), 0) = (decision, report.status) {
            // Only the holder of the admin token gets here.
            let by = crate::audit::Actor::AdminPage { client: client.to_string() };
            crate::audit_writer::record(decision.by(by));
        }
        let text = format!("{}{}", report.stdout, report.stderr).trim().to_string();
        if report.status == 0 { Ok(text) } else { Err(text) }
    }
}

impl AdminSource for DaemonAdmin {
    fn state(&self) -> Value {
        let (mut state, channels) = self.fresh(FRESH_WAIT);
        let now = wall_ms();
        let pairing: Vec<Value> = channels
            .values()
            .filter(|c| c.uses_pairing())
            .map(|c| match AccessFiles::new(&self.home, &c.name).read() {
                Ok(book) => json!({
                    "channel": c.name,
                    // No codes: the person who asked tells the operator theirs, so a page
                    // that leaks cannot approve anyone.
                    "pending": book.live(now).map(|r| json!({
                        "senderId": r.sender_id, "senderName": r.sender_name, "createdAt": r.created_at,
                        "group": r.group(),
                    })).collect::<Vec<_>>(),
                    "approved": book.approved(),
                    "approvedGroups": book.approved_groups(),
                }),
                Err(e) => json!({"channel": c.name, "error": e.to_string(), "pending": [], "approved": []}),
            })
            .collect();
        if let Some(map) = state.as_object_mut() {
            map.insert("pairing".into(), Value::Array(pairing));
        }
        state
    }

    fn admin_token(&self) -> Option<String> {
        self.token.clone()
    }

    fn act(&self, action: AdminAction) -> Result<String, String> {
        self.act_from(action, "unknown address")
    }

    fn act_from(&self, action: AdminAction, client: &str) -> Result<String, String> {
        match action {
            AdminAction::Approve { channel, code } => self.pairing(PairingCommand::Approve { channel, code }, client),
            AdminAction::Deny { channel, code } => self.pairing(PairingCommand::Deny { channel, code }, client),
            AdminAction::Revoke { channel, user } => self.pairing(PairingCommand::Revoke { channel, user }, client),
            AdminAction::ClearSession { key } => {
                match self.inbound.send_timeout(Inbound::OperatorClear { key: key.clone() }, Duration::from_secs(5)) {
                    Ok(()) => Ok(format!("Conversation {key} cleared.")),
                    Err(_) => Err("the service is busy; try again".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_page_asks_the_daemon_and_gets_a_fresh_state() {
        let home = std::env::temp_dir().join(format!("tether-admin-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let (inbound, _inbound_rx) = bounded(1);
        let (admin, wanted) = DaemonAdmin::new(home.clone(), inbound);
        admin.publish(json!({"n": 0}), Some(&VecMap::new()));
        assert!(wanted.try_recv().is_err(), "nothing is asked while no page looks");
        let daemon = {
            let admin = admin.clone();
            std::thread::spawn(move || {
                wanted.recv_timeout(Duration::from_secs(5)).unwrap();
                admin.publish(json!({"n": 1}), None);
                wanted
            })
        };
        assert_eq!(admin.state()["n"], 1, "the snapshot made for this request");
        let wanted = daemon.join().unwrap();
        // A daemon that does not answer: the last snapshot, once the wait is over.
        let started = Instant::now();
        assert_eq!(admin.fresh(Duration::from_millis(100)).0["n"], 1);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(wanted.try_recv().is_ok(), "it was asked");
        let _ = std::fs::remove_dir_all(&home);
    }
}
