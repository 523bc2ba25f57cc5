//! What the admin page shows and does, for a running service: the daemon publishes channel
//! health and sessions into a shared snapshot; pairing is read from (and changed in) the
//! same files `tether pairing` uses; clearing a conversation goes to the core as an event.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::{Value, json};

use crate::access_files::AccessFiles;
use crate::adapters::admin::{AdminAction, AdminSource};
use crate::config::ChannelConfig;
use crate::event::Inbound;
use crate::health::wall_ms;
use crate::pairing_cli::{self, PairingCommand};

/// The part of the page's state the daemon refreshes: `service`, `channels`, `sessions`.
#[derive(Debug, Default)]
pub struct Published {
    pub state: Value,
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// The daemon's [`AdminSource`].
#[derive(Debug, Clone)]
pub struct DaemonAdmin {
    home: PathBuf,
    published: Arc<Mutex<Published>>,
    inbound: Sender<Inbound>,
    /// The admin page's credential (`admin-token` in the home); `None` turns the page off.
    token: Option<String>,
}

impl DaemonAdmin {
    /// The admin of the service in `home`; makes the admin token there on first start.
    pub fn new(home: PathBuf, inbound: Sender<Inbound>) -> DaemonAdmin {
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
        DaemonAdmin { home, published: Arc::default(), inbound, token }
    }

    /// Replace what the page shows of health and sessions (the daemon calls this on its tick).
    pub fn publish(&self, state: Value, channels: &BTreeMap<String, ChannelConfig>) {
        let mut published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
        published.state = state;
        published.channels = channels.clone();
    }

    fn channel(&self, name: &str) -> Result<ChannelConfig, String> {
        let published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
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
        let (mut state, channels) = {
            let published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
            (published.state.clone(), published.channels.clone())
        };
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
