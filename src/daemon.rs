//! `tether start`: wires the threads together and runs the core loop. Starts the agents
//! (waiting until each answers `initialize`), then the channels, then feeds the core every
//! inbound message, agent event and deadline, and carries out the actions it returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, never, select, unbounded};

use crate::acp::process::{self, AgentHandle, AgentSpec};
use crate::adapters;
use crate::backoff::Backoff;
use crate::config::{ChannelKind, Config};
use crate::core::{Action, Core, Event};
use crate::error::Error;
use crate::event::{AgentEvent, AgentRequest, Inbound, Outbound};

/// Run the named channels (all when `only` is empty) until the process is stopped.
pub fn run(config: Config, only: &[String]) -> Result<(), Error> {
    let config = select_channels(config, only)?;
    let (agent_tx, agent_rx) = bounded::<(String, AgentEvent)>(1024);
    let mut agents = BTreeMap::new();
    for name in config.channels.values().map(|c| c.agent.clone()).collect::<std::collections::BTreeSet<_>>() {
        let spec = agent_spec(&config, &name)?;
        let agent = Agent::start(spec, agent_tx.clone())?;
        agents.insert(name, agent);
    }
    for agent in agents.values() {
        agent.wait_ready(&agent_rx)?;
    }

    let (inbound_tx, inbound_rx) = bounded::<Inbound>(1024);
    let mut outboxes: BTreeMap<String, Sender<Outbound>> = BTreeMap::new();
    let (_stop_tx, stop_rx) = bounded::<()>(0);
    for channel in config.channels.values() {
        let (out_tx, out_rx) = unbounded();
        match channel.kind {
            ChannelKind::Telegram => adapters::telegram::spawn(channel, inbound_tx.clone(), out_rx, stop_rx.clone())?,
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
        outboxes.insert(channel.name.clone(), out_tx);
    }

    let mut core = Core::new(&config);
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
                    if let AgentEvent::Exited { reason } = &event {
                        let delay = agents.get_mut(&agent).map_or(Duration::from_secs(3), |a| a.backoff.next_delay());
                        log::error!(target: "acp", "agent \"{agent}\" {reason}; restarting in {} ms", delay.as_millis());
                        restarts.insert(agent.clone(), Instant::now() + delay);
                    }
                    if let (AgentEvent::Ready { .. }, Some(a)) = (&event, agents.get_mut(&agent)) {
                        a.backoff.reset();
                    }
                    Event::Agent { agent, event }
                }
                Err(_) => continue,
            },
            recv(deadline) -> _ => Event::Tick,
        };
        let now = Instant::now();
        let due: Vec<String> = restarts.iter().filter(|(_, t)| **t <= now).map(|(n, _)| n.clone()).collect();
        for name in due {
            restarts.remove(&name);
            let Some(agent) = agents.get_mut(&name) else { continue };
            if let Err(e) = agent.restart(agent_tx.clone()) {
                let delay = agent.backoff.next_delay();
                log::error!(target: "acp", "{e}; trying again in {} ms", delay.as_millis());
                restarts.insert(name, now + delay);
            }
        }
        for action in core.handle(event, now) {
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
            }
        }
    }
}

/// One agent process, restartable: requests wait in `requests` while it is down.
struct Agent {
    spec: AgentSpec,
    requests_tx: Sender<AgentRequest>,
    handle: Option<AgentHandle>,
    backoff: Backoff,
}

impl Agent {
    fn start(spec: AgentSpec, events: Sender<(String, AgentEvent)>) -> Result<Agent, Error> {
        let (requests_tx, _) = unbounded();
        let mut agent = Agent {
            spec,
            requests_tx,
            handle: None,
            backoff: Backoff::new(Duration::from_secs(3), Duration::from_secs(60)),
        };
        agent.restart(events)?;
        Ok(agent)
    }

    fn restart(&mut self, events: Sender<(String, AgentEvent)>) -> Result<(), Error> {
        let handle = process::spawn(self.spec.clone(), events)?;
        self.requests_tx = handle.requests.clone();
        self.handle = Some(handle);
        Ok(())
    }

    fn send(&self, request: AgentRequest) {
        let _ = self.requests_tx.send(request);
    }

    /// Wait for this agent's `initialize` answer, or fail with why it did not come.
    fn wait_ready(&self, events: &Receiver<(String, AgentEvent)>) -> Result<(), Error> {
        let limit = self.spec.startup_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + limit;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(remaining) {
                Ok((name, AgentEvent::Ready { .. })) if name == self.spec.name => return Ok(()),
                Ok((name, AgentEvent::Exited { reason })) if name == self.spec.name => {
                    return Err(Error::Agent(format!(
                        "agent \"{}\" (`{} {}`) failed to start: it {reason}",
                        name,
                        self.spec.command,
                        self.spec.args.join(" ")
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::Agent(format!(
                        "agent \"{}\" did not start within {} ms",
                        self.spec.name,
                        limit.as_millis()
                    )));
                }
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
    if config.channels.is_empty() {
        return Err(Error::Other(format!(
            "no channels configured in {}: add entries under \"channels\" (see README), or run `tether demo`",
            config.path.display()
        )));
    }
    Ok(config)
}

/// How to start agent `name`: its command, plus the environment with every platform secret
/// of every channel removed.
pub fn agent_spec(config: &Config, name: &str) -> Result<AgentSpec, Error> {
    let Some(agent) = config.agents.get(name) else {
        return Err(Error::Other(format!("{}: no agent named \"{name}\"", config.path.display())));
    };
    let mut env = config.env.clone();
    env.extend(agent.env.clone());
    let secrets = config.channels.values().flat_map(|c| c.secrets());
    let (mut scrub_names, mut scrub_values) = (Vec::new(), Vec::new());
    for secret in secrets {
        scrub_values.push(secret.expose().to_string());
        if let Some(var) = &secret.from_env {
            scrub_names.push(var.clone());
            env.remove(var);
        }
    }
    let cwd = std::env::current_dir().map_err(|e| Error::Other(format!("cannot read the current directory: {e}")))?;
    // `tether` means this very binary, so `tether demo-agent` works without tether on PATH.
    let command = match agent.command.as_str() {
        "tether" => std::env::current_exe().map_or_else(|_| agent.command.clone(), |p| p.display().to_string()),
        _ => agent.command.clone(),
    };
    Ok(AgentSpec {
        name: name.to_string(),
        command,
        args: agent.args.clone(),
        env,
        scrub_names,
        scrub_values,
        cwd,
        startup_timeout: agent.startup_timeout,
    })
}
