//! Log setup: one line per event, `UTC-time LEVEL target: message`, on stderr.
//! The target is the channel's name (or `acp`, `core`), so one channel's story can be grepped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The log goes to stderr: an error logged there needs no second copy on stderr.
static ON_STDERR: AtomicBool = AtomicBool::new(false);

/// Whether the log was set up to write to stderr (so it is what the user sees).
pub fn on_stderr() -> bool {
    ON_STDERR.load(Ordering::Relaxed)
}

/// Log at info (debug with `verbose`); `RUST_LOG` overrides either.
pub fn init(verbose: bool) {
    init_to(verbose, None);
}

/// Like [`init`], writing to `target` (a log file) instead of stderr.
pub fn init_to(verbose: bool, target: Option<Box<dyn Write + Send>>) {
    // Our own debug lines, not the WebSocket and TLS libraries' (they would drown ours).
    let default = if verbose { "debug,tungstenite=info,rustls=info" } else { "info" };
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(default);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    builder.format(|buf, record| {
        // Upstream errors may echo a configured secret: never let one into the log.
        let message = record.args().to_string();
        let message = crate::redact::clean(&message);
        writeln!(buf, "{} {:<5} {}: {}", utc_now(), record.level(), record.target(), message)
    });
    let to_stderr = target.is_none();
    if let Some(target) = target {
        builder.target(env_logger::Target::Pipe(target));
    }
    if builder.try_init().is_ok() {
        ON_STDERR.store(to_stderr, Ordering::Relaxed);
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_now() -> String {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format_utc(since.as_secs(), since.subsec_millis())
}

/// A unix time in milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_at(unix_ms: u64) -> String {
    format_utc(unix_ms / 1000, (unix_ms % 1000) as u32)
}

fn format_utc(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_795_236_007, 876, "2026-11-21T04:40:07.876Z"),
        ];
        for (secs, millis, expected) in cases {
            assert_eq!(format_utc(secs, millis), expected);
        }
    }
}
