"""Compile ns3link.cc once against the ns3 wheel, so an ns-3 process starts in a fraction of a second.

Through the wheel's own loader (``from ns import ns``, cppyy) ns-3 takes 14-21 s
and ~630 MB to start here: cling parses every module's headers each time.
Loading only the four modules a link needs through cppyy still takes 5-10 s
(~230 MB), and 5-7 s with a cppyy precompiled header, which saves the parsing
but not the JIT compilation of our C++ at -O2 on every start. A shared library
compiled once with the system's g++ against the wheel's headers and libraries
starts in ~0.1 s and ~22 MB, and cppyy (and its GIL, held for the whole
simulation) is not needed at run time: sim.py calls the library's small C API
through ctypes. bench/bench_ns3.py measures all of these (figures above: a
2-core machine at load average 4-10). Since WiFi segments the library also links
ns-3's wifi, mobility and propagation modules; the process still starts in ~0.11 s
(bench/bench_wifi.py).

The library fits one ns3 wheel, compiler and source: its file name carries a
hash of them, so a stale one is never used, only rebuilt (atomically). It
lives in the venv: ``.venv/share/daitn/ns3link/libns3link-<hash>.so``.

CLI (the set-up script runs it; idempotent): ``python -m testbed.ns3link.build [--force]``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "ns3link.cc"
NS3_PIN = "3.44.post0"
MODULES = ("wifi", "mobility", "propagation", "fd-net-device", "network", "core")
# The wheel's libraries were built with these (lib64/cmake/ns3/ns3Targets.cmake,
# INTERFACE_COMPILE_DEFINITIONS): the same here, so headers mean the same to both.
DEFINES = ("__LINUX__", "NS3_BUILD_PROFILE_RELEASE", "NS3_LOG_ENABLE", "NS3_ASSERT_ENABLE")
CXXFLAGS = ("-O2", "-std=c++20", "-fPIC", "-shared", "-Wall")


class BuildError(RuntimeError):
    """The ns3 wheel or a C++ compiler is missing, or the compile failed; says which and what to do."""


def ns3_root() -> Path:
    """The wheel's ns3/ directory (include/, lib64/)."""
    try:
        root = Path(md.distribution("ns3").locate_file("ns3")).resolve()
    except md.PackageNotFoundError as e:
        raise BuildError(f"the ns3 wheel is not installed in {sys.prefix}; "
                         f"run: {sys.executable} -m pip install ns3=={NS3_PIN}") from e
    if not (root / "include" / "ns3" / "fd-net-device.h").exists():
        raise BuildError(f"{root} does not hold ns-3's headers (include/ns3/fd-net-device.h)")
    return root


def lib_dir() -> Path:
    root = ns3_root()
    return root / "lib64" if (root / "lib64").is_dir() else root / "lib"


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler (g++) found: install the Debian package g++ "
                         "(scripts/setup.sh does), or set CXX")
    return cxx


def command(out: Path) -> list[str]:
    ver = md.version("ns3").split(".post")[0]
    libs = lib_dir()
    return [compiler(), *CXXFLAGS, *(f"-D{d}" for d in DEFINES),
            "-isystem", str(ns3_root() / "include"), str(SOURCE), "-o", str(out),
            f"-L{libs}", *(f"-lns{ver}-{m}" for m in MODULES), f"-Wl,-rpath,{libs}"]


def key() -> str:
    """Hash of everything the library depends on."""
    h = hashlib.sha256()
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    # Paths resolved and the source's path left out: checkouts (git worktrees)
    # sharing one venv and one source text share one library.
    cmd = " ".join(command(Path("OUT"))).replace(str(SOURCE), "SOURCE")
    for part in (md.version("ns3"), str(ns3_root()), cxx, *version, cmd, SOURCE.read_text()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


LIB_DIR_ENV = "DAITN_NS3LINK_DIR"   # where the library lives, if not under the venv


def library_path() -> Path:
    base = os.environ.get(LIB_DIR_ENV) or Path(sys.prefix) / "share" / "daitn" / "ns3link"
    return Path(base) / f"libns3link-{key()}.so"


def build(force: bool = False, log=print) -> Path:
    """Compile the library if missing (or ``force``); return its path. Atomic: a
    concurrent start sees either no library or a complete one."""
    out = library_path()
    if out.exists() and not force:
        log(f"ns3link: library up to date: {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = command(tmp)
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {SOURCE.name} against the ns3 wheel failed (exit {r.returncode}):\n"
                         f"$ {' '.join(cmd)}\n{r.stderr[-4000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
    for old in out.parent.glob("libns3link-*.so"):
        if old != out:
            old.unlink(missing_ok=True)
    log(f"ns3link: built {out} in {time.monotonic() - t0:.1f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.ns3link.build",
                                 description="Compile the ns-3 side of ns3 links against the ns3 wheel.")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--print-path", action="store_true", help="print where the library goes and exit")
    args = ap.parse_args(argv)
    try:
        if args.print_path:
            print(library_path())
        else:
            build(force=args.force)
    except BuildError as e:
        print(f"ns3link: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
