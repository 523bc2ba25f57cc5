//! `tether start`: wires the threads together and runs the core loop. Starts the agents
//! (waiting until each answers `initialize`), then the channels, then feeds the core every
//! inbound message, agent event and deadline, and carries out the actions it returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crossbeam_channel::{Sender, at, bounded, never, select, tick, unbounded};

use crate::access_files::{self, epoch_ms};
use crate::acp::supervisor::{Agent, CrashWindow, Restart, agent_spec};
use crate::adapters;
use crate::config::{ChannelKind, Config, SenderPolicy};
use crate::core::{Action, Core, Event};
use crate::error::Error;
use crate::event::{AgentEvent, Inbound, Outbound};

/// Run the named channels (all when `only` is empty) until the process is stopped.
/// State files (pairing) live in `home`.
pub fn run(config: Config, only: &[String], home: &Path) -> Result<(), Error> {
    let config = select_channels(config, only)?;
    let (agent_tx, agent_rx) = bounded::<(String, AgentEvent)>(1024);
    let mut agents = BTreeMap::new();
    for name in config.channels.values().map(|c| c.agent.clone()).collect::<std::collections::BTreeSet<_>>() {
        let spec = agent_spec(&config, &name)?;
        let agent = Agent::start(spec, agent_tx.clone())?;
        agents.insert(name, agent);
    }
    let mut ready = Vec::new();
    for (name, agent) in &agents {
        ready.push(Event::Agent { agent: name.clone(), event: agent.wait_ready(&agent_rx)? });
    }

    let (inbound_tx, inbound_rx) = bounded::<Inbound>(1024);
    let mut outboxes: BTreeMap<String, Sender<Outbound>> = BTreeMap::new();
    let (_stop_tx, stop_rx) = bounded::<()>(0);
    // Web chat servers stop when their handle is dropped: keep them for the life of the loop.
    let mut web_servers = Vec::new();
    for channel in config.channels.values() {
        let (out_tx, out_rx) = unbounded();
        match channel.kind {
            ChannelKind::Telegram => adapters::telegram::spawn(channel, inbound_tx.clone(), out_rx, stop_rx.clone())?,
            ChannelKind::Webchat => {
                let server = adapters::webchat::spawn(channel, inbound_tx.clone(), out_rx)?;
                log::info!(target: channel.name.as_str(), "web chat on {}", server.url());
                println!("{}: web chat on {}", channel.name, server.url());
                web_servers.push(server);
            }
            other => {
                return Err(Error::Other(format!(
                    "{}: channel \"{}\": type {} is not available in this build yet",
                    config.path.display(),
                    channel.name,
                    other.as_str()
                )));
            }
        }
        log::info!(target: channel.name.as_str(), "channel started ({})", channel.kind.as_str());
        if channel.permissions == crate::config::PermissionPolicy::Allow {
            log::warn!(target: channel.name.as_str(), "permissions is \"allow\": the agent may run any tool (shell commands, file edits) without asking anyone");
        }
        outboxes.insert(channel.name.clone(), out_tx);
    }

    let mut core = Core::new(&config);
    for event in ready {
        // Nothing to act on yet: this tells the core what each agent can do.
        let _ = core.handle(event, Instant::now());
    }
    // Pairing state: read at start, then re-read when `tether pairing` changes it.
    let pairing_channels = config.channels.values().filter(|c| c.sender_policy == SenderPolicy::Pairing);
    let mut access = access_files::Watcher::new(home, pairing_channels.map(|c| c.name.as_str()));
    core.set_wall_clock(epoch_ms());
    for event in access.load_all()? {
        core.handle(event, Instant::now());
    }
    let access_tick = if access.is_empty() { never() } else { tick(access_files::POLL_INTERVAL) };
    let mut restarts: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let next = [core.next_deadline(), restarts.values().min().copied()].into_iter().flatten().min();
        let deadline = next.map_or_else(never, at);
        let event = select! {
            recv(inbound_rx) -> msg => match msg {
                Ok(inbound) => Event::Inbound(inbound),
                Err(_) => return Err(Error::Other("every channel stopped".into())),
            },
            recv(agent_rx) -> msg => match msg {
                Ok((agent, event)) => {
                    if let (AgentEvent::Exited { reason }, Some(a)) = (&event, agents.get_mut(&agent)) {
                        let now = Instant::now();
                        match a.crashed(now) {
                            Restart::At(at) => {
                                log::error!(target: "acp", "agent \"{agent}\" {reason}; restarting in {} ms", (at - now).as_millis());
                                restarts.insert(agent.clone(), at);
                            }
                            Restart::GiveUp { crashes } => {
                                return Err(Error::Agent(format!(
                                    "agent \"{agent}\" crashed {crashes} times within {} s (last: it {reason}); stopping so the init system can restart tether",
                                    CrashWindow::SPAN.as_secs()
                                )));
                            }
                        }
                    }
                    if let (AgentEvent::Ready { .. }, Some(a)) = (&event, agents.get_mut(&agent)) {
                        a.ready();
                    }
                    Event::Agent { agent, event }
                }
                Err(_) => continue,
            },
            recv(deadline) -> _ => Event::Tick,
            recv(access_tick) -> _ => Event::Tick,
        };
        let now = Instant::now();
        let due: Vec<String> = restarts.iter().filter(|(_, t)| **t <= now).map(|(n, _)| n.clone()).collect();
        for name in due {
            restarts.remove(&name);
            let Some(agent) = agents.get_mut(&name) else { continue };
            if let Err(e) = agent.restart(agent_tx.clone()) {
                match agent.crashed(now) {
                    Restart::At(at) => {
                        log::error!(target: "acp", "{e}; trying again in {} ms", (at - now).as_millis());
                        restarts.insert(name, at);
                    }
                    Restart::GiveUp { .. } => return Err(e),
                }
            }
        }
        core.set_wall_clock(epoch_ms());
        let mut events = vec![event];
        events.extend(access.poll(now));
        for action in events.into_iter().flat_map(|event| core.handle(event, now)) {
            match action {
                Action::Send(out) => match outboxes.get(out.channel()) {
                    Some(tx) => {
                        let _ = tx.send(out);
                    }
                    None => log::warn!(target: "core", "no channel {} for an outbound message", out.channel()),
                },
                Action::Agent { agent, request } => match agents.get(&agent) {
                    Some(a) => a.send(request),
                    None => log::error!(target: "core", "no agent {agent}"),
                },
                Action::SavePairingRequest { channel, request } => access.save_request(&channel, request, epoch_ms()),
            }
        }
    }
}

fn select_channels(mut config: Config, only: &[String]) -> Result<Config, Error> {
    for name in only {
        if !config.channels.contains_key(name) {
            return Err(Error::Other(format!(
                "channel \"{name}\" not found in {}: add it under \"channels\", or pick one of: {}",
                config.path.display(),
                config.channels.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if !only.is_empty() {
        config.channels.retain(|name, _| only.contains(name));
    }
    for channel in config.channels.values() {
        if !channel.cwd.is_dir() {
            return Err(Error::Other(format!(
                "{}: channel \"{}\", key \"cwd\": {} is not an existing directory: create it or fix the path",
                config.path.display(),
                channel.name,
                channel.cwd.display()
            )));
        }
    }
    if config.channels.is_empty() {
        return Err(Error::Other(format!(
            "no channels configured in {}: add entries under \"channels\" (see README), or run `tether demo`",
            config.path.display()
        )));
    }
    Ok(config)
}
