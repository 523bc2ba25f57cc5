//! Keeping agent processes alive: one [`Agent`] per configured agent that the running
//! channels use, restarted with backoff when it dies. Requests wait while it is down.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::acp::identity;
use crate::acp::process::{self, AgentHandle, AgentSpec};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::event::{AgentEvent, AgentRequest};

/// One agent process, restartable.
pub struct Agent {
    spec: AgentSpec,
    /// When it crashed lately, to give up on an agent that keeps dying.
    crashes: CrashWindow,
    handle: Option<AgentHandle>,
    backoff: Backoff,
    /// It answered `initialize` at least once since tether started.
    was_ready: bool,
}

impl Agent {
    pub fn start(spec: AgentSpec, events: Sender<(String, AgentEvent)>) -> Result<Agent, Error> {
        let mut agent = Agent {
            spec,
            handle: None,
            crashes: CrashWindow::default(),
            backoff: Backoff::new(Duration::from_secs(3), Duration::from_secs(60)),
            was_ready: false,
        };
        agent.restart(events)?;
        Ok(agent)
    }

    pub fn restart(&mut self, events: Sender<(String, AgentEvent)>) -> Result<(), Error> {
        let handle = process::spawn(self.spec.clone(), events)?;
        self.handle = Some(handle);
        Ok(())
    }

    /// The agent process's id (for killing it at shutdown when it ignores EOF on stdin).
    pub fn pid(&self) -> Option<u32> {
        self.handle.as_ref().map(|h| h.pid)
    }

    /// The agent died: when to start it again, or that it died too often to go on.
    pub fn crashed(&mut self, now: Instant) -> Restart {
        let count = self.crashes.record(now);
        if count > CrashWindow::MAX_CRASHES {
            return Restart::GiveUp { crashes: count };
        }
        Restart::At { at: now + self.backoff.next_delay(), crashes: count }
    }

    /// The agent answered `initialize`: the next crash starts the backoff from the bottom.
    pub fn ready(&mut self) {
        self.backoff.reset();
        self.was_ready = true;
    }

    /// Whether it ever answered `initialize`: an agent that fails before that is misconfigured
    /// (wrong command, not logged in to anything), not crashing, and restarting it cannot help.
    pub fn was_ready(&self) -> bool {
        self.was_ready
    }

    /// Why it could not start, for the one error that ends the service.
    pub fn start_failure(&self, reason: &str) -> Error {
        Error::Agent(format!(
            "agent \"{}\" (`{} {}`) failed to start: it {reason}",
            self.spec.name,
            self.spec.command,
            self.spec.args.join(" ")
        ))
    }

    /// Pass a request to the running agent (lost when it is down: the core holds its
    /// requests back until the agent is ready again).
    pub fn send(&self, request: AgentRequest) {
        if let Some(handle) = &self.handle {
            handle.send(request);
        }
    }
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Start it again then; `crashes` counts this one among those within the window.
    At { at: Instant, crashes: usize },
    /// More than [`CrashWindow::MAX_CRASHES`] crashes within [`CrashWindow::SPAN`]: stop the
    /// service with status 1 and let the init system restart it.
    GiveUp { crashes: usize },
}

/// Crash times within the last [`CrashWindow::SPAN`].
#[derive(Debug, Default, Clone)]
pub struct CrashWindow {
    times: Vec<Instant>,
}

impl CrashWindow {
    pub const SPAN: Duration = Duration::from_secs(300);
    pub const MAX_CRASHES: usize = 3;

    /// Record a crash at `now`; return how many fall within the window, this one included.
    pub fn record(&mut self, now: Instant) -> usize {
        self.times.retain(|t| now.saturating_duration_since(*t) < Self::SPAN);
        self.times.push(now);
        self.times.len()
    }
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
    let run_as = match &agent.user {
        None => None,
        Some(user) => {
            let read = |path: &str| {
                std::fs::read_to_string(path).map_err(|e| Error::Other(format!("cannot read {path}: {e}")))
            };
            let run_as = identity::resolve(user, agent.group.as_deref(), &read("/etc/passwd")?, &read("/etc/group")?)
                .map_err(|e| Error::Other(format!("{}: {e}", config.path.display())))?;
            // The agent's own home, not tether's (root's) one.
            env.insert("HOME".into(), run_as.home.clone());
            env.insert("USER".into(), run_as.user.clone());
            env.insert("LOGNAME".into(), run_as.user.clone());
            Some(run_as)
        }
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
        run_as,
        mcp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fourth_crash_within_five_minutes_gives_up() {
        let t0 = Instant::now();
        let mut window = CrashWindow::default();
        // (seconds after t0, crashes counted in the window)
        let cases = [(0, 1), (60, 2), (120, 3), (310, 3), (320, 4), (700, 1)];
        for (secs, expected) in cases {
            assert_eq!(window.record(t0 + Duration::from_secs(secs)), expected, "at {secs} s");
        }
    }
}
