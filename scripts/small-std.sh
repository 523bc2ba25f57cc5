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
# More flags for these builds, each measured on x86_64 musl (bench/run.sh, 2026-12-04 and -05):
# - no file:line:column in panic locations: 70 KB (3,820,312 -> 3,750,680 bytes). A panic
#   still logs its message and thread; the glibc build (cargo build --release) keeps them.
# - unwind tables only for the functions a panic can unwind through: 37 KB more (-> 3,713,816).
# - panic = "abort": about 0.97 MB more (build-static, 2026-12-05: 3,721,816 -> 2,752,392
#   bytes, the code differing only by poisoned.txt between the two): no unwind
#   tables, no landing pads. A panic then ends the process, and the service manager starts it
#   again (scripts/tether.*; README, "Behaviour you can rely on"). A decoder's panic is still
#   contained, across that restart: the input's fingerprint goes to poisoned.txt first, and is
#   skipped from then on (src/adapters/contain.rs; tests/it/telegram.rs and build-static's
#   check under qemu drive that path).
#   The glibc build keeps unwinding, which contains such a panic without the restart.
# And the symbol names scripts/hot-code.txt was made from (v0, which names generic arguments).
small_std_rustflags="-Z location-detail=none -C force-unwind-tables=no -C panic=abort -C symbol-mangling-version=v0"

# The functions a running daemon executes are linked side by side (scripts/hot-code.txt, made
# by scripts/hot-code.sh; scripts/hot-code.py says why): the idle x86_64 binary then maps
# 1.5-1.8 MiB of code instead of 2.7. That takes a second link by rust-lld (shipped with rustc) with
# the build's symbols, then stripped; without python3, c++filt or nm, or when that link
# fails, the binary is linked as before.
# The TLS client's functions come second: a daemon that makes no TLS connection maps none.
# The same link folds functions that compiled to the same code into one (--icf=all: x86_64
# 2,503,848 -> 2,489,768 bytes, 2026-12-05). Folded functions share an address, which Rust
# code cannot rely on anyway (tether compares no function pointers); --icf=safe, which keeps
# apart every function whose address is taken, folded nothing here.
small_std_hot_lists=(scripts/hot-code.txt scripts/hot-code-tls.txt)

# small_std_build TARGET [VAR=VALUE...]: build into $small_std_dir/TARGET/release/tether.
# A CARGO_TARGET_<TARGET>_RUSTFLAGS among the VAR=VALUEs is kept, with the flags above added.
small_std_build() {
    local target=$1
    shift
    local flags_var flags=$small_std_rustflags pass=() arg
    flags_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
    for arg in "$@"; do
        case $arg in
            "$flags_var="*) flags="$flags ${arg#*=}" ;;
            *) pass+=("$arg") ;;
        esac
    done
    [ "${TETHER_STD:-small}" = prebuilt ] && return 1
    if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
        echo "  rustup component add rust-src (to rebuild the standard library for size)"
        rustup component add rust-src >/dev/null 2>&1 || {
            echo "  no rust-src component: the prebuilt standard library is used"
            return 1
        }
    fi
    # cargo SUBCOMMAND [ARG...] for TARGET, the standard library from source, symbols kept
    # (the second link needs them; it strips).
    small_std_cargo() {
        local subcommand=$1
        shift
        env RUSTC_BOOTSTRAP=1 CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_PANIC=abort "${pass[@]}" \
            "$flags_var=$flags" cargo "$subcommand" --release --quiet --target "$target" --target-dir "$small_std_dir" \
            -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size "$@"
    }
    echo "  cargo build --release --target $target, the standard library rebuilt for size (scripts/small-std.sh)"
    if ! small_std_cargo build; then
        echo "  that build failed: the prebuilt standard library is used"
        return 1
    fi
    # scripts/hot-code.sh profiles the binary as built so far, with its symbols.
    [ "${SMALL_STD_SYMBOLS:-0}" = 1 ] && return 0
    local built=$small_std_dir/$target/release/tether order=$small_std_dir/$target/hot-code-order.txt found
    if command -v python3 >/dev/null && command -v c++filt >/dev/null && command -v nm >/dev/null \
        && found=$(python3 scripts/hot-code.py order nm "$built" "${small_std_hot_lists[@]}" 2>&1 >"$order"); then
        echo "  linking the code that runs side by side: $found (${small_std_hot_lists[*]})"
        # Named by its content: cargo relinks only when the arguments change, and a new list
        # (or new symbol names) changes only the file.
        local named
        named=$small_std_dir/$target/hot-code-order-$(cksum < "$order" | cut -d' ' -f1).txt
        mv "$order" "$named"
        order=$named
        small_std_cargo rustc --bin tether -- -C strip=symbols -Z unstable-options -C linker-features=+lld \
            -C link-self-contained=+linker -C "link-arg=-Wl,--symbol-ordering-file=$PWD/$order" \
            -C link-arg=-Wl,--no-warn-symbol-ordering -C link-arg=-Wl,--icf=all && return 0
        echo "  that link failed: linked as before"
    else
        echo "  not ordering the code: ${found:-needs python3, c++filt and nm}"
    fi
    small_std_cargo rustc --bin tether -- -C strip=symbols
}
