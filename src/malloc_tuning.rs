//! glibc's allocator set for a small daemon that lives for months: `tether start` and
//! `tether demo` on a glibc build restart themselves once (an `exec`, same process id) with
//! `GLIBC_TUNABLES` set, and keep that setting away from the processes they start.
//!
//! Why: with its defaults, glibc keeps what a long answer used. Each thread that allocates
//! gets its own arena (up to eight per core), freed memory inside an arena is rarely given
//! back, the threshold above which a buffer gets its own mapping rises after the first big
//! buffer is freed (so the next 2 MB answer lands in an arena and stays there), and the stacks
//! of finished threads (one per web chat socket) are cached with the pages they touched.
//! Measured with bench/run.sh on x86_64 (10,000 web chat messages from 30 browsers, then one
//! 2 MB answer): 8.8 MiB after the messages and 20.3 MiB after the answer with the defaults;
//! 8.5 and 8.5 MiB with these settings, for the same CPU per message. Each thread also keeps
//! a cache (tcache) of up to seven freed chunks of every small size, and with a thread per
//! web chat socket those cached chunks, scattered through the heap, keep its pages: without
//! the cache, RSS after the 10,000 messages is 6.4–6.6 MiB instead of 7.0 (same build, three
//! runs each way). A cache of one chunk per size is kept: with none, every `malloc` and
//! `free` takes the one arena's lock, which the poller, the daemon, the senders and the
//! agent's readers then wait on: 2.6 of the 9.8 `futex` calls per Telegram message under
//! `bench`'s 50 users (`strace -f`, which slows each call and so adds waits), 2.0 of 8.4
//! with the cache. Measured in one sitting (2026-12-06, `bench/run.sh`'s glibc binary): CPU
//! per 1,000 messages 182–204 ms (mean 193, four benches) against 196–217 (mean 208, five)
//! with none, and 5.49–5.58 MiB after the 10,000 web chat messages against 5.28–5.43; two
//! chunks per size cost 0.1 MiB more again for no further gain.
//! musl's allocator returns freed memory by itself: static musl builds do not restart.
//!
//! `#![forbid(unsafe_code)]` rules out `mallopt`, and glibc reads its tunables before `main`,
//! hence the restart. `TETHER_MALLOC=default` keeps glibc's defaults (no restart: a profiler
//! such as valgrind would otherwise lose the process); a `GLIBC_TUNABLES` already set is the
//! user's and is left alone.

use std::ffi::OsString;
use std::process::Command;

/// The switch, and the marker the restarted process carries (so it never restarts again).
const SWITCH: &str = "TETHER_MALLOC";
/// [`SWITCH`]'s value in the restarted process.
const TUNED: &str = "tuned";
const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// One arena; buffers from 64 KiB get their own mapping, given back when freed (a fixed
/// threshold, so it no longer rises); free memory above 64 KiB at the top of the heap goes
/// back; a per-thread cache of one freed chunk per size; no cache of finished threads' stacks.
const TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=65536:\
                        glibc.malloc.trim_threshold=65536:glibc.malloc.tcache_count=1:\
                        glibc.pthread.stack_cache_size=0";

/// What to do at start, from the environment: (`TETHER_MALLOC`, `GLIBC_TUNABLES` present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Restart with [`TUNABLES`].
    Restart,
    /// Already restarted, or told not to, or the user set their own tunables.
    Stay,
}

fn plan(switch: Option<&str>, user_tunables: bool) -> Plan {
    match switch {
        Some(_) => Plan::Stay,
        None if user_tunables => Plan::Stay,
        None => Plan::Restart,
    }
}

/// Restart this process with the allocator tuned, unless it already is (see the module
/// docs). Returns only when no restart happens or the `exec` failed (then tether runs with
/// glibc's defaults, and says so). Call first thing, before any thread is started.
pub fn restart_tuned() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let switch = std::env::var(SWITCH).ok();
    if plan(switch.as_deref(), std::env::var_os(TUNABLES_VAR).is_some()) == Plan::Stay {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("tether"));
    let mut command = Command::new(exe);
    command.args(args).env(TUNABLES_VAR, TUNABLES).env(SWITCH, TUNED);
    exec(&mut command, arg0);
}

#[cfg(unix)]
fn exec(command: &mut Command, arg0: OsString) {
    use std::os::unix::process::CommandExt;
    let error = command.arg0(arg0).exec();
    eprintln!("tether: could not restart with the allocator tuned ({error}); running with glibc's defaults");
}

#[cfg(not(unix))]
fn exec(_command: &mut Command, _arg0: OsString) {}

/// Keep the tuning to tether: a child (the agent, an exec adapter) gets the environment tether
/// was started with. Only what [`restart_tuned`] added is removed.
pub fn untuned_child(command: &mut Command) -> &mut Command {
    if std::env::var(SWITCH).is_ok_and(|v| v == TUNED) {
        command.env_remove(SWITCH).env_remove(TUNABLES_VAR);
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_once_and_never_over_the_users_choice() {
        let table = [
            (None, false, Plan::Restart),
            (Some(TUNED), false, Plan::Stay), // the restarted process
            (Some(TUNED), true, Plan::Stay),
            (Some("default"), false, Plan::Stay), // the user's opt-out
            (None, true, Plan::Stay),             // the user's own GLIBC_TUNABLES
        ];
        for (switch, user_tunables, expected) in table {
            assert_eq!(plan(switch, user_tunables), expected, "{switch:?} {user_tunables}");
        }
    }

    #[test]
    fn the_tunables_are_the_documented_ones() {
        for name in
            ["arena_max=1", "mmap_threshold=65536", "trim_threshold=65536", "tcache_count=1", "stack_cache_size=0"]
        {
            assert!(TUNABLES.contains(name), "{name}");
        }
        assert!(!TUNABLES.contains(' '), "{TUNABLES}");
    }
}
