#!/usr/bin/env python3
"""The functions a running tether executes, placed together in the release binaries.

Why: the kernel maps a program's code 64 KiB at a time around each page it touches
(fault-around), and the functions a running daemon uses are spread over the whole binary, so
almost all of it ends up resident. Linked with these functions side by side, the idle static
x86_64 binary maps 1.5-1.8 MiB of code instead of 2.7 (bench/bench.rs, "mapped from files").

    hot-code.py list [--tls] BINARY CALLGRIND_OUT...
                                               the functions that ran (callgrind profiles of
                                               BINARY, which has its symbols), one name per
                                               line: what scripts/hot-code.txt holds; with
                                               --tls only the TLS client's (rustls, ring,
                                               webpki, tether::net), from the unit test that
                                               makes a real handshake
    hot-code.py order NM BINARY HOT_LIST...    BINARY's symbols for those functions, list
                                               after list, for the linker's
                                               --symbol-ordering-file
    hot-code.py patterns [--tls] BINARY CALLGRIND_OUT...
                                               for the glibc build (`cargo build --release`,
                                               which links once, with no script of ours):
                                               the sections of the functions that ran, as
                                               patterns build.rs puts in a linker script,
                                               one per line: what scripts/hot-code-glibc.txt
                                               holds

Names are compared demangled (c++filt) and without the hashes rustc adds (crate
disambiguators, legacy `::h…` suffixes, `.llvm.` suffixes), so a list made from one build
finds the same functions in another build, another target or a newer rustc. A function the
list names but a build lacks is skipped; one the list lacks goes after the listed ones.
"""

import re
import subprocess
import sys

# In this order: a clone's suffix (`.llvm.123`, ` [clone .llvm.123]`), a legacy hash, crate
# disambiguators (`tether[50144c0d7f857f55]::cli::run`).
SUFFIXES = [re.compile(r" ?\[clone [^]]*\]$|\.llvm\.\d+$"), re.compile(r"::h[0-9a-f]{16}$"), re.compile(r"\[[0-9a-f]{8,}\]")]
CODE_TYPES = set("tTwW")
# Modules of code for one CPU extension, chosen at run time (`sha2::sha256::x86_sha`).
CPU_MODULE = re.compile(r"::(x86\w*|ni|avx\w*|sse\w*|shani|aarch64\w*|neon|armv8)::")
# The TLS client's functions, among those a unit test ran (not its server's, nor the test's).
TLS = re.compile(r"^ring_core_|\b(rustls|rustls_pki_types|ring|webpki|untrusted)::|\btether::net::")


