//! Contain a bad update: decode one platform update inside `catch_unwind`, so a panic in a
//! decoder costs that update only, never the thread that polls (a dead poller is a deaf bot).
//!
//! A panic's message can quote the text being decoded (a slice panic shows the string), and
//! that text is a stranger's: while a contained decoder runs, the panic hook logs only where
//! it happened. Outside [`contain`] the previous hook runs unchanged.
//!
//! A build with `panic = "abort"` (the static builds of `scripts/build-static`, where the
//! unwind tables cost about a quarter of the binary) cannot catch the panic: the process ends
//! and its service manager starts it again, and the platform hands the same update over
//! again, since it was never confirmed. So before anything else the hook appends the
//! update's [`Fingerprint`] to `poisoned.txt` in the state directory, and `contain` skips an
//! input whose fingerprint is there without decoding it: a bad update costs one restart, not
//! a restart loop. Unwinding builds write the file too, so the skip is the same in both.

use std::cell::Cell;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

/// The state directory's list of the inputs that made a decoder panic, one hexadecimal
/// fingerprint a line, newest last.
pub const POISONED_FILE: &str = "poisoned.txt";

/// How many fingerprints `poisoned.txt` keeps: the newest; each is one update a stranger
/// made a decoder panic with, and platforms stop handing an update over after a day.
const POISONED_KEPT: usize = 64;

thread_local! {
    /// The fingerprint of the input this thread's contained decoder is reading, if any.
    static CONTAINED: Cell<Option<Fingerprint>> = const { Cell::new(None) };
}

/// Panics contained since the process started (fuzz targets check that it stays put).
static CONTAINED_PANICS: AtomicU64 = AtomicU64::new(0);

/// The poisoned list: read when the daemon starts ([`remember_poisoned_in`]), added to by the
/// panic hook, so that an unwinding build skips an input the second time in the same run too.
static POISONED: Mutex<Option<Poisoned>> = Mutex::new(None);

struct Poisoned {
    file: PathBuf,
    /// Oldest first, at most [`POISONED_KEPT`].
    known: Vec<Fingerprint>,
    /// The lines in the file: appended to until twice [`POISONED_KEPT`], then rewritten.
    lines: usize,
}

fn poisoned() -> MutexGuard<'static, Option<Poisoned>> {
    POISONED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What names one platform input across a restart (a channel and an update id, or the bytes
/// of a frame): 64 bits of FNV-1a, which is stable across builds and Rust versions, unlike
/// std's hasher.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint {
    hash: u64,
    /// One of its parts is the text of `TETHER_TEST_PANIC` ([`test_probe`]).
    probed: bool,
}

/// The hash alone: a fingerprint read back from `poisoned.txt` knows nothing of a probe.
impl PartialEq for Fingerprint {
    fn eq(&self, other: &Fingerprint) -> bool {
        self.hash == other.hash
    }
}

impl Eq for Fingerprint {}

impl Fingerprint {
    /// The fingerprint of `parts`, in order (each ends with a byte no UTF-8 text holds, so
    /// `["ab", "c"]` and `["a", "bc"]` differ).
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for byte in part.iter().chain([&0xff]) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        Fingerprint { hash, probed: test_probe::wanted(parts) }
    }

    fn text(self) -> String {
        format!("{:016x}", self.hash)
    }

    fn parse(line: &str) -> Option<Fingerprint> {
        let line = line.trim();
        if line.len() != 16 {
            return None;
        }
        u64::from_str_radix(line, 16).ok().map(|hash| Fingerprint { hash, probed: false })
    }
}

/// How many decoder panics [`contain`] has caught so far.
pub fn contained_panics() -> u64 {
    CONTAINED_PANICS.load(Ordering::SeqCst)
}

