"""Security of a real run (issue #8): what an emulated host can reach, and what the
node processes may do.

One quickstart run, kept up by ``serve_s`` so that there is time to look while the
DCC and the nodes are live:

- **The control plane is out of the hosts' reach.** From inside h1's (a client's)
  and h3's (a role-less host's) network namespace, a probe tries TCP connections to
  the controller's OpenFlow listen address and port (read from the DCC's command
  line) and to the northbound API port, on loopback, on the DCC service address and
  on every IPv4 address of the machine's own namespace. Nothing may answer as our
  controller. A connection is only counted as reaching it after a protocol exchange
  (an OpenFlow HELLO answered by a HELLO; an HTTP request answered by the DCC's API,
  ``Server: daitn-dcc/1`` and its JSON 401) - a plain TCP accept proves nothing on a
  machine with a transparent proxy. The probe refuses to run unless its namespace
  differs from the test's. The same probe from the test's own namespace, just before
  and just after, must find both the OpenFlow and the API port (so the probe can tell,
  and the controller was up all along). No spec option exposes the control plane to
  the hosts (the DCC listens on the loopback of the machine's namespace only).
- **Node processes run unprivileged.** Every node process (a launcher child that has
  entered its host's namespace) runs as the node user (``daitn-node``, else
  ``nobody``): uid/gid not 0, no supplementary groups, no capabilities
  (CapEff/CapPrm/CapAmb 0), NoNewPrivs 1. The files they write (events, task results)
  are theirs. That user, even inside a host's namespace, cannot open Open vSwitch's
  control sockets (network namespaces do not separate file-system sockets). The launcher
  parent stays root (it forks into namespaces); tcpdump, ns-3 and the DCC are the
  runner's and unaffected: the run still reaches its target and writes its captures.
"""
from __future__ import annotations

import inspect
import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodes import wire
from tests.emulation.test_ai_traffic import (NSENTER, assert_all_tasks_reached, background_run,
                                             host_shell_pid, netns, node_pid, run_processes,
                                             wait_node_started)
from testbed.wait import wait_for

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(os.geteuid() != 0, reason="emulation tier needs root")]

REPO = Path(__file__).resolve().parents[2]
PROBE_HOSTS = ("h1", "h3")
NODE_HOSTS = ("h1", "h2", "h4", "h6", "h8", "h9")    # experiments/quickstart.yaml
OVS_SOCKETS = Path("/var/run/openvswitch")


# ---- the probe (runs in a fresh interpreter, inside a host's namespace) ------------------

def _probe(args: dict) -> dict:
    """Connect to each target; tell our controller from anything else by talking to it.
    Standard library only, self-contained: its source is run with ``python -c``."""
    import os
    import socket
    import threading

    me = os.readlink("/proc/self/ns/net")
    if args.get("outside") and me == args["outside"]:
        return {"error": f"not inside a host's network namespace (this is {me}, the test's own)"}

    def talk(s, kind):
        if kind == "openflow":
            s.sendall(bytes([4, 0, 0, 8, 0, 0, 0, 1]))            # OFPT_HELLO, OpenFlow 1.3, xid 1
        else:
            s.sendall(b"GET /v1/state HTTP/1.0\r\nHost: dcc\r\n\r\n")  # no token: our API says 401
        data = b""
        while len(data) < 4096:
            try:
                b = s.recv(4096)
            except (socket.timeout, OSError):
                break
            if not b:
                break
            data += b
            if kind == "openflow" and len(data) >= 8:
                break
        if kind == "openflow":
            ours = len(data) >= 8 and 1 <= data[0] <= 6 and data[1] == 0 and int.from_bytes(data[2:4], "big") >= 8
        else:
            head, _, body = data.partition(b"\r\n\r\n")
            ours = b"daitn-dcc/1" in head and b"missing or wrong token" in body
        return ours, data[:120].hex()

    def one(t, out):
        host, port, kind = t
        r = {"target": f"{host}:{port}", "kind": kind}
        try:
            with socket.create_connection((host, port), timeout=args.get("timeout", 2.0)) as s:
                s.settimeout(3.0)
                r["result"] = "connected"
                r["ours"], r["peer"] = talk(s, kind)
        except socket.timeout:
            r["result"] = "timeout"
        except ConnectionRefusedError:
            r["result"] = "refused"
        except OSError as e:
            r["result"] = f"error {e.errno} {e.strerror}"
        out.append(r)

    results: list = []
    threads = [threading.Thread(target=one, args=(t, results)) for t in args["targets"]]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    unix = []
    for path in args.get("unix", []):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            unix.append({"path": path, "result": "connected"})
        except OSError as e:
            unix.append({"path": path, "result": f"error {e.errno} {e.strerror}"})
        finally:
            s.close()
    return {"netns": me, "uid": os.getuid(), "groups": os.getgroups(),
            "results": sorted(results, key=lambda r: r["target"]),
            "unix": unix}


