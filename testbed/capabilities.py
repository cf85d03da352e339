"""Probe what this machine can emulate, and which backend each feature uses.

Probes create only throw-away objects tagged ``daitnprobe`` in a private
network namespace and remove them; nothing is guessed from the kernel name.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass


def _run(cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@dataclass
class Capabilities:
    root: bool
    ovs_running: bool
    ovs_version: str
    ovs_kernel_datapath: bool
    netem: bool
    htb: bool
    bpf_loss: bool
    tools: dict
    ns3: bool = False           # the ns3 link backend can run (library built against the wheel)
    ns3_detail: str = ""

    @property
    def datapath(self) -> str:
        """'kernel' when the openvswitch module is usable, else 'user' (netdev)."""
        return "kernel" if self.ovs_kernel_datapath else "user"

    def backends(self) -> dict[str, str]:
        """Feature -> backend that would emulate it (or why it cannot)."""
        return {
            "switching": f"Open vSwitch {self.ovs_version}, {self.datapath}space datapath"
            if self.ovs_running else "unavailable: Open vSwitch not running (run: sudo make setup)",
            "bandwidth": "tc htb" if self.htb else "unavailable: no sch_htb",
            "loss": "tc netem" if self.netem else ("tc htb + cls_bpf random drop" if self.bpf_loss
                                                    else "unavailable: no netem and no cls_bpf"),
            "delay": "tc netem" if self.netem else
            ("ns-3 (links.backend auto: links with delay use the ns3 backend)" if self.ns3 else
             "unavailable: no sch_netem in this kernel and the ns3 backend is not usable "
             "(links with delay are refused)"),
            "capture": "tcpdump" if self.tools.get("tcpdump") else "unavailable: no tcpdump",
            "ns3": f"available: point-to-point links with rate, delay and loss ({self.ns3_detail})"
            if self.ns3 else f"unavailable: {self.ns3_detail}",
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["datapath"] = self.datapath
        d["backends"] = self.backends()
        return d


def _probe_ns(cmds: list[str]) -> bool:
    """Run tc commands on a veth inside a temporary namespace; True if all succeed."""
    ns = f"daitnprobe{uuid.uuid4().hex[:6]}"
    if _run(["ip", "netns", "add", ns]).returncode != 0:
        return False
    try:
        base = ["ip", "netns", "exec", ns]
        if _run(base + ["ip", "link", "add", "pa", "type", "veth", "peer", "name", "pb"]).returncode:
            return False
        for c in cmds:
            if _run(base + ["sh", "-c", c]).returncode != 0:
                return False
        return True
    finally:
        _run(["ip", "netns", "del", ns])


def _ovs_kernel_module() -> bool:
    if os.path.isdir("/sys/module/openvswitch"):
        return True
    return _run(["modprobe", "-q", "openvswitch"]).returncode == 0


def probe() -> Capabilities:
    from testbed.shaping import loss_bpf_bytecode

    from testbed.network import ns3_available

    root = os.geteuid() == 0
    ns3_ok, ns3_why = ns3_available()
    tools = {t: bool(shutil.which(t)) for t in ("ovs-vsctl", "tcpdump", "tshark", "iperf3", "ethtool", "mnexec")}
    ovs_ok, ovs_ver = False, ""
    if tools["ovs-vsctl"]:
        r = _run(["ovs-vsctl", "--timeout=3", "get", "Open_vSwitch", ".", "ovs_version"])
        ovs_ok = r.returncode == 0
        ovs_ver = r.stdout.strip().strip('"')
    if not root:
        return Capabilities(False, ovs_ok, ovs_ver, False, False, False, False, tools, ns3_ok, ns3_why)
    htb = _probe_ns(["tc qdisc add dev pa root handle 1: htb default 1",
                     "tc class add dev pa parent 1: classid 1:1 htb rate 10mbit"])
    netem = _probe_ns(["tc qdisc add dev pa root netem delay 1ms"])
    bpf = _probe_ns(["tc qdisc add dev pa root handle 1: htb default 1",
                     f"tc filter add dev pa parent 1: bpf bytecode \"{loss_bpf_bytecode(10)}\" da"])
    return Capabilities(True, ovs_ok, ovs_ver, _ovs_kernel_module(), netem, htb, bpf, tools, ns3_ok, ns3_why)
