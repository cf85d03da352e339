"""Remove what testbed runs left behind, and nothing else.

Only objects that carry the testbed's marks are touched:

* processes whose environment has ``DAITN_RUN`` (the controller, node
  processes, tcpdump and the Mininet host shells all inherit it). Killing a
  host shell removes its network namespace and with it the host-side veth and
  its switch-side peer;
* Open vSwitch bridges with ``external_ids:daitn-run`` (see
  :data:`testbed.network.RUN_TAG`), and afterwards those of their ports' veth
  interfaces that still exist in the root namespace;
* root-namespace veths whose alias (``ip link set dev X alias``) is
  ``daitn-run=<run id>``: the network tags switch-side veths as soon as it
  makes them, before any bridge exists;
* network namespaces named ``daitnprobe*`` (left by an interrupted capability
  probe). They belong to no run, so they are removed only when no ``run_id``
  is given: a run-scoped clean must not break a probe running concurrently;
* network namespaces the ns-3 link tests and benchmarks make, ``dns3-<run id>-*``
  and ``dwifi-<run id>-*`` (listed apart, as ``test_namespaces``). The taps and
  ns-3 processes of ns-3 links need nothing of their own: a tap lives only as
  long as the ns-3 process holds it, and that process carries ``DAITN_RUN``.

Foreign bridges, namespaces, interfaces and processes are never touched, and
unlike ``mn -c`` this does not delete every bridge on the machine.
With ``run_id`` only that run's processes and bridges go.

CLI: ``python -m testbed.clean [--run RUN_ID] [--dry-run]``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

RUN_ENV = "DAITN_RUN"
RUN_TAG = "daitn-run"      # == testbed.network.RUN_TAG (not imported: keep this module light)
PROBE_NS_PREFIX = "daitnprobe"
TEST_NS_PREFIXES = ("dns3-", "dwifi-")   # + run id + "-": tests/emulation/test_ns3*.py, bench/bench_*ns3*/wifi
TERM_GRACE_S = 5.0


def _sh(cmd: list[str], timeout: float = 15) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")


def _err(r: subprocess.CompletedProcess) -> str:
    return (r.stderr or r.stdout).strip() or f"exit code {r.returncode}"


# --- processes -------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()   # comm may contain spaces and ')'
    return fields[0], int(fields[1]), int(fields[19])


def _ancestors() -> set[int]:
    """This process and every ancestor up to init: never signalled."""
    out, pid = set(), os.getpid()
    while pid > 0 and pid not in out:
        out.add(pid)
        st = _stat(pid)
        pid = st[1] if st else 0
    return out


def run_of(pid: int) -> str | None:
    """The DAITN_RUN value in a process's (initial) environment, else None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = RUN_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _our_processes(run_id: str | None) -> list[dict]:
    keep = _ancestors()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in keep:
            continue
        run = run_of(pid)
        if run is None or (run_id is not None and run != run_id):
            continue
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        out.append({"pid": pid, "run": run, "cmd": cmdline(pid), "start": st[2]})
    return out


def _same_alive(p: dict) -> bool:
    """True while the process we listed (same pid *and* start time) still runs."""
    st = _stat(p["pid"])
    return st is not None and st[2] == p["start"] and st[0] not in ("Z", "X")


def _kill_processes(procs: list[dict], log) -> int:
    signalled = []
    for p in procs:
        try:
            os.kill(p["pid"], signal.SIGTERM)
            signalled.append(p)
            log(f"clean: SIGTERM pid {p['pid']} (run {p['run']}): {p['cmd'][:100]}")
        except ProcessLookupError:
            pass
        except OSError as e:
            log(f"clean: cannot signal pid {p['pid']}: {e}")
    deadline = time.monotonic() + TERM_GRACE_S
    alive = [p for p in signalled if _same_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _same_alive(p)]
    for p in alive:
        try:
            os.kill(p["pid"], signal.SIGKILL)
            log(f"clean: pid {p['pid']} ignored SIGTERM for {TERM_GRACE_S:.0f} s: SIGKILL")
        except ProcessLookupError:
            pass
        except OSError as e:
            log(f"clean: cannot SIGKILL pid {p['pid']}: {e}")
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _same_alive(p)]
    for p in alive:
        log(f"clean: pid {p['pid']} still running after SIGKILL")
    return len(signalled)


# --- Open vSwitch ------------------------------------------------------------

def _ovsdb_map(value) -> dict:
    # ovs-vsctl --format=json renders a map as ["map", [[k, v], ...]].
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {k: v for k, v in value[1]}
    return {}


def _our_bridges(run_id: str | None, log=None) -> list[str]:
    r = _sh(["ovs-vsctl", "--timeout=10", "--format=json", "--columns=name,external_ids",
             "list", "Bridge"])
    if r.returncode != 0:
        if log:
            log(f"clean: cannot list Open vSwitch bridges (is it running?): {_err(r)}")
        return []
    try:
        table = json.loads(r.stdout)
        heads = table["headings"]
        rows = [dict(zip(heads, row)) for row in table["data"]]
    except (ValueError, KeyError) as e:
        if log:
            log(f"clean: cannot parse ovs-vsctl output: {e}")
        return []
    out = []
    for row in rows:
        tag = _ovsdb_map(row.get("external_ids")).get(RUN_TAG)
        if tag is not None and (run_id is None or tag == run_id):
            out.append(row["name"])
    return sorted(out)


def _ports(bridge: str) -> list[str]:
    r = _sh(["ovs-vsctl", "--timeout=10", "list-ports", bridge])
    return r.stdout.split() if r.returncode == 0 else []