PROBE_SRC = inspect.getsource(_probe) + (
    "\nimport json, sys\nprint(json.dumps(_probe(json.loads(sys.argv[1]))))\n")


def run_probe(args: dict, run_id: str, host: str | None = None, user: tuple[int, int] | None = None) -> dict:
    """The probe in ``host``'s namespace (nsenter into its Mininet shell), or in ours
    (host None); as ``user`` (uid, gid; nsenter changes to it after entering, and drops
    supplementary groups) if given. Tagged with the run id, as the rogue helper is, so
    that a run-scoped clean-up would remove it."""
    cmd = [sys.executable, "-c", PROBE_SRC, json.dumps(args)]
    if host is not None:
        shell = host_shell_pid(run_id, host)
        assert shell, f"no Mininet shell of {host} in its own namespace: {run_processes(run_id)}"
        as_user = ["-S", str(user[0]), "-G", str(user[1])] if user else []
        cmd = [NSENTER, "-t", str(shell), "-n", *as_user, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/",
                       env=dict(os.environ, DAITN_RUN=run_id))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


# ---- what a process is allowed -------------------------------------------------------------

def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.split()
    return out


def controller_address(run_id: str) -> tuple[str, int]:
    """The OpenFlow listen address and port, from the DCC's command line."""
    for _, cmd in run_processes(run_id):
        if "controllers.launch" in cmd:
            port = re.search(r"--port (\d+)", cmd)
            host = re.search(r"--host (\S+)", cmd)
            assert port, cmd
            return (host.group(1) if host else "127.0.0.1"), int(port.group(1))
    raise AssertionError(f"no DCC process in run {run_id}: {run_processes(run_id)}")


def machine_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()})


def node_account() -> tuple[str, int, int]:
    from nodes.launcher import node_user
    return node_user()


# ---- one live run, looked at while it serves ---------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    out = tmp_path_factory.mktemp("security") / "run"
    facts = SimpleNamespace(out=out)
    with background_run(out, "serve_s=20") as run:
        rid = facts.run_id = run.wait_started()
        for h in NODE_HOSTS:
            wait_node_started(run, h)
        ctl_host, of_port = facts.of = controller_address(rid)
        api_port = wait_for(lambda: json.loads((out / "dcc-state.json").read_text()).get("api_port")
                            if (out / "dcc-state.json").exists() else None, 60, "the DCC's API port")
        facts.api_port = api_port
        ports = [(of_port, "openflow"), (api_port, "api")]
        addresses = sorted({ctl_host, "127.0.0.1", wire.DCC_IP, *machine_addresses()})
        targets = [(a, p, k) for a in addresses for p, k in ports]
        ours = netns(os.getpid())
        control = {"targets": [(ctl_host, of_port, "openflow"), ("127.0.0.1", api_port, "api")]}
        facts.before = run_probe(control, rid)
        facts.inside = {h: run_probe({"outside": ours, "targets": targets}, rid, h) for h in PROBE_HOSTS}
        facts.after = run_probe(control, rid)
        user, uid, gid = facts.account = node_account()
        sockets = sorted(str(p) for p in OVS_SOCKETS.iterdir() if p.is_socket())
        facts.unix = run_probe({"outside": ours, "targets": [], "unix": sockets}, rid, "h1", (uid, gid))
        facts.nodes = {}
        for h in NODE_HOSTS:
            pid = node_pid(rid, h)
            assert pid, f"no node process of {h}: {run_processes(rid)}"
            facts.nodes[h] = proc_status(pid)
        launchers = [p for p, cmd in run_processes(rid) if "nodes.launcher" in cmd and netns(p) == ours]
        assert len(launchers) == 1, launchers
        facts.launcher = proc_status(launchers[0])
        facts.still_serving = run.alive()
        t0 = time.time()
        facts.rc = run.wait()
        facts.text = run.text()
        print(f"security run: probed and checked, then {time.time() - t0:.1f} s to the end")
    yield facts


