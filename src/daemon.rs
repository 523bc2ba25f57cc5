//! `tether start`: wires the threads together and runs the core loop. Claims the home (lock
//! and pid file), starts the agents (waiting until each answers `initialize`), then the
//! channels, replays the journaled messages not yet answered, and then feeds the core every
//! inbound message, agent event and deadline, and carries out the actions it returns.
//!
//! Around the core it keeps the service promises: each journaled message is answered, or
//! marked as needing nothing, exactly once; `status.json` says how every channel is doing (and
//! one warning is logged when one goes deaf); SIGTERM/SIGINT stop cleanly; SIGHUP reloads the
//! config, restarting only the channels that changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, never, select, tick, unbounded};

use crate::access_files;
use crate::acp::supervisor::{Agent, CrashWindow, Restart, agent_spec};
use crate::adapters::{ChannelIo, RunningChannel, Supervisor, ThreadEnd};
use crate::admin_source::DaemonAdmin;
use crate::audit::AuditEvent;
use crate::audit_writer::{self, AuditWriter};
use crate::backoff::Backoff;
use crate::collect::CollectMap;
use crate::config::{ChannelConfig, Config, PermissionPolicy};
use crate::control::{self, ControlRequest, ControlSocket, McpOffer};
use crate::core::{Action, Core, EVICTION_CHECK, Event};
use crate::error::Error;
use crate::event::{AgentEvent, Inbound, Outbound};
use crate::health::{self, Change, ChannelExtra, Probe, ServiceStatus, wall_ms};
use crate::journal::Journal;
use crate::service::{self, LogFile, ServiceClaim};
use crate::store;
use crate::vec_map::VecMap;

/// The conversations the service keeps across restarts, in the home directory.
const SESSIONS_FILE: &str = "sessions.json";

/// The shape of `sessions.json`: Qwen Code's (`sessionId`, `target`, `cwd`) plus the agent and
/// whether the channel's instructions were sent.
mod sessions_file {
    use std::path::PathBuf;

    use serde::{Deserialize, Serialize};

    use crate::core::SessionRecord;
    use crate::event::ChatRef;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Entry {
        session_id: String,
        agent: String,
        target: Target,
        cwd: PathBuf,
        #[serde(default)]
        instructed: bool,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Target {
        channel_name: String,
        chat_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_id: Option<String>,
    }

    impl Entry {
        pub fn from_record(r: &SessionRecord) -> Entry {
            Entry {
                session_id: r.session_id.clone(),
                agent: r.agent.clone(),
                target: Target {
                    channel_name: r.chat.channel.clone(),
                    chat_id: r.chat.chat_id.clone(),
                    thread_id: r.chat.thread_id.clone(),
                },
                cwd: r.cwd.clone(),
                instructed: r.instructed,
            }
        }

        pub fn into_record(self) -> SessionRecord {
            SessionRecord {
                session_id: self.session_id,
                agent: self.agent,
                chat: ChatRef {
                    channel: self.target.channel_name,
                    chat_id: self.target.chat_id,
                    thread_id: self.target.thread_id,
                },
                cwd: self.cwd,
                instructed: self.instructed,
            }
        }
    }
}

/// The core's queues are bounded, so a flood waits at its source (a poller, the agent's
/// reader), and small, because a bounded channel allocates every slot up front, each the
/// size of its largest event (1024 slots of the first two cost 0.43 MiB of idle memory, 256
/// of them 120 KiB): the core takes events as fast as they come, so a few dozen waiting is
/// already a flood.
const AGENT_EVENT_QUEUE: usize = 64;
const INBOUND_QUEUE: usize = 64;
/// Finished `git worktree add`s: one per `/new` naming a worktree, so rarely more than one.
const WORKTREE_QUEUE: usize = 8;

/// How often health is looked at and `status.json` refreshed when something changed; the core
/// is ticked as often, as it asks ([`EVICTION_CHECK`]).
const STATUS_TICK: Duration = EVICTION_CHECK;
/// At shutdown: how long queued replies may take to go out (senders stop starting calls
/// after 1.5 s and then finish the ones in flight), and the agents to exit.
const DRAIN_GRACE: Duration = Duration::from_millis(2500);
const AGENT_GRACE: Duration = Duration::from_millis(1500);
/// For tests only: the watchdog's bound in milliseconds instead of two minutes.
pub const UNHEALTHY_AFTER_ENV: &str = "TETHER_UNHEALTHY_AFTER_MS";
/// For tests only: milliseconds added to the core's wall clock, so a loop's next minute comes
/// within a test's bounded wait.
pub const CLOCK_OFFSET_ENV: &str = "TETHER_TEST_CLOCK_OFFSET_MS";
/// The scheduled loops (`core/loops.rs`).
pub const LOOPS_FILE: &str = "loops.json";
/// The named tasks of `multiSession` channels (`core/tasks.rs`).
const TASKS_FILE: &str = "tasks.json";

/// How `tether start` (or `tether demo`) was asked to run.
pub struct Options {
    /// Where state lives.
    pub home: PathBuf,
    /// Run only these channels (all when empty).
    pub only: Vec<String>,
    /// Reads the config file again, for SIGHUP (`None`: SIGHUP only reopens the log).
    pub reload: Option<Box<dyn Fn() -> Result<Config, Error> + Send>>,
    /// The `--log-file`, reopened on SIGHUP.
    pub log_file: Option<Arc<LogFile>>,
    /// Run as the service of `home`: take its lock and pid file, publish `status.json`.
    /// False for `tether demo`, which may run next to the service.
    pub as_service: bool,
    /// Run inside a larger program (the tests): stop when this receives or disconnects,
    /// and leave the process's signals alone. `None`: SIGTERM/SIGINT stop, SIGHUP reloads.
    pub stop: Option<Receiver<()>>,
}

/// What the signal thread reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Stop(&'static str),
    Reload,
}

