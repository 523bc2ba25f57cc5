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