def test_probe_finds_the_controller_from_the_machine_namespace(live):
    """The control: from the test's namespace, both ports answer as ours, before and
    after the hosts' probes (else 'not reachable' below would prove nothing)."""
    for when in (live.before, live.after):
        got = {r["kind"]: r for r in when["results"]}
        assert got["openflow"]["result"] == "connected" and got["openflow"]["ours"], when
        assert got["api"]["result"] == "connected" and got["api"]["ours"], when
    assert live.still_serving, "the run ended while the hosts were probed"


@pytest.mark.parametrize("host", PROBE_HOSTS)
def test_hosts_cannot_reach_the_control_plane(live, host):
    got = live.inside[host]
    assert "error" not in got, got
    assert got["netns"] != netns(os.getpid())
    results = got["results"]
    print(f"{host}: " + ", ".join(f"{r['target']} ({r['kind']}) {r['result']}" for r in results))
    assert len(results) >= 6 and {r["kind"] for r in results} == {"openflow", "api"}
    reached = [r for r in results if r.get("ours")]
    assert not reached, f"{host} reached the DCC: {reached}"
    # loopback in the host's namespace is the host's own: nothing listens there
    local = [r for r in results if r["target"].startswith("127.0.0.1:")]
    assert local and all(r["result"] == "refused" for r in local), local


def test_node_processes_run_unprivileged(live):
    user, uid, gid = live.account
    assert uid != 0 and gid != 0
    for h, st in live.nodes.items():
        assert st["Uid"] == [str(uid)] * 4 and st["Gid"] == [str(gid)] * 4, (h, st["Uid"], st["Gid"])
        assert st.get("Groups", []) == [], (h, st.get("Groups"))
        for cap in ("CapEff", "CapPrm", "CapAmb"):
            assert int(st[cap][0], 16) == 0, (h, cap, st[cap])
        assert st["NoNewPrivs"] == ["1"], (h, st["NoNewPrivs"])
    # the launcher parent keeps root: it forks the children that enter the namespaces
    assert live.launcher["Uid"][0] == "0"


def test_node_user_cannot_touch_open_vswitch(live):
    got = live.unix
    assert "error" not in got and got["uid"] == live.account[1] and not got["groups"], got
    assert got["unix"], f"no Open vSwitch control socket in {OVS_SOCKETS}"
    opened = [u for u in got["unix"] if u["result"] == "connected"]
    assert not opened, f"the node user opened {opened}"
    assert all("Permission denied" in u["result"] for u in got["unix"]), got["unix"]


def test_run_completes_and_nodes_own_their_files(live):
    assert_all_tasks_reached(live.out, live.rc, live.text)
    _, uid, _ = live.account
    events = [live.out / "events" / f"{h}.jsonl" for h in NODE_HOSTS]
    results = list((live.out / "results").glob("task-*.json"))
    assert results and all(p.stat().st_uid == uid for p in events + results), \
        {str(p): p.stat().st_uid for p in events + results}
    pcaps = list((live.out / "pcaps").glob("*.pcap"))
    assert len(pcaps) == 3 and all(p.stat().st_size > 24 for p in pcaps), pcaps   # tcpdump: the runner's
    assert pwd.getpwuid(uid).pw_name == live.account[0]
