//! Contain a bad update: decode one platform update inside `catch_unwind`, so a panic in a
//! decoder costs that update only, never the thread that polls (a dead poller is a deaf bot).
//!
//! A panic's message can quote the text being decoded (a slice panic shows the string), and
//! that text is a stranger's: while a contained decoder runs, the panic hook logs only where
//! it happened. Outside [`contain`] the previous hook runs unchanged.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// True while this thread runs a contained decoder.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Panics contained since the process started (fuzz targets check that it stays put).
static CONTAINED_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many decoder panics [`contain`] has caught so far.
pub fn contained_panics() -> u64 {
    CONTAINED_PANICS.load(Ordering::SeqCst)
}

/// Run `decode`; `None` if it panicked. The panic is logged (location only, no payload).
pub fn contain<T>(decode: impl FnOnce() -> T) -> Option<T> {
    install_hook();
    let was = CONTAINED.with(|c| c.replace(true));
    // AssertUnwindSafe: a decoder reads its input and builds a new value; nothing half-updated
    // outlives the panic (the result is dropped).
    let result = panic::catch_unwind(AssertUnwindSafe(decode));
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
            if CONTAINED.with(Cell::get) {
                let place = info.location().map_or_else(String::new, place_text);
                let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
                log::error!(target: "contain", "a decoder panicked in thread {thread}{place} (message withheld: it may quote untrusted input)");
            } else {
                previous(info);
            }
        }));
    });
}

/// " at file:line", or nothing in a build without panic locations (the static builds of
/// `scripts/build-static` drop them for size: `-Z location-detail=none` leaves line 0).
fn place_text(location: &panic::Location<'_>) -> String {
    if location.line() == 0 { String::new() } else { format!(" at {}:{}", location.file(), location.line()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_contained_and_the_next_call_works() {
        assert_eq!(contain(|| 7), Some(7));
        let before = contained_panics();
        let text = "Ⱥ@bot éẞ";
        let poisoned: Option<usize> = contain(|| {
            let at = text.len() - 1;
            #[allow(clippy::string_slice)] // Deliberately not a boundary: this is the panic under test.
            let bad = &text[..at];
            bad.len()
        });
        assert_eq!(poisoned, None);
        assert!(contained_panics() > before);
        assert_eq!(contain(|| "after".to_string()).as_deref(), Some("after"));
        assert!(!CONTAINED.with(Cell::get));
    }

    #[test]
    fn the_place_is_named_when_the_build_has_it() {
        let here = panic::Location::caller();
        let expected = if here.line() == 0 { String::new() } else { format!(" at {}:{}", file!(), here.line()) };
        assert_eq!(place_text(here), expected);
    }
}
