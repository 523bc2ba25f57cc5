# Sourced by scripts/build-static and bench/run.sh: build tether with the Rust standard library
# rebuilt for size.
#
# Why: rustup's standard library comes compiled for speed (opt-level 3). Compiled with tether's
# release profile (opt-level "z", LTO) and std's `optimize_for_size` feature, the static x86_64
# musl binary is 289 KB smaller (4,109,400 -> 3,820,312 bytes) and 0.3 MiB less of it is mapped
# when idle (bench/run.sh, 2026-12-04), for 3% more instructions per Telegram message (471,560
# -> 486,463 under callgrind; CPU time did not tell them apart). It takes rustup's rust-src
# component and two unstable cargo flags, which RUSTC_BOOTSTRAP=1 allows on stable Rust (fuzzing
# uses it the same way). Its own target dir keeps it from rebuilding the normal build's std.
# TETHER_STD=prebuilt skips it; callers fall back to a normal build when it fails.

small_std_dir=target/small-std

# small_std_build TARGET [VAR=VALUE...]: build into $small_std_dir/TARGET/release/tether.
small_std_build() {
    local target=$1
    shift
    [ "${TETHER_STD:-small}" = prebuilt ] && return 1
    if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
        echo "  rustup component add rust-src (to rebuild the standard library for size)"
        rustup component add rust-src >/dev/null 2>&1 || {
            echo "  no rust-src component: the prebuilt standard library is used"
            return 1
        }
    fi
    echo "  cargo build --release --target $target, the standard library rebuilt for size (scripts/small-std.sh)"
    if ! env RUSTC_BOOTSTRAP=1 "$@" cargo build --release --quiet --target "$target" --target-dir "$small_std_dir" \
        -Z build-std=std,panic_unwind -Z build-std-features=optimize_for_size; then
        echo "  that build failed: the prebuilt standard library is used"
        return 1
    fi
}
