//! Tidy checks as ordinary tests, so `cargo test` is the whole gate.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn formatted() {
    let Ok(out) = Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(repo()).output() else {
        return;
    };
    if String::from_utf8_lossy(&out.stderr).contains("not installed") {
        return; // No rustfmt on this machine: .ci/run installs it.
    }
    assert!(out.status.success(), "run `cargo fmt --all`:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn every_module_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    assert!(files.len() > 10);
    for file in files {
        if file.ends_with("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("//!"), "{} must start with a `//!` line saying what it owns", file.display());
    }
}

#[test]
fn no_unsafe_and_no_openssl_or_tokio() {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    for banned in ["name = \"tokio\"", "name = \"openssl-sys\"", "name = \"aws-lc-sys\""] {
        assert!(!lock.contains(banned), "Cargo.lock must not contain {banned}");
    }
}

/// A fuzz target runs in CI only when cargo-fuzz knows it (`fuzz/Cargo.toml`), its inputs are
/// replayed by `cargo test` only when `tether::fuzzing::TARGETS` lists it, and a reader learns
/// its properties from docs/fuzzing.md: each file in `fuzz/fuzz_targets/` is in all three.
#[test]
fn every_fuzz_target_is_built_replayed_and_documented() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("fuzz/fuzz_targets"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    files.sort();
    let mut listed: Vec<&str> = tether::fuzzing::TARGETS.iter().map(|(name, _)| *name).collect();
    listed.sort_unstable();
    assert_eq!(files, listed, "fuzz/fuzz_targets/ and tether::fuzzing::TARGETS differ");
    let manifest = std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).unwrap();
    let docs = std::fs::read_to_string(repo().join("docs/fuzzing.md")).unwrap();
    for name in files {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(docs.contains(&format!("| `{name}` |")), "docs/fuzzing.md has no row for {name}");
    }
}

/// scripts/hot-code.txt and scripts/hot-code-tls.txt (the functions the static builds link
/// side by side) are what scripts/hot-code.py writes: sorted, no build's hashes, and every
/// tether module they name still exists. A list gone stale only places fewer functions
/// together, so this is the reminder to run scripts/hot-code.sh after moving modules.
#[test]
fn the_hot_code_lists_name_modules_that_exist() {
    let mut checked = 0;
    for (file, at_least) in [("scripts/hot-code.txt", 500), ("scripts/hot-code-tls.txt", 100)] {
        let list = sorted_list(file, at_least);
        checked += checked_paths(&list.lines().collect::<Vec<_>>());
    }
    assert!(checked > 100, "only {checked} tether paths in the hot code lists");
}

/// scripts/hot-code-glibc.txt and scripts/hot-code-glibc-tls.txt (section name patterns
/// build.rs puts in the glibc build's linker script): characters a linker script reads as a
/// pattern, no build's hash, and every tether module they name still exists.
#[test]
fn the_glibc_hot_code_lists_are_patterns_build_rs_takes() {
    let mut checked = 0;
    for (file, at_least) in [("scripts/hot-code-glibc.txt", 500), ("scripts/hot-code-glibc-tls.txt", 100)] {
        let list = sorted_list(file, at_least);
        let patterns: Vec<&str> = list.lines().collect();
        for pattern in &patterns {
            // build.rs leaves out any other line (src: build.rs, is_pattern).
            let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_$.*".contains(&b);
            assert!(pattern.bytes().all(allowed), "{file}: {pattern:?} is not a section name pattern");
            assert!(!has_legacy_hash(pattern), "{file}: a build's hash left in {pattern:?}");
        }
        let readable: Vec<String> = patterns.iter().filter_map(|p| legacy_readable(p)).collect();
        checked += checked_paths(&readable.iter().map(String::as_str).collect::<Vec<_>>());
    }
    assert!(checked > 100, "only {checked} tether paths in the glibc hot code lists");
}

/// A hot code list's text, checked to hold more than `at_least` lines, sorted, no repeats.
fn sorted_list(file: &str, at_least: usize) -> String {
    let list = std::fs::read_to_string(repo().join(file)).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines.len() > at_least, "{file} has {} lines", lines.len());
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{file} must be sorted and without repeats");
    list
}