/// Read `poisoned.txt` in `home` (keeping its newest entries), so that [`contain`] skips what
/// made a decoder panic before, and the panic hook adds to it. Once per process; returns how
/// many inputs it holds. A file that cannot be read or rewritten is named in the error.
pub fn remember_poisoned_in(home: &Path) -> Result<usize, String> {
    let file = home.join(POISONED_FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let (known, trimmed) = newest_fingerprints(&text);
    let mut list = Poisoned { file, lines: known.len(), known };
    if trimmed {
        list.rewrite().map_err(|e| format!("cannot rewrite {}: {e}", list.file.display()))?;
    }
    let count = list.known.len();
    *poisoned() = Some(list);
    Ok(count)
}

impl Poisoned {
    /// Add `input`, newest, to the list and to the file, flushed to disk (in a
    /// `panic = "abort"` build the process ends right after, and the restart must find it).
    /// False when it was there already.
    fn add(&mut self, input: Fingerprint) -> Result<bool, String> {
        if self.known.contains(&input) {
            return Ok(false);
        }
        self.known.push(input);
        if self.known.len() > POISONED_KEPT {
            self.known.remove(0);
        }
        if self.lines < 2 * POISONED_KEPT {
            append_fingerprint(&self.file, input).map_err(|e| e.to_string())?;
            self.lines += 1;
        } else {
            self.rewrite()?;
        }
        Ok(true)
    }

    fn rewrite(&mut self) -> Result<(), String> {
        let kept: String = self.known.iter().map(|f| f.text() + "\n").collect();
        crate::store::write_atomic(&self.file, kept.as_bytes()).map_err(|e| e.to_string())?;
        self.lines = self.known.len();
        Ok(())
    }
}

/// The newest distinct fingerprints of a `poisoned.txt`, oldest first, at most
/// [`POISONED_KEPT`]; and whether the file held anything else (older entries, repeats, lines
/// that are not fingerprints).
fn newest_fingerprints(text: &str) -> (Vec<Fingerprint>, bool) {
    let mut known: Vec<Fingerprint> = Vec::new();
    let mut trimmed = false;
    for line in text.lines().rev() {
        match Fingerprint::parse(line) {
            Some(f) if !known.contains(&f) && known.len() < POISONED_KEPT => known.push(f),
            _ => trimmed = true,
        }
    }
    known.reverse();
    (known, trimmed)
}

fn is_poisoned(input: Fingerprint) -> bool {
    poisoned().as_ref().is_some_and(|p| p.known.contains(&input))
}

/// Run `decode`, which reads the input `input` names; `None` if it panicked (logged with its
/// location only, no payload), or if that input made a decoder panic before (then `decode`
/// does not run).
pub fn contain<T>(input: Fingerprint, decode: impl FnOnce() -> T) -> Option<T> {
    install_hook();
    if is_poisoned(input) {
        CONTAINED_PANICS.fetch_add(1, Ordering::SeqCst);
        log::error!(target: "contain", "skipped an input that made a decoder panic before (fingerprint {} in {POISONED_FILE})", input.text());
        return None;
    }
    let was = CONTAINED.with(|c| c.replace(Some(input)));
    // AssertUnwindSafe: a decoder reads its input and builds a new value; nothing half-updated
    // outlives the panic (the result is dropped).
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        test_probe::panic_if_asked(input);
        decode()
    }));
    CONTAINED.with(|c| c.set(was));
    if result.is_err() {
        CONTAINED_PANICS.fetch_add(1, Ordering::SeqCst);
    }
    result.ok()
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let Some(input) = CONTAINED.with(Cell::get) else { return previous(info) };
            let place = info.location().map_or_else(String::new, place_text);
            let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
            log::error!(target: "contain", "a decoder panicked in thread {thread}{place} (message withheld: it may quote untrusted input)");
            if let Some(list) = poisoned().as_mut() {
                match list.add(input) {
                    Ok(_) => log::error!(target: "contain", "the input is skipped from now on, after a restart too (fingerprint {} in {})", input.text(), list.file.display()),
                    Err(e) => log::error!(target: "contain", "cannot add the input's fingerprint to {}: {e}", list.file.display()),
                }
            }
            if cfg!(panic = "abort") {
                log::error!(target: "contain", "this build stops on a panic (panic = \"abort\"): the service manager starts it again");
            }
            test_probe::abort_if_asked();
        }));
    });
}

/// Append one line and flush it to disk.
fn append_fingerprint(file: &Path, input: Fingerprint) -> std::io::Result<()> {
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    out.write_all((input.text() + "\n").as_bytes())?;
    out.sync_data()
}

/// " at file:line", or nothing in a build without panic locations (the static builds of
/// `scripts/build-static` drop them for size: `-Z location-detail=none` leaves line 0).
fn place_text(location: &panic::Location<'_>) -> String {
    if location.line() == 0 { String::new() } else { format!(" at {}:{}", location.file(), location.line()) }
}

/// For tests: `TETHER_TEST_PANIC=TEXT` makes a contained decoder panic on the input one of
/// whose fingerprint's parts is `TEXT` (a Telegram update id, an exec adapter's line), and
/// `TETHER_TEST_PANIC=abort:TEXT` then ends the process after the hook, as a `panic = "abort"`
/// build does. The integration tests drive the restart path with it, and `scripts/build-static`
/// checks each aborting binary with it. In every build: whoever sets tether's environment runs
/// it already, so it opens nothing to anyone else; unset, it costs a check of an empty
/// `OnceLock` per input.
mod test_probe {
    use std::sync::OnceLock;

    use super::Fingerprint;

    const ENV: &str = "TETHER_TEST_PANIC";

