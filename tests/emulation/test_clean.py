"""`clean` removes the testbed's leftovers and nothing that is not the testbed's.

Each test builds real objects: OVS bridges (tagged ``external_ids:daitn-run``
or not), veth pairs, network namespaces and processes (with ``DAITN_RUN`` in
their environment or not), then checks what survives ``clean``. Everything is
removed in ``finally`` blocks, whatever happens.

Note: ``test_clean_all_keeps_foreign`` runs ``clean()`` for *all* runs, as
``daitn clean`` does: it would also stop another testbed run live on this
machine, so emulation tests must not run concurrently with other runs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.emulation
if os.geteuid() != 0:
    pytest.skip("needs root (creates bridges, namespaces and veths)", allow_module_level=True)

from testbed.clean import clean, leftovers  # noqa: E402
from testbed.network import emulation_lock  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATAPATH = "system" if os.path.isdir("/sys/module/openvswitch") else "netdev"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r


def bridges() -> set[str]:
    return set(sh("ovs-vsctl", "--timeout=10", "list-br").stdout.split())


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


def netns() -> set[str]:
    return {ln.split()[0] for ln in sh("ip", "netns", "list").stdout.splitlines() if ln.strip()}


def env_without_run() -> dict:
    return {k: v for k, v in os.environ.items() if k != "DAITN_RUN"}


def start(cmd: list[str], run: str | None) -> subprocess.Popen:
    env = env_without_run()
    if run is not None:
        env["DAITN_RUN"] = run
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def add_bridge(name: str, run: str | None):
    args = ["ovs-vsctl", "--timeout=10", "add-br", name, "--", "set", "bridge", name,
            f"datapath_type={DATAPATH}", "fail_mode=secure"]
    args += ["--", "br-set-external-id", name, "daitn-run" if run else "owner", run or "someone-else"]
    sh(*args)


def add_veth(a: str, b: str):
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "up")
    sh("ip", "link", "set", b, "up")


class Ours:
    """One run's leftovers, named with `p` (a short prefix) so tests can coexist.

    bridge {p}br0 tagged with the run, with port {p}br0-eth1 (veth whose peer
    {p}h1-eth0 is in the root namespace, so clean must `ip link del` it) and
    port {p}br0-eth2 (veth whose peer is in a namespace held by a process of
    the run, like a Mininet host shell's), plus a plain `sleep 300` of the run.
    """

    def __init__(self, run: str, p: str):
        self.run, self.br = run, f"{p}br0"
        self.port1, self.peer1 = f"{p}br0-eth1", f"{p}h1-eth0"
        self.port2, self.peer2 = f"{p}br0-eth2", f"{p}h2-eth0"
        self.procs: list[subprocess.Popen] = []

    def create(self):
        add_bridge(self.br, self.run)
        add_veth(self.port1, self.peer1)
        add_veth(self.port2, self.peer2)
        host = start(["unshare", "--net", "sh", "-c", "echo ready; exec sleep 300"], self.run)
        self.procs.append(host)
        assert host.stdout.readline().strip() == "ready"
        sh("ip", "link", "set", self.peer2, "netns", str(host.pid))
        for port in (self.port1, self.port2):
            sh("ovs-vsctl", "--timeout=10", "add-port", self.br, port)
        self.procs.append(start(["sleep", "300"], self.run))
        return self

    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def assert_present(self):
        assert self.br in bridges()
        assert link_exists(self.port1) and link_exists(self.peer1) and link_exists(self.port2)
        assert all(p.poll() is None for p in self.procs)
        left = leftovers(self.run)
        assert self.br in left["bridges"]
        assert {self.port1, self.port2} <= set(left["interfaces"])
        assert self.pids() <= {p["pid"] for p in left["processes"]}

    def assert_gone(self):
        assert self.br not in bridges()
        for name in (self.port1, self.peer1, self.port2, self.peer2):
            assert not link_exists(name), f"{name} survived clean"
        for p in self.procs:
            p.wait(timeout=5)   # reap: clean signalled it
            assert p.returncode == -signal.SIGTERM, (p.args, p.returncode)
        assert leftovers(self.run) == {"processes": [], "bridges": [], "interfaces": [],
                                       "namespaces": []}

    def remove(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.br, check=False)
        for name in (self.port1, self.port2):
            sh("ip", "link", "del", name, check=False)


class Foreign:
    """Objects that are not the testbed's: all must survive any clean."""

    BR, BR_PORT, BR_PEER = "foreignbr0", "foreignbr0-p1", "foreignbr0-p1b"
    NS, VETH_A, VETH_B = "foreignns0", "foreignva0", "foreignvb0"

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def create(self):
        add_bridge(self.BR, None)
        add_veth(self.BR_PORT, self.BR_PEER)
        sh("ovs-vsctl", "--timeout=10", "add-port", self.BR, self.BR_PORT)
        sh("ip", "netns", "add", self.NS)
        add_veth(self.VETH_A, self.VETH_B)
        self.proc = start(["sleep", "300"], None)
        return self

    def assert_intact(self):
        assert self.BR in bridges()
        assert sh("ovs-vsctl", "list-ports", self.BR).stdout.split() == [self.BR_PORT]
        for name in (self.BR_PORT, self.BR_PEER, self.VETH_A, self.VETH_B):
            assert link_exists(name), f"foreign interface {name} was removed"
        assert self.NS in netns()
        assert self.proc.poll() is None, "foreign process was killed"

    def remove(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.BR, check=False)
        for name in (self.BR_PORT, self.VETH_A):
            sh("ip", "link", "del", name, check=False)
        sh("ip", "netns", "del", self.NS, check=False)


@pytest.fixture
def foreign():
    f = Foreign()
    try:
        yield f.create()
    finally:
        f.remove()


def test_clean_all_keeps_foreign(foreign):
    ours = Ours("cleantest", "dclA")
    probe_ns = "daitnprobe-test"
    try:
        ours.create()
        sh("ip", "netns", "add", probe_ns)
        ours.assert_present()
        assert probe_ns in leftovers()["namespaces"]

        logged: list[str] = []
        with emulation_lock():  # an unscoped clean stops every run: never mid-way through one
            counts = clean(log=logged.append)

        ours.assert_gone()
        assert probe_ns not in netns()
        foreign.assert_intact()
        # >=: leftovers of other (dead) runs on this machine go too.
        assert counts["processes"] >= 2 and counts["bridges"] >= 1
        assert counts["interfaces"] >= 1 and counts["namespaces"] >= 1
        assert any(f"deleted bridge {ours.br}" in m for m in logged), logged
        assert any(f"deleted interface {ours.port1}" in m for m in logged), logged
    finally:
        ours.remove()
        sh("ip", "netns", "del", probe_ns, check=False)


def test_clean_one_run_keeps_other_runs(foreign):
    kept, gone = Ours("cleantest", "dclA"), Ours("other", "dclB")
    try:
        kept.create()
        gone.create()
        before = leftovers("cleantest")

        counts = clean(run_id="other", log=lambda m: None)

        gone.assert_gone()
        kept.assert_present()
        assert leftovers("cleantest") == before
        foreign.assert_intact()
        assert counts == {"processes": 2, "bridges": 1, "interfaces": 1, "namespaces": 0}

        assert clean(run_id="cleantest", log=lambda m: None)["bridges"] == 1
        kept.assert_gone()
    finally:
        gone.remove()
        kept.remove()


def test_run_scoped_clean_keeps_probe_namespaces():
    ns = "daitnprobe-test2"
    try:
        sh("ip", "netns", "add", ns)
        assert clean(run_id="cleantest-none", log=lambda m: None)["namespaces"] == 0
        assert ns in netns()
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_sigkill_after_grace():
    run = "cleantest-kill"
    stubborn = start([sys.executable, "-c",
                      "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(300)"], run)
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        logged: list[str] = []
        t0 = time.monotonic()
        assert clean(run_id=run, log=logged.append)["processes"] == 1
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert 4.5 < time.monotonic() - t0 < 10
        assert any("SIGKILL" in m for m in logged), logged
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait()
        stubborn.stdout.close()


@pytest.mark.parametrize("cli", ["daitn clean", "python -m testbed.clean"])
def test_cli_run_scoped_spares_itself(cli):
    """`daitn clean --run R` (and `python -m testbed.clean --run R`), itself started
    with DAITN_RUN=R, removes R's leftovers but not itself (nor its ancestors)."""
    if cli == "daitn clean":
        daitn = Path(sys.executable).parent / "daitn"
        assert daitn.exists(), f"{daitn} is missing: run `sudo make setup`"
        cmd = [str(daitn), "clean"]
    else:
        cmd = [sys.executable, "-m", "testbed.clean"]
    ours = Ours("cleantest-cli", "dclC")
    try:
        ours.create()
        env = dict(env_without_run(), DAITN_RUN=ours.run,
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run(cmd + ["--run", ours.run], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "removed 2 processes, 1 bridges, 1 interfaces, 0 namespaces" in r.stdout, r.stdout
        ours.assert_gone()
    finally:
        ours.remove()


MININET_RUNNER = r"""
import os, sys
os.environ["DAITN_RUN"] = RUN          # as the runner does before building
from mininet.link import Link
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import OVSSwitch
setLogLevel("error")

class Tagged(OVSSwitch):
    def bridgeOpts(self):
        return super().bridgeOpts() + f" external_ids:daitn-run={RUN}"

net = Mininet(topo=None, build=False, controller=None, link=Link, autoSetMacs=False,
              waitConnected=False,
              switch=lambda n, **kw: Tagged(n, datapath=DATAPATH, failMode="secure", **kw))
for s in ("s91", "s92"):
    net.addSwitch(s, dpid="%016x" % int(s[1:]))
for h in ("h91", "h92"):
    net.addHost(h)
net.addLink("h91", "s91"); net.addLink("s91", "s92"); net.addLink("s92", "h92")
net.build(); net.start()
node = net.get("h91").popen(["sleep", "300"])   # a node process holding h91's namespace
print(node.pid, flush=True)
os.kill(os.getpid(), 9)                        # the runner dies without stopping anything
"""


def test_clean_after_killed_mininet_run(foreign):
    """A real Mininet network whose runner was SIGKILLed: clean(run) removes it all."""
    run = "cleantest-mn"
    code = f"RUN = {run!r}\nDATAPATH = {'kernel' if DATAPATH == 'system' else 'user'!r}\n"
    names = ("s91-eth1", "s91-eth2", "s92-eth1", "s92-eth2")
    node_pid = None
    try:
        r = subprocess.run([sys.executable, "-c", code + MININET_RUNNER], env=env_without_run(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
        node_pid = int(r.stdout.split()[0])
        left = leftovers(run)
        assert left["bridges"] == ["s91", "s92"], left
        assert node_pid in {p["pid"] for p in left["processes"]}, left

        counts = clean(run_id=run, log=lambda m: None)

        assert counts["bridges"] == 2 and counts["processes"] >= 1, counts
        assert not Path(f"/proc/{node_pid}").exists() or \
            Path(f"/proc/{node_pid}/stat").read_text().split()[2] == "Z"
        assert not {"s91", "s92"} & bridges()
        # The host namespace is torn down asynchronously by the kernel.
        deadline = time.monotonic() + 5
        while any(map(link_exists, names)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [n for n in names if link_exists(n)]
        assert leftovers(run) == {"processes": [], "bridges": [], "interfaces": [], "namespaces": []}
        foreign.assert_intact()
    finally:
        clean(run_id=run, log=lambda m: None)
        for br in ("s91", "s92"):
            sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", br, check=False)
        for n in names:
            sh("ip", "link", "del", n, check=False)
