//! Build script: places the code a running daemon uses side by side in the glibc release build.
//!
//! Why: the kernel maps a program's code 64 KiB at a time around each page it touches, and
//! the functions a daemon runs are spread over the whole binary. `scripts/hot-code-glibc.txt`
//! (and `-tls.txt`, the TLS client's) names their sections, made by
//! `scripts/hot-code.sh`; this script turns the lists into a linker script that gathers them
//! into one output section, and passes it to the linker for the `tether` binary. Measured with
//! bench/run.sh on x86_64: 3.6-3.9 MiB idle instead of 5.0-5.1 (see README, "Raspberry Pi and
//! routers"). A list made by another rustc places fewer functions (std's names change), never
//! breaks the build; a function a list names and the build lacks is simply not there.
//!
//! Only release builds for Linux with glibc, linked dynamically: the static builds place their
//! code with their own second link (`scripts/small-std.sh`), and debug builds need no
//! placing. `TETHER_PLACE_CODE=0` turns it off (a linker without `SECTIONS` support, such as
//! mold, or to measure the difference).

use std::fmt::Write as _;
use std::path::Path;

/// The daemon's functions, then the TLS client's (which a daemon without TLS never runs). The
/// section goes before `.text`, right after `.init`, which the dynamic loader runs at start:
/// its 64 KiB window is then one the daemon maps anyway. (`.plt` holds only two cold entries,
/// `__cxa_finalize` and `_Unwind_Resume`: calls into the C library go through the GOT.)
const LISTS: [&str; 2] = ["scripts/hot-code-glibc.txt", "scripts/hot-code-glibc-tls.txt"];
/// The C start code's own sections, which run at start and exit (`_start`, `frame_dummy`).
const START_CODE: &str = "*crt1.o(.text) *crtbegin*.o(.text) *crtend*.o(.text)";
/// ring's SHA-256, which each conversation's start runs (its control socket token is an
/// HMAC-SHA256, src/control.rs), as does the audit log on each text with `"content": "hash"`.
/// It is assembly: one section for the whole file (every CPU's variant, 13 KB on x86_64), not
/// one per function, and its constants in the file's `.rodata`, which rust-lld puts at the
/// end of the binary's. Left there, the two cost a 64 KiB window of code and one of constants
/// that nothing else the daemon uses shares (0.13 MiB idle on x86_64).
const SHA256_FILE: &str = "*-sha256-*.o";

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
    let [daemon, tls] = LISTS.map(|list| {
        // A missing list (a trimmed source tree) only means nothing is placed.
        let text = std::fs::read_to_string(Path::new(&manifest_dir).join(list)).unwrap_or_default();
        text.lines().map(str::trim).filter(|line| is_pattern(line)).map(str::to_owned).collect::<Vec<_>>()
    });
    if daemon.is_empty() && tls.is_empty() {
        return;
    }
    let script = Path::new(&var("OUT_DIR")).join("hot-code.ld");
    if let Err(error) = std::fs::write(&script, linker_script(&daemon, &tls)) {
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

/// One output section inserted before `.text`: the daemon's functions' sections, in the
/// list's order, the C start code's and SHA-256's, then the TLS client's functions. And
/// SHA-256's constants at the start of the constants.
fn linker_script(daemon: &[String], tls: &[String]) -> String {
    let mut script =
        String::from("/* Made by build.rs from scripts/hot-code-glibc*.txt. */\nSECTIONS\n{\n  .text.hot :\n  {\n");
    // `#[cold]` functions (a vector's growth, a contended lock) have sections of their own.
    let functions = |patterns: &[String]| -> String {
        patterns.iter().map(|pattern| format!("    *(.text.{pattern} .text.unlikely.{pattern})\n")).collect()
    };
    script.push_str(&functions(daemon));
    let _ = writeln!(script, "    {START_CODE}");
    let _ = writeln!(script, "    {SHA256_FILE}(.text)");
    script.push_str(&functions(tls));
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let _ = writeln!(script, "SECTIONS\n{{\n  .rodata.hot : {{ {SHA256_FILE}(.rodata) }}\n}}\nINSERT BEFORE .rodata;");
    script
}