    /// (the part to panic on, whether to abort after the hook).
    fn asked() -> Option<&'static (String, bool)> {
        static ASKED: OnceLock<Option<(String, bool)>> = OnceLock::new();
        ASKED
            .get_or_init(|| {
                let value = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
                Some(match value.strip_prefix("abort:") {
                    Some(part) => (part.to_string(), true),
                    None => (value, false),
                })
            })
            .as_ref()
    }

    pub fn wanted(parts: &[&[u8]]) -> bool {
        asked().is_some_and(|(part, _)| parts.contains(&part.as_bytes()))
    }

    pub fn panic_if_asked(input: Fingerprint) {
        if input.probed {
            panic!("{ENV}: a decoder panics, as asked");
        }
    }

    pub fn abort_if_asked() {
        if asked().is_some_and(|(_, abort)| *abort) {
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(text: &str) -> Fingerprint {
        Fingerprint::of(&[text.as_bytes()])
    }

    #[test]
    fn a_panic_is_contained_and_the_next_call_works() {
        assert_eq!(contain(of("seven"), || 7), Some(7));
        let before = contained_panics();
        let text = "Ⱥ@bot éẞ";
        let poisoned: Option<usize> = contain(of(text), || {
            let at = text.len() - 1;
            #[allow(clippy::string_slice)] // Deliberately not a boundary: this is the panic under test.
            let bad = &text[..at];
            bad.len()
        });
        assert_eq!(poisoned, None);
        assert!(contained_panics() > before);
        assert_eq!(contain(of("after"), || "after".to_string()).as_deref(), Some("after"));
        assert!(CONTAINED.with(Cell::get).is_none());
    }

    #[test]
    fn fingerprints_tell_inputs_apart_and_read_back() {
        type Parts = &'static [&'static [u8]];
        let table: [(Parts, Parts); 3] = [
            (&[b"ab", b"c"], &[b"a", b"bc"]),
            (&[b"phone", b"1000"], &[b"phone", b"1001"]),
            (&[b"phone", b"1000"], &[b"laptop", b"1000"]),
        ];
        for (one, other) in table {
            assert_ne!(Fingerprint::of(one), Fingerprint::of(other), "{one:?} {other:?}");
        }
        let phone = Fingerprint::of(&[b"phone", b"1000"]);
        assert_eq!(phone, Fingerprint::of(&[b"phone", b"1000"]));
        assert_eq!(phone.text().len(), 16);
        assert_eq!(Fingerprint::parse(&phone.text()), Some(phone));
        // FNV-1a of the empty input is its offset basis: the constants are the published ones.
        assert_eq!(Fingerprint::of(&[]).text(), "cbf29ce484222325");
    }

    #[test]
    fn the_poisoned_file_keeps_its_newest_distinct_fingerprints() {
        let line = |n: u64| format!("{n:016x}\n");
        let many: String = (0..70).map(line).collect();
        let cases: [(String, Vec<u64>, bool); 5] = [
            (String::new(), vec![], false),
            (line(1) + &line(2), vec![1, 2], false),
            (line(1) + &line(2) + &line(1), vec![2, 1], true),
            (line(1) + "not a fingerprint\n" + "abc\n" + &line(3), vec![1, 3], true),
            (many, (6..70).collect(), true),
        ];
        for (text, want, trimmed) in cases {
            let (known, was_trimmed) = newest_fingerprints(&text);
            let hashes: Vec<u64> = known.iter().map(|f| f.hash).collect();
            assert_eq!((hashes, was_trimmed), (want, trimmed), "{text:?}");
        }
    }

    #[test]
    fn the_poisoned_file_takes_each_input_once_and_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("tether-contain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(POISONED_FILE);
        let _ = std::fs::remove_file(&file);
        let mut list = Poisoned { file: file.clone(), known: Vec::new(), lines: 0 };
        let read = || std::fs::read_to_string(&file).unwrap();
        assert_eq!(list.add(of("one")), Ok(true));
        assert_eq!(list.add(of("two")), Ok(true));
        assert_eq!(list.add(of("one")), Ok(false), "known already: not written again");
        assert_eq!(newest_fingerprints(&read()), (vec![of("one"), of("two")], false));
        // A stream of new inputs (an unwinding build panicking on each): appended up to twice
        // the kept number of lines, then rewritten to the newest.
        for n in 0..2 * POISONED_KEPT {
            assert_eq!(list.add(of(&n.to_string())), Ok(true));
            assert!(read().lines().count() <= 2 * POISONED_KEPT, "after {n}: {} lines", read().lines().count());
        }
        let newest: Vec<Fingerprint> = (POISONED_KEPT..2 * POISONED_KEPT).map(|n| of(&n.to_string())).collect();
        assert_eq!(list.known, newest);
        let (known, _) = newest_fingerprints(&read());
        assert_eq!(known, newest);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_place_is_named_when_the_build_has_it() {
        let here = panic::Location::caller();
        let expected = if here.line() == 0 { String::new() } else { format!(" at {}:{}", file!(), here.line()) };
        assert_eq!(place_text(here), expected);
    }
}