/// Run the channels until SIGTERM or SIGINT (or an agent that keeps crashing).
pub fn run(config: Config, options: Options) -> Result<(), Error> {
    let config = select_channels(config, &options.only)?;
    let names: Vec<String> = config.channels.keys().cloned().collect();
    let claim = if options.as_service { Some(ServiceClaim::take(&options.home, &names)?) } else { None };
    let signals = if options.stop.is_some() { never() } else { watch_signals()? };
    let unhealthy_after = std::env::var(UNHEALTHY_AFTER_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(health::DEFAULT_UNHEALTHY_AFTER, Duration::from_millis);
    log::info!(target: "tether", "starting {} channel(s): {}", names.len(), names.join(", "));
    // Before any channel decodes: what made a decoder panic in an earlier run is skipped.
    match crate::adapters::remember_poisoned_in(&options.home) {
        Ok(0) => {}
        Ok(n) => {
            log::warn!(target: "tether", "{n} input(s) that made a decoder panic before are skipped ({})", crate::adapters::POISONED_FILE)
        }
        Err(e) => log::error!(target: "tether", "{e}; inputs that made a decoder panic before may be decoded again"),
    }

    let (agent_tx, agent_rx) = bounded::<(String, AgentEvent)>(AGENT_EVENT_QUEUE);
    let (inbound_tx, inbound_rx) = bounded::<Inbound>(INBOUND_QUEUE);
    let (worktree_tx, worktree_rx) = bounded::<Event>(WORKTREE_QUEUE);
    let (control_tx, control_rx) = bounded::<ControlRequest>(16);
    let (control, mcp_offer) = start_control(&options, control_tx);
    let access = access_watcher(&options.home, &config);
    let (admin, admin_wanted) = DaemonAdmin::new(options.home.clone(), inbound_tx.clone());
    let audit = start_audit(config.audit.as_ref());
    let mut daemon = Daemon {
        admin,
        admin_wanted,
        admin_channels_changed: true,
        audit,
        saved_sessions: None,
        loops_seen: None,
        worktree_tx,
        worktree_rx,
        control_rx,
        _control: control,
        mcp_offer,
        clock_offset_ms: std::env::var(CLOCK_OFFSET_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        saved_version: None,
        home: options.home.clone(),
        core: Core::new(&config),
        config,
        options,
        claim,
        access,
        agents: VecMap::new(),
        agent_tx,
        agent_rx,
        restarts: Vec::new(),
        dropped_agents: VecMap::new(),
        inbound_tx,
        channels: VecMap::new(),
        journals: VecMap::new(),
        probes: VecMap::new(),
        channel_restarts: Vec::new(),
        unhealthy_after,
        started_at_ms: health::wall_ms(),
        state: "starting",
        published: None,
        next_tick: Instant::now(),
    };
    daemon.publish(true);

    // Channels start polling while the agents start: what arrives meanwhile is journaled, and
    // waits in the core until its agent answers `initialize`.
    let agent_names = agents_used(&daemon.config);
    for name in agent_names {
        let spec = daemon.agent_spec(&daemon.config, &name)?;
        let agent = Agent::start(spec, daemon.agent_tx.clone())?;
        audit_writer::record(AuditEvent::AgentStarted { agent: name.clone() });
        daemon.core.agent_starting(&name);
        daemon.agents.insert(name, agent);
    }
    let channels: Vec<ChannelConfig> = daemon.config.channels.values().cloned().collect();
    for channel in &channels {
        daemon.start_channel(channel)?;
    }
    daemon.adopt_sessions();
    daemon.adopt_tasks();
    // Pairing state: read at start, then re-read when `tether pairing` changes it.
    daemon.core.set_wall_clock(daemon.wall_ms());
    daemon.adopt_loops();
    for event in daemon.access.load_all()? {
        daemon.core.handle(event, Instant::now());
    }
    for channel in &channels {
        if let Some(event) = crate::group_history_file::load(&daemon.home, &channel.name) {
            daemon.core.handle(event, Instant::now());
        }
    }
    daemon.replay();
    daemon.state = "running";
    daemon.publish(true);
    daemon.publish_admin();
    // The demo is no service: `tether stop` would not find it.
    let how_to_stop = if daemon.options.as_service { "`tether stop` or Ctrl+C" } else { "Ctrl+C" };
    log::info!(target: "tether", "running {} channel(s); stop with {how_to_stop}", channels.len());
    daemon.run(&inbound_rx, &signals)
}

/// Serve the control socket for `tether mcp` (a service only: the demo may run next to a
/// service of the same home, whose socket it must not replace). Without it the agent has no
/// loop tools, and everything else runs.
fn start_control(options: &Options, requests: Sender<ControlRequest>) -> (Option<ControlSocket>, Option<McpOffer>) {
    if !options.as_service {
        return (None, None);
    }
    let started = control::Secret::draw().and_then(|secret| {
        let command = std::env::current_exe().map_err(|e| format!("cannot find tether's own executable: {e}"))?;
        let socket = control::serve(&options.home, secret.clone(), requests)?;
        let offer = McpOffer { command, socket: socket.path.clone(), secret };
        Ok((socket, offer))
    });
    match started {
        Ok((socket, offer)) => {
            log::info!(target: "control", "control socket {}: agents that take MCP servers get tether's loop tools", socket.path.display());
            (Some(socket), Some(offer))
        }
        Err(e) => {
            log::warn!(target: "control", "{e}; the agent cannot manage loops (/loop still can)");
            (None, None)
        }
    }
}

/// One running channel.
struct Channel {
    config: ChannelConfig,
    outbox: Sender<Outbound>,
    /// Dropped to stop the channel's threads.
    stop: Sender<()>,
    probe: Probe,
    running: RunningChannel,
    /// Each of the channel's threads reports its end here (panics included).
    ended: Receiver<ThreadEnd>,
}

impl Channel {
    /// Hand a reply to the channel's delivery: its outbox's intake, or the queue the platform
    /// reads itself (the web chat).
    fn deliver(&self, out: Outbound) {
        match &self.running.intake {
            Some(intake) => intake.send(out),
            None => {
                let _ = self.outbox.send(out);
            }
        }
    }

    /// Close its stop and outbox channels (its threads end; its sender delivers what was
    /// queued first) and drop its guard (a server stops listening).
    fn stop_threads(self) {
        drop(self.stop);
        drop(self.outbox);
        drop(self.running);
    }
}

/// A channel whose thread ended on its own, waiting to be started again.
struct ChannelRestart {
    at: Instant,
    backoff: Backoff,
}

/// How long a channel restarted after a thread ended must run before its backoff resets.
const CHANNEL_STABLE: Duration = Duration::from_secs(60);

struct Daemon {
    /// What the web chat's admin page shows and does.
    admin: DaemonAdmin,
    /// The admin page asks for a fresh state: built only then, not on every tick.
    admin_wanted: Receiver<()>,
    /// The channels' configs changed since the admin page's copy was made.
    admin_channels_changed: bool,
    /// The audit log's writer, when `audit` is configured (installed for the process).
    audit: Option<AuditWriter>,
    /// The sessions last written to `sessions.json`.
    saved_sessions: Option<BTreeMap<String, crate::core::SessionRecord>>,
    /// `loops.json` as last read or written (`tether loops cancel` changes it from outside).
    loops_seen: Option<store::Fingerprint>,
    /// Test-only shift of the core's wall clock ([`CLOCK_OFFSET_ENV`]).
    clock_offset_ms: i64,
    /// Worktrees made for tasks come back here (`worktree.rs`).
    worktree_tx: Sender<Event>,
    worktree_rx: Receiver<Event>,
    /// The agent's loop tool calls (`tether mcp` through the control socket, `control.rs`).
    control_rx: Receiver<ControlRequest>,
    /// The control socket while it serves (its file goes with it).
    _control: Option<ControlSocket>,
    /// `tether mcp` for the agents' sessions, when the control socket serves.
    mcp_offer: Option<McpOffer>,
    /// The core's [`crate::core::Core::records_version`] when `saved_sessions` was last known to match:
    /// while it stays the same, no snapshot is taken.
    saved_version: Option<u64>,
    home: PathBuf,
    config: Config,
    options: Options,
    core: Core,
    claim: Option<ServiceClaim>,
    /// The pairing files of the channels with `senderPolicy: pairing`.
    access: access_files::Watcher,
    agents: VecMap<String, Agent>,
    agent_tx: Sender<(String, AgentEvent)>,
    agent_rx: Receiver<(String, AgentEvent)>,
    /// Agents that died, and when to start them again (the core holds their work meanwhile), in
    /// name order: see [`schedule_restart`].
    restarts: Vec<(String, Instant)>,
    /// Agents stopped on purpose (reload) whose `Exited` is still to come: not a crash.
    dropped_agents: VecMap<String, usize>,
    inbound_tx: Sender<Inbound>,
    channels: VecMap<String, Channel>,
    /// One per journaled channel, kept across restarts of the channel (one writer per file).
    journals: VecMap<String, Arc<Journal>>,
    /// One per channel, kept across restarts of the channel, so health shows the restarts.
    probes: VecMap<String, Probe>,
    /// Channels whose thread ended on their own, and when to start them again.
    /// In name order, like [`Daemon::restarts`] (a list: a map type costs kilobytes of code).
    channel_restarts: Vec<(String, ChannelRestart)>,
    unhealthy_after: Duration,
    started_at_ms: u64,
    /// `starting`, `running`, `stopping`, `stopped`.
    state: &'static str,
    /// The last status written, and when.
    published: Option<(ServiceStatus, Instant)>,
    next_tick: Instant,
}

/// Sets when `agent` restarts, keeping the list in name order (as the map it replaces did: a
/// map type of its own would cost 6 KB of code for one or two agents).
/// The agents `config`'s channels use, each once, in name order.
fn agents_used(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config.channels.values().map(|c| c.agent.clone()).collect();
    names.sort();
    names.dedup();
    names
}

fn schedule_restart(restarts: &mut Vec<(String, Instant)>, agent: String, at: Instant) {
    match restarts.binary_search_by(|(name, _)| name.as_str().cmp(&agent)) {
        Ok(i) => restarts[i].1 = at,
        Err(i) => restarts.insert(i, (agent, at)),
    }
}

impl Daemon {
    fn run(mut self, inbound_rx: &Receiver<Inbound>, signals: &Receiver<Signal>) -> Result<(), Error> {
        let access_tick = if self.access.is_empty() { never() } else { tick(access_files::POLL_INTERVAL) };
        let stop = self.options.stop.clone().unwrap_or_else(never);
        loop {
            let next = [self.core.next_deadline(), self.restarts.iter().map(|(_, at)| *at).min(), Some(self.next_tick)]
                .into_iter()
                .flatten()
                .min();
            let deadline = next.map_or_else(never, at);
            select! {
                recv(inbound_rx) -> msg => if let Ok(inbound) = msg { self.on_inbound(inbound) },
                recv(self.agent_rx) -> msg => if let Ok((agent, event)) = msg { self.on_agent(agent, event)? },
                recv(self.worktree_rx) -> msg => if let Ok(event) = msg { self.handle(event) },
                recv(self.control_rx) -> msg => if let Ok(request) = msg { self.on_control(request) },
                recv(self.admin_wanted) -> msg => if msg.is_ok() { self.publish_admin() },
                recv(signals) -> signal => match signal {
                    Ok(Signal::Stop(name)) => return self.shutdown(name),
                    Ok(Signal::Reload) => self.reload(),
                    Err(_) => {}
                },
                recv(stop) -> _ => return self.shutdown("stop requested"),
                // The status tick below ticks the core as well: here only for its own deadline.
                recv(deadline) -> _ => if self.core.next_deadline().is_some_and(|at| at <= Instant::now()) {
                    self.handle(Event::Tick)
                },
                recv(access_tick) -> _ => {}
            }
            for event in self.access.poll(Instant::now()) {
                self.handle(event);
            }
            self.restart_due_agents()?;
            if Instant::now() >= self.next_tick {
                self.next_tick = Instant::now() + STATUS_TICK;
                // Every status tick, whichever event the select took: idle sessions leave
                // memory on a tick (`EVICTION_CHECK`), and with events always ready the
                // deadline above could lose the draw second after second.
                self.handle(Event::Tick);
                self.watch_channel_threads();
                self.restart_due_channels();
                self.watch_health();
                self.publish(false);
                if self.loops_seen != store::fingerprint(&self.home.join(LOOPS_FILE)) {
                    self.adopt_loops();
                }
            }
        }
    }

    /// The core's wall clock (Unix ms), shifted in tests ([`CLOCK_OFFSET_ENV`]).
    fn wall_ms(&self) -> u64 {
        wall_ms().saturating_add_signed(self.clock_offset_ms)
    }

    /// Read `loops.json` (at start, and after `tether loops cancel` changed it) into the
    /// core, in the time zone of `TZ` (else /etc/localtime).
    fn adopt_loops(&mut self) {
        if !self.options.as_service {
            return;
        }
        let path = self.home.join(LOOPS_FILE);
        self.loops_seen = store::fingerprint(&path);
        let file = match store::read_json::<crate::core::loops::LoopFile>(&path) {
            Ok(file) => file.unwrap_or_default(),
            Err(e) => {
                log::warn!(target: "tether", "{e}; loops are not run until the file is fixed");
                return;
            }
        };
        let tz = std::env::var("TZ").ok();
        let zone = crate::local_zone::zone_from(tz.as_deref()).unwrap_or_else(|e| {
            log::warn!(target: "tether", "{e}; loops use the system's time zone");
            crate::local_zone::system_zone()
        });
        let enabled = file.loops.iter().filter(|l| l.enabled).count();
        log::info!(target: "tether", "{} loop(s), {enabled} enabled, in time zone {}", file.loops.len(), zone.name().unwrap_or("from TZ"));
        self.core.set_wall_clock(self.wall_ms());
        self.core.adopt_loops(crate::core::loops::Book::new(file, zone), Instant::now());
    }

    /// Named tasks of the last run go on (their sessions are in `sessions.json`).
    fn adopt_tasks(&mut self) {
        if !self.options.as_service {
            return;
        }
        match store::read_json::<crate::core::tasks::TaskFile>(&self.home.join(TASKS_FILE)) {
            Ok(Some(file)) => self.core.adopt_tasks(file),
            Ok(None) => {}
            Err(e) => log::warn!(target: "tether", "{e}; named tasks start afresh"),
        }
    }

    /// Write `tasks.json` when the tasks changed.
    fn save_tasks(&mut self) {
        let Some(file) = self.core.tasks_to_save() else { return };
        if !self.options.as_service {
            return;
        }
        if let Err(e) = store::write_json_atomic(&self.home.join(TASKS_FILE), &file) {
            log::warn!(target: "tether", "{e}");
        }
    }

    /// Write `loops.json` when the loops changed.
    fn save_loops(&mut self) {
        let Some(file) = self.core.loops_to_save() else { return };
        if !self.options.as_service {
            return;
        }
        let path = self.home.join(LOOPS_FILE);
        match store::write_json_atomic(&path, &file) {
            Ok(()) => self.loops_seen = store::fingerprint(&path),
            Err(e) => log::warn!(target: "tether", "{e}"),
        }
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        if let Inbound::Message(message) = &inbound {
            if let Some(probe) = self.probes.get(&message.channel) {
                probe.received();
            }
            // A sender approved since the last poll is approved for this very message.
            for event in self.access.refresh(&message.channel) {
                self.handle(event);
            }
        }
        let operator = matches!(inbound, Inbound::OperatorClear { .. });
        self.handle(Event::Inbound(inbound));
        if operator {
            self.publish_admin();
        }
    }

    /// A loop tool the agent called through `tether mcp`: the core decides, the loops are
    /// saved, the answer goes back to the socket's connection.
    fn on_control(&mut self, request: ControlRequest) {
        self.core.set_wall_clock(self.wall_ms());
        let (result, actions) = match &request.caller {
            control::Caller::Session(key) => self.core.loop_tool(key, request.tool, Instant::now()),
            control::Caller::Operator => self.core.operator_loop_tool(request.tool, Instant::now()),
        };
        self.dispatch(actions);
        self.save_sessions();
        self.save_loops();
        let _ = request.reply.try_send(result);
    }

    /// What starts agent `name`: its config, and `tether mcp` for its sessions when the
    /// control socket serves and the agent runs as tether's own user (one started as
    /// `agent.user` could not open the socket, which is private to tether's user).
    fn agent_spec(&self, config: &Config, name: &str) -> Result<crate::acp::process::AgentSpec, Error> {
        let mut spec = agent_spec(config, name)?;
        if spec.run_as.is_some() && self.mcp_offer.is_some() {
            log::info!(target: "acp", "agent \"{name}\" runs as another user (agent.user): it is not offered tether's loop tools");
        } else {
            spec.mcp = self.mcp_offer.clone();
        }
        Ok(spec)
    }

    /// Feed the core one event and carry out what it asks.
    fn handle(&mut self, event: Event) {
        // The pieces of a running answer change no session record: the hot path skips the
        // snapshot `sessions.json` is compared against.
        let records_may_change = !matches!(
            event,
            Event::Agent {
                event: AgentEvent::TextChunk { .. }
                    | AgentEvent::Thought { .. }
                    | AgentEvent::Plan { .. }
                    | AgentEvent::ToolCall { .. }
                    | AgentEvent::ModeChanged { .. }
                    | AgentEvent::CommandsAvailable { .. },
                ..
            }
        );
        self.core.set_wall_clock(self.wall_ms());
        let actions = self.core.handle(event, Instant::now());
        self.dispatch(actions);
        if records_may_change {
            self.save_sessions();
            self.save_loops();
            self.save_tasks();
        }
    }

    /// Conversations of the last run (`sessions.json`) go on: the core loads each session
    /// when its conversation's next message comes.
    fn adopt_sessions(&mut self) {
        if !self.options.as_service {
            return;
        }
        let path = self.home.join(SESSIONS_FILE);
        let records = match store::read_json::<BTreeMap<String, sessions_file::Entry>>(&path) {
            Ok(Some(map)) => map,
            Ok(None) => return,
            Err(e) => {
                log::warn!(target: "tether", "{e}; conversations start afresh");
                return;
            }
        };
        let adopted = self.core.adopt(records.into_iter().map(|(key, entry)| (key, entry.into_record())));
        log::info!(target: "tether", "{adopted} conversation(s) from the last run will be restored when they continue");
        self.saved_sessions = Some(self.core.sessions_snapshot());
        self.saved_version = Some(self.core.records_version());
    }

    /// Write `sessions.json` when the sessions changed, so a restart keeps conversations.
    /// The file holds only what a restart needs (a session's id, agent, chat, cwd, whether it
    /// was instructed), so it changes only when a session is opened, loaded, moved to another
    /// chat, instructed, cleared or dropped, and is then written at once; an ordinary turn
    /// changes nothing in it and writes nothing (`records_version` stays put: checked below).
    /// Activity times are not kept: idle eviction (`evictIdleAfter`) counts from the
    /// last-active time in memory, and after a restart every session starts dormant anyway.
    fn save_sessions(&mut self) {
        if !self.options.as_service {
            return;
        }
        let version = self.core.records_version();
        if self.saved_version == Some(version) {
            // Debug builds (every test) check that the core bumps the version on each change.
            debug_assert!(
                self.saved_sessions.as_ref() == Some(&self.core.sessions_snapshot()),
                "a session record changed without a new Core::records_version"
            );
            return;
        }
        let snapshot = self.core.sessions_snapshot();
        if self.saved_sessions.as_ref() == Some(&snapshot) {
            self.saved_version = Some(version);
            return;
        }
        let file: BTreeMap<&String, sessions_file::Entry> =
            snapshot.iter().map(|(key, record)| (key, sessions_file::Entry::from_record(record))).collect_map();
        match store::write_json_atomic(&self.home.join(SESSIONS_FILE), &file) {
            Ok(()) => {
                self.saved_sessions = Some(snapshot);
                self.saved_version = Some(version);
            }
            Err(e) => log::warn!(target: "tether", "{e}"),
        }
    }

    /// An agent event; an agent that crashed too often ends the service (status 1), so that
    /// the init system restarts it.
    fn on_agent(&mut self, agent: String, event: AgentEvent) -> Result<(), Error> {
        if let AgentEvent::Exited { reason } = &event {
            if let Some(count) = self.dropped_agents.get_mut(&agent).filter(|c| **c > 0) {
                *count -= 1;
                log::debug!(target: "acp", "agent \"{agent}\" stopped for the new config: {reason}");
                return Ok(());
            }
            if let Some(a) = self.agents.get(&agent).filter(|a| !a.was_ready()) {
                let error = a.start_failure(reason);
                return self.give_up(&agent, error);
            }
            audit_writer::record(AuditEvent::AgentCrashed { agent: agent.clone(), reason: reason.clone() });
            if let Some(a) = self.agents.get_mut(&agent) {
                let now = Instant::now();
                match a.crashed(now) {
                    Restart::At { at, crashes } => {
                        log::error!(target: "acp", "agent \"{agent}\" {reason}; restarting in {} ms (crash {crashes} of {} allowed within {} s)",
                            (at - now).as_millis(), CrashWindow::MAX_CRASHES, CrashWindow::SPAN.as_secs());
                        schedule_restart(&mut self.restarts, agent.clone(), at);
                    }
                    Restart::GiveUp { crashes } => {
                        let error = Error::Agent(format!(
                            "agent \"{agent}\" crashed {crashes} times within {} s (last: it {reason}); stopping so the init system can restart tether",
                            CrashWindow::SPAN.as_secs()
                        ));
                        return self.give_up(&agent, error);
                    }
                }
            }
        }
        if let (AgentEvent::Ready { .. }, Some(a)) = (&event, self.agents.get_mut(&agent)) {
            a.ready();
        }
        self.handle(Event::Agent { agent, event });
        Ok(())
    }

    fn restart_due_agents(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let due: Vec<String> = self.restarts.iter().filter(|(_, t)| *t <= now).map(|(n, _)| n.clone()).collect();
        for name in due {
            self.restarts.retain(|(n, _)| *n != name);
            let Some(agent) = self.agents.get_mut(&name) else { continue };
            match agent.restart(self.agent_tx.clone()) {
                Ok(()) => audit_writer::record(AuditEvent::AgentRestarted { agent: name }),
                Err(e) => match agent.crashed(now) {
                    Restart::At { at, .. } => {
                        log::error!(target: "acp", "{e}; trying again in {} ms", (at - now).as_millis());
                        schedule_restart(&mut self.restarts, name, at);
                    }
                    Restart::GiveUp { .. } => return self.give_up(&name, e),
                },
            }
        }
        Ok(())
    }

    /// Stop as for SIGTERM (messages stay journaled), then fail with `error`.
    fn give_up(&mut self, agent: &str, error: Error) -> Result<(), Error> {
        // The error itself is logged once, by the caller that ends the process.
        log::warn!(target: "acp", "giving up on agent \"{agent}\"; stopping");
        // Whoever was told "it is being restarted" learns it will not be (drained below).
        let actions = self.core.agent_given_up(agent);
        self.dispatch(actions);
        self.stop_everything("giving up");
        Err(error)
    }

    fn dispatch(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(out) => match self.channels.get(out.channel()) {
                    Some(channel) => {
                        if !channel.config.capabilities().journaled && matches!(out, Outbound::Text { .. }) {
                            channel.probe.sent(); // Channels without a journal do not report deliveries.
                        }
                        channel.deliver(out);
                    }
                    None => log::warn!(target: "core", "no channel {} for an outbound message", out.channel()),
                },
                Action::Settle { channel, messages } => {
                    if let Some(journal) = self.journals.get(&channel)
                        && let Err(e) = journal.settle(&messages)
                    {
                        log::error!(target: channel.as_str(), "cannot write {}: {e}", journal.path().display());
                    }
                }
                Action::Agent { agent, request } => match self.agents.get(&agent) {
                    Some(a) => a.send(request),
                    None => log::error!(target: "core", "no agent {agent}"),
                },
                Action::SavePairingRequest { channel, request } => {
                    self.access.save_request(&channel, request, wall_ms())
                }
                Action::Audit(event) => audit_writer::record(event),
                Action::CreateWorktree { base, name, chat, repo, path } => {
                    // git may take a while: on its own thread, answered as an event.
                    let done = self.worktree_tx.clone();
                    let spawned = std::thread::Builder::new().name("worktree".into()).spawn(move || {
                        let result = crate::worktree::create(&repo, &path, &name);
                        let _ = done.send(Event::WorktreeDone { base, name, chat, result });
                    });
                    if let Err(e) = spawned {
                        log::warn!(target: "tether", "cannot start the worktree thread: {e}");
                    }
                }
                Action::SaveGroupHistory { channel, entries } => {
                    if let Err(e) = crate::group_history_file::save(&self.home, &channel, &entries) {
                        log::error!(target: channel.as_str(), "{e}; group history is kept in memory only");
                    }
                }
            }
        }
    }

    /// Process the messages an earlier run journaled and did not answer (once; the poller
    /// skips them if Telegram sends them again).
    fn replay(&mut self) {
        let journals: Vec<(String, Arc<Journal>)> = self.journals.iter().map(|(n, j)| (n.clone(), j.clone())).collect();
        for (name, journal) in journals {
            let recovered = journal.take_recovered();
            if recovered.is_empty() {
                continue;
            }
            log::info!(target: name.as_str(), "processing {} journaled message(s) not answered before the restart", recovered.len());
            for entry in recovered {
                let message = crate::event::InboundMessage { sent_at_ms: Some(entry.sent_at_ms), ..entry.message };
                self.on_inbound(Inbound::Message(message));
            }
        }
    }

    /// Start a channel through the adapter seam: the daemon knows no platform.
    fn start_channel(&mut self, channel: &ChannelConfig) -> Result<(), Error> {
        let platform = channel.platform;
        let journal = match (platform.capabilities.journaled, self.journals.get(&channel.name)) {
            (false, _) => None,
            (true, Some(journal)) => Some(journal.clone()),
            (true, None) => {
                let journal = Arc::new(Journal::open(&self.home, &channel.name)?);
                self.journals.insert(channel.name.clone(), journal.clone());
                Some(journal)
            }
        };
        let probe = self
            .probes
            .get_or_insert_with(channel.name.clone(), |_| Probe::new(platform.name, platform.heartbeats))
            .clone();
        let (out_tx, out_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (supervisor, ended) = Supervisor::new();
        let io = ChannelIo {
            inbound: self.inbound_tx.clone(),
            outbox: out_rx,
            stop: stop_rx,
            probe: probe.clone(),
            journal,
            home: self.home.clone(),
            admin: Arc::new(self.admin.clone()),
            supervisor,
        };
        let running = (platform.spawn)(channel, io)?;
        if let Some(reached_at) = &running.reached_at {
            log::info!(target: channel.name.as_str(), "{reached_at}");
            println!("{}: {reached_at}", channel.name);
        }
        if let Some(note) = &running.private_note {
            println!("{}: {note}", channel.name);
        }
        log::info!(target: channel.name.as_str(), "channel started ({})", platform.name);
        if channel.permissions == PermissionPolicy::Allow {
            log::warn!(target: channel.name.as_str(), "permissions is \"allow\": the agent may run any tool (shell commands, file edits) without asking anyone");
        }
        let started = Channel { config: channel.clone(), outbox: out_tx, stop: stop_tx, probe, running, ended };
        self.channels.insert(channel.name.clone(), started);
        Ok(())
    }

    /// A channel whose thread ended (a panic, or a loop that gave up) is stopped and started
    /// again with backoff; the journal keeps what it had not answered.
    fn watch_channel_threads(&mut self) {
        let mut failed = Vec::new();
        for (name, channel) in &self.channels {
            if let Ok(end) = channel.ended.try_recv() {
                failed.push((name.clone(), end));
            }
        }
        for (name, end) in failed {
            let Some(channel) = self.channels.remove(&name) else { continue };
            let now = Instant::now();
            let at = match self.channel_restarts.binary_search_by(|(n, _)| n.cmp(&name)) {
                Ok(at) => at,
                Err(at) => {
                    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
                    self.channel_restarts.insert(at, (name.clone(), ChannelRestart { at: now, backoff }));
                    at
                }
            };
            let restart = &mut self.channel_restarts[at].1;
            let delay = restart.backoff.next_delay();
            restart.at = now + delay;
            let how = if end.panicked { "panicked" } else { "ended" };
            let why = format!("thread {} {how}; restarting the channel in {} ms", end.thread, delay.as_millis());
            log::error!(target: name.as_str(), "{why}");
            channel.probe.restarted(&why);
            self.config.channels.insert(name.clone(), channel.config.clone());
            self.admin_channels_changed = true;
            channel.stop_threads();
        }
    }

    fn restart_due_channels(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .channel_restarts
            .iter()
            .filter(|(name, r)| r.at <= now && !self.channels.contains_key(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(config) = self.config.channels.get(&name).cloned() else {
                self.channel_restarts.retain(|(n, _)| *n != name);
                continue;
            };
            if let Err(e) = self.start_channel(&config) {
                log::error!(target: name.as_str(), "cannot restart: {e}");
                if let Some((_, r)) = self.channel_restarts.iter_mut().find(|(n, _)| *n == name) {
                    r.at = now + r.backoff.next_delay();
                }
            }
        }
        // A channel that ran long enough since its restart starts its backoff afresh.
        self.channel_restarts.retain(|(name, r)| !(self.channels.contains_key(name) && now >= r.at + CHANNEL_STABLE));
    }

    /// Stop a channel's threads (its poller ends after the poll in flight; its sender after
    /// delivering what is queued).
    fn stop_channel(&mut self, name: &str) {
        self.channel_restarts.retain(|(n, _)| n != name);
        if let Some(channel) = self.channels.remove(name) {
            channel.stop_threads();
        }
    }

    /// SIGHUP: read the config again; start added channels, stop removed ones, restart changed
    /// ones; sessions of untouched channels keep going. A bad config changes nothing.
    fn reload(&mut self) {
        if let Some(log_file) = &self.options.log_file
            && let Err(e) = log_file.reopen()
        {
            log::error!(target: "tether", "cannot reopen {}: {e}", log_file.path().display());
        }
        let Some(load) = &self.options.reload else {
            log::info!(target: "tether", "SIGHUP: nothing to reload here");
            return;
        };
        let new = match load().and_then(|c| select_channels(c, &self.options.only)) {
            Ok(config) => config,
            Err(e) => {
                log::error!(target: "tether", "reload failed, keeping the running config: {e}");
                return;
            }
        };
        // Agents: stop the unused and the changed (their sessions end), start the missing.
        let needed = agents_used(&new);
        let running: Vec<String> = self.agents.keys().cloned().collect();
        for name in running {
            let changed = self.config.agents.get(&name) != new.agents.get(&name) || self.config.env != new.env;
            if needed.contains(&name) && !changed {
                continue;
            }
            log::info!(target: "acp", "agent \"{name}\" {}; stopping it", if changed { "changed" } else { "is no longer used" });
            self.agents.remove(&name);
            self.restarts.retain(|(n, _)| *n != name);
            *self.dropped_agents.get_or_default(name.clone()) += 1;
            let event = AgentEvent::Exited { reason: "was restarted for the new config".into() };
            self.handle(Event::Agent { agent: name, event });
        }
        for name in &needed {
            if self.agents.contains_key(name) {
                continue;
            }
            match self.agent_spec(&new, name).and_then(|spec| Agent::start(spec, self.agent_tx.clone())) {
                Ok(agent) => {
                    audit_writer::record(AuditEvent::AgentStarted { agent: name.clone() });
                    self.core.agent_starting(name);
                    self.agents.insert(name.clone(), agent);
                }
                Err(e) => log::error!(target: "acp", "{e}"),
            }
        }
        // Channels.
        let old: VecMap<String, ChannelConfig> =
            self.channels.iter().map(|(n, c)| (n.clone(), c.config.clone())).collect();
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        for name in old.keys().filter(|n| !new.channels.contains_key(*n)) {
            removed.push(name.clone());
            self.stop_channel(name);
        }
        self.core.set_channels(&new);
        for (name, channel) in &new.channels {
            match old.get(name) {
                Some(before) if before == channel => continue,
                Some(_) => {
                    changed.push(name.clone());
                    self.stop_channel(name);
                }
                None => added.push(name.clone()),
            }
            if let Err(e) = self.start_channel(channel) {
                log::error!(target: name.as_str(), "cannot start: {e}");
            }
        }
        if self.config.audit != new.audit {
            if let Some(writer) = self.audit.take() {
                audit_writer::install(None);
                writer.stop();
            }
            self.audit = start_audit(new.audit.as_ref());
        }
        self.config = new;
        self.admin_channels_changed = true;
        // Pairing files: the channels that use pairing now, read afresh.
        self.access = access_watcher(&self.home, &self.config);
        match self.access.load_all() {
            Ok(events) => {
                for event in events {
                    self.handle(event);
                }
            }
            Err(e) => log::error!(target: "tether", "after the reload: {e}"),
        }
        // A channel added back may have messages journaled by an earlier run.
        self.replay();
        if let Some(claim) = &mut self.claim {
            let names: Vec<String> = self.config.channels.keys().cloned().collect();
            claim.update_channels(&names);
        }
        self.publish(true);
        self.publish_admin();
        log::info!(target: "tether", "config reloaded: added [{}], removed [{}], restarted [{}]",
            added.join(", "), removed.join(", "), changed.join(", "));
        audit_writer::record(AuditEvent::ConfigReloaded { added, removed, restarted: changed });
    }

    /// Log once when a channel goes deaf, and once when it recovers.
    fn watch_health(&self) {
        for (name, channel) in &self.channels {
            match channel.probe.with(|h, now| h.evaluate(now, self.unhealthy_after)) {
                Some(Change::BecameUnhealthy { why }) => {
                    log::warn!(target: name.as_str(), "channel is unhealthy: {why}")
                }
                Some(Change::BecameHealthy { after_ms }) => log::info!(target: name.as_str(),
                    "channel is healthy again after {}", health::format_duration(after_ms / 1000)),
                None => {}
            }
        }
    }

    fn snapshot(&self) -> ServiceStatus {
        let now_ms = health::wall_ms();
        let channels = self
            .channels
            .iter()
            .map(|(name, channel)| {
                // From the core's copy of the pairing file, which the access watcher keeps
                // current: this runs every second, and reading the file did too.
                let extra = ChannelExtra {
                    sessions: self.core.session_count(name),
                    pending_pairing: self.core.live_pairing_requests(name, self.wall_ms()),
                    journal_pending: self.journals.get(name).map_or(0, |j| j.pending_count()),
                };
                (name.clone(), channel.probe.with(|h, now| h.snapshot(now, self.unhealthy_after, extra)))
            })
            .collect();
        ServiceStatus {
            pid: std::process::id(),
            state: self.state.to_string(),
            started_at: self.started_at_ms,
            updated_at: now_ms,
            channels,
            disabled: self.config.disabled.clone(),
            audit: crate::audit_writer::status(),
        }
    }

    /// Refresh what the admin page shows: health and live sessions. Called when the page asks
    /// (`admin_wanted`), at start, after a reload and an operator's clear; never on the tick,
    /// so nothing is built while no page looks. The channels' configs are copied only when
    /// they changed.
    fn publish_admin(&mut self) {
        let status = self.snapshot();
        let channels: Vec<serde_json::Value> = status
            .channels
            .iter()
            .map(|(name, c)| {
                serde_json::json!({
                    "name": name, "type": c.kind, "healthy": c.healthy, "connected": c.connected,
                    "lastOkMs": c.last_ok_at, "lastError": c.last_error.as_deref().or(c.problem.as_deref()),
                    "messagesIn": c.messages_in, "messagesOut": c.messages_out,
                })
            })
            .collect();
        let state = serde_json::json!({
            "service": {"state": status.state, "startedAt": status.started_at, "pid": status.pid, "audit": status.audit},
            "channels": channels,
            "sessions": self.core.sessions_overview(),
            "loops": self.core.loops_overview(),
        });
        let channels = std::mem::take(&mut self.admin_channels_changed).then_some(&self.config.channels);
        self.admin.publish(state, channels);
    }

    /// Write `status.json` when `force`d or [`health::status_due`].
    fn publish(&mut self, force: bool) {
        if !self.options.as_service {
            return;
        }
        let status = self.snapshot();
        let due = match &self.published {
            None => true,
            Some((last, at)) => force || health::status_due(last, at.elapsed(), &status),
        };
        if !due {
            return;
        }
        if let Err(e) = service::write_status(&self.home, &status) {
            log::warn!(target: "tether", "{e}");
        }
        self.published = Some((status, Instant::now()));
    }

    /// Stop pollers, let queued replies go out (briefly), close the agents' stdin, wait,
    /// kill what is left, remove the pid file. Unanswered messages stay in the journal.
    fn shutdown(mut self, signal: &str) -> Result<(), Error> {
        log::info!(target: "tether", "{signal}: shutting down");
        self.stop_everything(signal);
        log::info!(target: "tether", "stopped");
        Ok(())
    }

    fn stop_everything(&mut self, why: &str) {
        log::debug!(target: "tether", "stopping ({why})");
        self.state = "stopping";
        self.publish(true);
        let deadline = Instant::now() + DRAIN_GRACE;
        let mut senders = Vec::new();
        for mut channel in std::mem::take(&mut self.channels).into_values() {
            senders.extend(channel.running.drained.take());
        }
        for done in senders {
            let _ = done.recv_deadline(deadline);
        }
        // A list (in name order, as `agents`): a map of its own would cost 3 KB of code.
        let mut left: Vec<(String, Option<u32>)> = self.agents.iter().map(|(n, a)| (n.clone(), a.pid())).collect();
        self.agents.clear(); // Closes each agent's stdin: it should exit.
        let deadline = Instant::now() + AGENT_GRACE;
        while !left.is_empty() {
            match self.agent_rx.recv_deadline(deadline) {
                Ok((name, AgentEvent::Exited { .. })) => {
                    left.retain(|(n, _)| *n != name);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for (name, pid) in left {
            if let Some(pid) = pid {
                log::warn!(target: "acp", "agent \"{name}\" (PID {pid}) did not exit on EOF; killing it");
                service::send_signal(pid, "KILL");
            }
        }
        let pending: usize = self.journals.values().map(|j| j.pending_count()).sum();
        if pending > 0 {
            log::info!(target: "tether", "{pending} message(s) not answered yet stay in the journal for the next start");
        }
        self.state = "stopped";
        self.publish(true);
        if let Some(writer) = self.audit.take() {
            audit_writer::install(None);
            writer.stop();
        }
        drop(self.claim.take());
    }
}

/// Start the audit log's writer and install it for the process (`None`: no audit log).
fn start_audit(config: Option<&crate::audit::AuditConfig>) -> Option<AuditWriter> {
    let config = config?;
    match AuditWriter::start(config) {
        Ok(writer) => {
            log::info!(target: "audit", "audit log: {} (content {})", config.path.display(), config.content.name());
            audit_writer::install(Some(writer.sink()));
            Some(writer)
        }
        Err(e) => {
            log::error!(target: "audit", "cannot start the audit writer: {e}; running without an audit log");
            None
        }
    }
}

/// SIGTERM and SIGINT stop, SIGHUP reloads; a thread turns them into [`Signal`]s.
fn watch_signals() -> Result<Receiver<Signal>, Error> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::Other(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for number in signals.forever() {
                let signal = match number {
                    SIGHUP => Signal::Reload,
                    SIGINT => Signal::Stop("SIGINT"),
                    _ => Signal::Stop("SIGTERM"),
                };
                if tx.send(signal).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Other(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}

/// The pairing files of the channels that pair users or groups.
fn access_watcher(home: &std::path::Path, config: &Config) -> access_files::Watcher {
    let pairing = config.channels.values().filter(|c| c.uses_pairing());
    access_files::Watcher::new(home, pairing.map(|c| c.name.as_str()))
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
    // `"enabled": false`: configured, checked, not started.
    let disabled = config.disabled.clone();
    config.channels.retain(|name, _| !disabled.contains(name));
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
    if config.channels.is_empty() && !disabled.is_empty() {
        return Err(Error::Other(format!(
            "every channel in {} is disabled ({}): set \"enabled\": true on one of them",
            config.path.display(),
            disabled.join(", ")
        )));
    }
    if config.channels.is_empty() {
        return Err(Error::Other(format!(
            "no channels configured in {}: add entries under \"channels\" (see README), or run `tether demo`",
            config.path.display()
        )));
    }
    Ok(config)
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn the_core_queues_preallocate_little() {
        // crossbeam's array channel: every slot holds a stamp and the largest event.
        let slot = |size: usize| size + std::mem::size_of::<usize>();
        let preallocated = AGENT_EVENT_QUEUE * slot(std::mem::size_of::<(String, AgentEvent)>())
            + INBOUND_QUEUE * slot(std::mem::size_of::<Inbound>())
            + WORKTREE_QUEUE * slot(std::mem::size_of::<Event>());
        assert!(preallocated <= 40 * 1024, "{preallocated} bytes allocated at start for queues that are mostly empty");
    }
}