def demangled(names):
    """Each name demangled by c++filt (one line in, one line out)."""
    if not names:
        return []
    out = subprocess.run(["c++filt"], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    lines = out.stdout.split("\n")[: len(names)]
    if len(lines) != len(names):
        sys.exit("hot-code.py: c++filt returned fewer lines than it was given")
    return lines


def key(name):
    """A demangled name without the hashes that change from build to build."""
    for suffix in SUFFIXES:
        name = suffix.sub("", name)
    return name.strip()


def code_symbols(nm, binary):
    """The raw names of BINARY's functions."""
    out = subprocess.run([nm, "--defined-only", binary], capture_output=True, text=True, check=True)
    names = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in CODE_TYPES:
            names.append(parts[2])
    return names


def functions_that_ran(profile):
    """The raw names of the functions with a cost in one callgrind profile."""
    names, ran, current = {}, set(), None
    entry = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    with open(profile, errors="replace") as lines:
        for line in lines:
            found = entry.match(line.rstrip("\n"))
            if found:
                kind, number, name = found.groups()
                if name:
                    names[number] = name
                if kind == "fn":
                    current = names.get(number)
                continue
            if current and line[:1].isdigit():
                ran.add(current)
    return ran


def list_hot(binary, profiles, tls_only):
    symbols = set(code_symbols("nm", binary))
    ran = set()
    for profile in profiles:
        ran |= functions_that_ran(profile)
    ran &= symbols
    keys = {key(name) for name in demangled(sorted(ran))}
    if tls_only:
        keys = {k for k in keys if TLS.search(k) and "::tests::" not in k and "::server::" not in k}
    keys = sorted(keys)
    print("\n".join(keys))
    print(f"hot-code.py: {len(keys)} functions ran, of {len(symbols)} in {binary}", file=sys.stderr)


def pattern(name):
    """A linker-script pattern for the section of the function NAME, without the hashes."""
    name = re.sub(r"17h[0-9a-f]{16}E", "17h*", name)  # legacy: the hash closes the name
    name = re.sub(r"\.llvm\.\d+$|\.\d+$", "*", name)  # renamed by LTO
    if name.startswith("_R"):  # v0 (rustup's std): crate disambiguators, and back-references
        name = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", name)  # into a name they lengthen
        name = re.sub(r"B[0-9A-Za-z]*_", "B*_", name)
    return re.sub(r"\*+", "*", name)


def code_symbols_at(binary):
    """BINARY's functions: address -> raw names (aliases share one)."""
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    at = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in CODE_TYPES:
            at.setdefault(parts[0], []).append(parts[2])
    return at


def cpu_variants(names, ran):
    """Raw names in the CPU-specific modules (`sha2::sha256::x86_sha`) beside code that ran."""
    variants = {}  # the path around a CPU-specific module -> the raw names in it
    for raw, name in zip(names, demangled(names)):
        found = CPU_MODULE.search(key(name))
        if found:
            variants.setdefault(key(name)[: found.start()].lstrip("<"), []).append(raw)
    placed = set()
    for name in demangled(sorted(ran)):
        path = key(name).lstrip("<")
        for end in [m.start() for m in re.finditer("::", path)]:
            placed.update(variants.get(path[:end], []))
    return placed


def patterns(binary, profiles, tls_only):
    at = code_symbols_at(binary)
    aliases = {name: names for names in at.values() for name in names}
    ran = set()
    for profile in profiles:
        ran |= functions_that_ran(profile)
    ran = sorted(ran & aliases.keys())
    if tls_only:
        ran = [n for n, k in zip(ran, map(key, demangled(ran))) if TLS.search(k) and "::tests::" not in k and "::server::" not in k]
    # rustc merges identical functions into aliases of one, whose section bears only its
    # name: the profile may name another alias.
    names = {alias for name in ran for alias in aliases[name]}
    names |= cpu_variants(sorted(aliases), ran)
    found = sorted({pattern(name) for name in names})
    print("\n".join(found))
    print(f"hot-code.py: {len(found)} patterns for {len(ran)} functions that ran, of {len(aliases)} in {binary}", file=sys.stderr)


def order(nm, binary, hot_lists):
    hot = []
    for hot_list in hot_lists:
        try:
            with open(hot_list) as lines:
                hot += [line.rstrip("\n") for line in lines if line.strip()]
        except OSError as e:
            sys.exit(f"cannot read the list {hot_list}: {e.strerror}")
    raw = code_symbols(nm, binary)
    by_key = {}
    for name, readable in zip(raw, demangled(raw)):
        by_key.setdefault(key(readable), []).append(name)
    found = 0
    for name in dict.fromkeys(hot):
        symbols = by_key.pop(name, None)
        if symbols:
            found += 1
            print("\n".join(symbols))
    print(f"{found} of the {len(hot)} hot functions found", file=sys.stderr)
    if found == 0:
        sys.exit(1)


def main(args):
    if len(args) >= 3 and args[0] in ("list", "patterns"):
        tls_only = args[1] == "--tls"
        rest = args[2:] if tls_only else args[1:]
        if len(rest) < 2:
            sys.exit(__doc__)
        (list_hot if args[0] == "list" else patterns)(rest[0], rest[1:], tls_only)
    elif len(args) >= 4 and args[0] == "order":
        order(args[1], args[2], args[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
