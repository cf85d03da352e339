"""ns-3 as a link backend of real runs (`daitn run`): a two-switch spec whose
switch-switch link has 10 ms one-way delay, on a kernel without netem.

``links.backend: auto`` lets ns-3 carry the delayed link and tc the others; the
run completes, the manifest says which backend carried which link, TCP
handshakes across the link take ~2x10 ms, ns-3's own pcaps decode with
`daitn trace`, and nothing of the run is left. ``links.backend: tc`` with delay
is refused before anything starts (exit 3), as before.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.capabilities import probe
from testbed.network import host_ip

pytestmark = pytest.mark.emulation
REPO = Path(__file__).resolve().parents[2]
DAITN = [sys.executable, "-m", "testbed.cli"]
TOPO = Path(__file__).resolve().parent / "data" / "ns3_two_switch.yaml"
SPEC = f"""
name: ns3run
seed: 1
topology: {{file: {TOPO}}}
links: {{bw: 100}}
nodes: {{h1: [client], h2: [data], h3: [data], h4: [mpvu]}}
data: {{dataset: digits, partition: dirichlet, alpha: 0.3}}
model: {{hidden: [32]}}
training: {{local_epochs: 1, lr: 0.1, batch_size: 4, momentum: 0.5}}
tasks:
  - {{id: 1, client: h1, target_accuracy: 0.6, deadline_s: 60, max_laps: 4}}
capture: [h1-eth0, h2-eth0, h4-eth0]
"""
ONE_WAY_MS = 10.0


@pytest.fixture(scope="module")
def caps():
    c = probe()
    if c.netem:
        pytest.skip("this kernel has netem: auto keeps delay links on tc")
    if not c.ns3:
        pytest.fail(f"the ns3 backend is not usable here: {c.ns3_detail}")
    return c


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ns3spec") / "spec.yaml"
    p.write_text(SPEC)
    return p


@pytest.fixture(scope="module")
def ns3_run(caps, spec_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("ns3run") / "run"
    r = subprocess.run(DAITN + ["run", str(spec_file), "--out", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, f"daitn run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return out


def handshake_rtts_ms(pcap: Path, across: set[tuple[str, str]]) -> list[float]:
    """SYN -> SYN/ACK times (ms) of the TCP connections between the given address
    pairs that the capture's own host opened (at the server the gap is ~0)."""
    me = host_ip(pcap.name.split("-eth")[0])
    from scapy.all import IP, TCP, rdpcap
    syn, rtts = {}, []
    for p in rdpcap(str(pcap)):
        if IP not in p or TCP not in p:
            continue
        ip, tcp = p[IP], p[TCP]
        if tcp.flags == "S" and ip.src == me:
            syn[(ip.src, tcp.sport, ip.dst, tcp.dport)] = float(p.time)
        elif tcp.flags == "SA":
            k = (ip.dst, tcp.dport, ip.src, tcp.sport)
            if k in syn and (k[0], k[2]) in across:
                rtts.append((float(p.time) - syn.pop(k)) * 1000)
    return rtts


def test_run_completes_over_an_ns3_link(ns3_run):
    (t,) = json.loads((ns3_run / "summary.json").read_text())["tasks"]
    assert t["reached"], t
    assert (ns3_run / "ns3" / "config.json").is_file()
    assert (ns3_run / "logs" / "ns3.log").is_file()


def test_manifest_says_auto_chose_ns3_for_delay_and_tc_for_the_rest(ns3_run):
    links = json.loads((ns3_run / "manifest.json").read_text())["links"]
    by = {(ln["a"], ln["b"]): ln["backend"] for ln in links}
    assert by.pop(("s1", "s2")) == "ns3"
    assert set(by.values()) == {"tc"} and len(by) == 4
    assert next(ln for ln in links if ln["backend"] == "ns3")["delay"] == ONE_WAY_MS


def test_rtt_across_the_ns3_link(ns3_run):
    left, right = [host_ip(h) for h in ("h1", "h2")], [host_ip(h) for h in ("h3", "h4")]
    across = {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
    rtts = [r for p in (ns3_run / "pcaps").glob("h*-eth0~*.pcap") for r in handshake_rtts_ms(p, across)]
    assert rtts, "no TCP connection crossed the ns-3 link in the captures"
    rtt = statistics.median(rtts)
    print(f"TCP handshake RTT across the ns-3 link: median {rtt:.2f} ms of {len(rtts)}: {rtts}")
    assert 0.9 * 2 * ONE_WAY_MS <= rtt <= 1.1 * 2 * ONE_WAY_MS, rtts


def test_ns3_pcaps_decode(ns3_run):
    from testbed.trace import decode_pcap
    key = (ns3_run / "auth.key").read_bytes()
    pcaps = sorted((ns3_run / "pcaps").glob("ns3-*.pcap"))
    assert [p.name for p in pcaps] == ["ns3-s1-s2-a.pcap", "ns3-s1-s2-b.pcap"]
    for p in pcaps:
        msgs, _ = decode_pcap(p, key)
        assert msgs, f"{p}: no DA-ITN message decoded"


def test_no_leftovers(ns3_run, emu):
    run_id = json.loads((ns3_run / "manifest.json").read_text())["run_id"]
    emu.assert_no_leftovers([run_id])
    r = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    assert "s1-eth2" not in r.stdout and "s2-eth1" not in r.stdout, r.stdout


def test_tc_backend_with_delay_refused(caps, spec_file, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(DAITN + ["run", str(spec_file), "--out", str(out), "--set", "links.backend=tc"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 3, (r.returncode, r.stdout[-1000:], r.stderr[-1000:])
    assert "link s1-s2" in r.stderr and "netem" in r.stderr, r.stderr
    assert not out.exists() or not any(out.iterdir())