def _root_veth(name: str) -> bool:
    """True if `name` is a veth in the root namespace (only veths are ever deleted)."""
    r = _sh(["ip", "-j", "-d", "link", "show", "dev", name])
    if r.returncode != 0:
        return False
    try:
        return any(i.get("linkinfo", {}).get("info_kind") == "veth" for i in json.loads(r.stdout))
    except (ValueError, AttributeError):
        return False


def _root_link_exists(name: str) -> bool:
    return _sh(["ip", "-o", "link", "show", "dev", name]).returncode == 0


def _tagged_veths(run_id: str | None) -> list[str]:
    """Root-namespace veths whose alias carries our tag (set when links are
    made, before their bridge exists: a run killed in between leaves these)."""
    out = []
    for name in sorted(os.listdir("/sys/class/net")):
        try:
            with open(f"/sys/class/net/{name}/ifalias") as f:
                alias = f.read().strip()
        except OSError:
            continue
        if not alias.startswith(RUN_TAG + "="):
            continue
        if run_id is not None and alias != f"{RUN_TAG}={run_id}":
            continue
        if _root_veth(name):
            out.append(name)
    return out


# --- namespaces --------------------------------------------------------------

def _probe_namespaces() -> list[str]:
    r = _sh(["ip", "netns", "list"])
    if r.returncode != 0:
        return []
    names = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    return sorted(n for n in names if n.startswith(PROBE_NS_PREFIX))


def _test_namespaces(run_id: str | None) -> list[str]:
    r = _sh(["ip", "netns", "list"])
    if r.returncode != 0:
        return []
    names = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
    return sorted(n for n in names for p in TEST_NS_PREFIXES
                  if n.startswith(p) and (run_id is None or n.startswith(f"{p}{run_id}-")))


# --- public API --------------------------------------------------------------

def leftovers(run_id: str | None = None) -> dict:
    """What :func:`clean` would remove now (lists), without changing anything.
    ``test_namespaces`` (ns-3 tests' and benchmarks' own) is there only when some exist."""
    bridges = _our_bridges(run_id)
    intfs = sorted({p for b in bridges for p in _ports(b) if _root_veth(p)} | set(_tagged_veths(run_id)))
    test_ns = _test_namespaces(run_id)
    return {
        "processes": [{k: p[k] for k in ("pid", "run", "cmd")} for p in _our_processes(run_id)],
        "bridges": bridges,
        "interfaces": intfs,
        "namespaces": _probe_namespaces() if run_id is None else [],
        **({"test_namespaces": test_ns} if test_ns else {}),
    }


def clean(run_id: str | None = None, log=print) -> dict:
    """Remove this testbed's leftovers (of one run if ``run_id``); return counts.

    Order matters: processes first (a killed host shell takes its namespace and
    veth pair with it), then bridges, then the bridges' veths still in the root
    namespace, then probe namespaces. A failed deletion is logged, not raised.
    """
    counts = {"processes": 0, "bridges": 0, "interfaces": 0, "namespaces": 0}

    counts["processes"] = _kill_processes(_our_processes(run_id), log)

    for br in _our_bridges(run_id, log):
        ports = _ports(br)
        r = _sh(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", br])
        if r.returncode != 0:
            log(f"clean: cannot delete bridge {br}: {_err(r)}")
            continue
        counts["bridges"] += 1
        log(f"clean: deleted bridge {br}" + (f" (ports {', '.join(ports)})" if ports else ""))
        for port in ports:
            if not _root_link_exists(port):
                continue        # gone with the bridge or with its host's namespace
            if not _root_veth(port):
                log(f"clean: kept {port}: it was a port of {br} but is not a veth")
                continue
            r = _sh(["ip", "link", "del", "dev", port])
            if r.returncode == 0:
                counts["interfaces"] += 1
                log(f"clean: deleted interface {port}")
            elif _root_link_exists(port):
                log(f"clean: cannot delete interface {port}: {_err(r)}")

    for port in _tagged_veths(run_id):
        r = _sh(["ip", "link", "del", "dev", port])
        if r.returncode == 0:
            counts["interfaces"] += 1
            log(f"clean: deleted tagged interface {port}")
        elif _root_link_exists(port):
            log(f"clean: cannot delete interface {port}: {_err(r)}")

    for ns in _test_namespaces(run_id):
        r = _sh(["ip", "netns", "del", ns])
        if r.returncode == 0:
            counts["namespaces"] += 1
            log(f"clean: deleted test namespace {ns}")
        else:
            log(f"clean: cannot delete namespace {ns}: {_err(r)}")

    if run_id is None:
        for ns in _probe_namespaces():
            r = _sh(["ip", "netns", "del", ns])
            if r.returncode == 0:
                counts["namespaces"] += 1
                log(f"clean: deleted namespace {ns}")
            else:
                log(f"clean: cannot delete namespace {ns}: {_err(r)}")

    log("clean: removed {processes} processes, {bridges} bridges, {interfaces} interfaces, "
        "{namespaces} namespaces".format(**counts))
    return counts


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m testbed.clean", description=__doc__.split("\n")[0])
    ap.add_argument("--run", dest="run_id", help="only this run's leftovers")
    ap.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    args = ap.parse_args(argv)
    if args.dry_run:
        print(json.dumps(leftovers(args.run_id), indent=1))
        return 0
    if os.geteuid() != 0:
        print("clean: must run as root (it deletes bridges and namespaces); try sudo", flush=True)
        return 1
    clean(args.run_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
