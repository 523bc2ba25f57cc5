//! Build script: places the code a running daemon uses side by side in the glibc release build.
//!
//! Why: the kernel maps a program's code 64 KiB at a time around each page it touches, and
//! the functions a daemon runs are spread over the whole binary. `scripts/hot-code-glibc.txt`
//! (and `-tls.txt`, the TLS client's) names their sections, made by
//! `scripts/hot-code.sh`; this script turns the lists into a linker script that gathers them
//! into one output section, and passes it to the linker for the `tether` binary. Measured with
//! bench/run.sh on x86_64: 3.8-4.1 MiB idle instead of 5.0-5.1 (see README, "Raspberry Pi and
//! routers"). A list made by another rustc places fewer functions (std's names change), never
//! breaks the build; a function a list names and the build lacks is simply not there.
//!
//! Only release builds for Linux with glibc, linked dynamically: the static builds place their
//! code with their own second link (`scripts/small-std.sh`), and debug builds need no
//! placing. `TETHER_PLACE_CODE=0` turns it off (a linker without `SECTIONS` support, such as
//! mold, or to measure the difference).

use std::fmt::Write as _;
use std::path::Path;

/// The TLS client's functions first: the section goes after `.text`, and rust-lld puts `.plt`
/// (every call into the C library goes through it) right after it, next to the daemon's
/// functions. GNU ld puts `.init` and `.plt` before `.text`.
const LISTS: [&str; 2] = ["scripts/hot-code-glibc-tls.txt", "scripts/hot-code-glibc.txt"];
/// The C start code's own sections, which run at start and exit (`_start`, `frame_dummy`).
const START_CODE: &str = "*crt1.o(.text) *crtbegin*.o(.text) *crtend*.o(.text)";

fn main() {
    println!("cargo::rerun-if-env-changed=TETHER_PLACE_CODE");
    for list in LISTS {
        println!("cargo::rerun-if-changed={list}");
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && !var("CARGO_CFG_TARGET_FEATURE").split(',').any(|feature| feature == "crt-static")
        && var("PROFILE") == "release"
        && var("TETHER_PLACE_CODE") != "0";
    if !wanted {
        return;
    }
    let manifest_dir = var("CARGO_MANIFEST_DIR");
    let mut patterns = Vec::new();
    for list in LISTS {
        // A missing list (a trimmed source tree) only means nothing is placed.
        let Ok(text) = std::fs::read_to_string(Path::new(&manifest_dir).join(list)) else { continue };
        patterns.extend(text.lines().map(str::trim).filter(|line| is_pattern(line)).map(str::to_owned));
    }
    if patterns.is_empty() {
        return;
    }
    let script = Path::new(&var("OUT_DIR")).join("hot-code.ld");
    if let Err(error) = std::fs::write(&script, linker_script(&patterns)) {
        println!("cargo::warning=cannot write {}: {error}; the code is not placed", script.display());
        return;
    }
    println!("cargo::rustc-link-arg-bins=-Wl,-T,{}", script.display());
}

/// A section name's pattern as hot-code.py writes them: nothing the linker script's syntax
/// would read as anything else (a line that is not is left out, never breaks the build).
fn is_pattern(line: &str) -> bool {
    !line.is_empty() && line.bytes().all(|b| b.is_ascii_alphanumeric() || b"_$.*".contains(&b))
}

/// One output section with the listed functions' sections, in the lists' order, and the C
/// start code's, inserted after `.text`.
fn linker_script(patterns: &[String]) -> String {
    let mut script =
        String::from("/* Made by build.rs from scripts/hot-code-glibc*.txt. */\nSECTIONS\n{\n  .text.hot :\n  {\n");
    for pattern in patterns {
        // `#[cold]` functions (a vector's growth, a contended lock) have sections of their own.
        let _ = writeln!(script, "    *(.text.{pattern} .text.unlikely.{pattern})");
    }
    let _ = writeln!(script, "    {START_CODE}");
    script.push_str("  }\n}\nINSERT AFTER .text;\n");
    script
}