/// `17h` and 16 hex digits: the hash that ends a legacy Rust symbol, which hot-code.py turns
/// into `17h*`.
fn has_legacy_hash(pattern: &str) -> bool {
    pattern.match_indices("17h").any(|(at, _)| {
        let hex = pattern[at + 3..].bytes().take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)).count();
        hex == 16 && pattern[at + 3 + hex..].starts_with('E')
    })
}

/// A legacy Rust symbol's path, readable (`_ZN6tether7journal5write17h*` is
/// `tether::journal::write`); None for other names.
fn legacy_readable(pattern: &str) -> Option<String> {
    let mut rest = pattern.strip_prefix("_ZN")?;
    let mut segments = Vec::new();
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(len) = rest[..digits].parse::<usize>() else { break };
        let Some(segment) = rest.get(digits..digits + len) else { break };
        segments.push(segment);
        rest = &rest[digits + len..];
    }
    let path = segments.join("::");
    let readable = [("..", "::"), ("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$RF$", "&")]
        .iter()
        .fold(path, |text, (from, to)| text.replace(from, to));
    Some(readable)
}

/// Checks the tether paths in `names`; returns how many there were.
fn checked_paths(names: &[&str]) -> usize {
    let mut checked = 0;
    for name in names {
        assert!(!name.contains(".llvm.") && !has_crate_hash(name), "a build's hash left in {name:?}");
        for (at, _) in name.match_indices("tether::") {
            let modules = module_path(&name[at + "tether::".len()..]);
            // The last may be a function with an item inside (`journal::message_line::Fields`)
            // or a derive's anonymous `const _` (`acp::connection::_::<impl Deserialize …>`).
            let found = module_file(&modules).is_some()
                || modules.split_last().is_some_and(|(last, parent)| {
                    module_file(parent).is_some_and(|file| {
                        if *last == "_" {
                            return true;
                        }
                        let text = std::fs::read_to_string(file).unwrap();
                        text.contains(&format!("fn {last}(")) || text.contains(&format!("fn {last}<"))
                    })
                });
            assert!(
                found,
                "a hot code list names tether::{} (in {name:?}): run scripts/hot-code.sh",
                modules.join("::")
            );
            checked += 1;
        }
    }
    checked
}

/// `[` and eight or more hex digits: a crate disambiguator such as `core[3f2a9c1e77d0b245]`.
fn has_crate_hash(name: &str) -> bool {
    name.split('[').skip(1).any(|rest| {
        let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        hex >= 8 && rest.as_bytes().get(hex) == Some(&b']')
    })
}

/// The modules at the start of a path such as `adapters::webchat::run_socket` (the last
/// lowercase segment is an item unless a type follows it).
fn module_path(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut rest = path;
    loop {
        let len = rest.bytes().take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_').count();
        if len == 0 || !rest.as_bytes()[0].is_ascii_lowercase() && rest.as_bytes()[0] != b'_' {
            break;
        }
        let (segment, after) = rest.split_at(len);
        segments.push(segment);
        match after.strip_prefix("::") {
            Some(next) if next.starts_with(|c: char| c.is_ascii_uppercase()) => return segments,
            Some(next) => rest = next,
            None => break,
        }
    }
    segments.pop();
    segments
}

/// The file that holds a module: `src/a/b.rs`, `src/a/b/mod.rs`, or its parent's file for an
/// inline `mod b {`; None when there is no such module.
fn module_file(modules: &[&str]) -> Option<PathBuf> {
    let mut dir = repo().join("src");
    let mut file = dir.join("lib.rs");
    for module in modules {
        let (as_file, as_dir) = (dir.join(format!("{module}.rs")), dir.join(module).join("mod.rs"));
        if as_file.is_file() {
            file = as_file;
        } else if as_dir.is_file() {
            file = as_dir;
        } else if !std::fs::read_to_string(&file).unwrap().contains(&format!("mod {module} {{")) {
            return None;
        }
        dir = dir.join(module);
    }
    Some(file)
}
