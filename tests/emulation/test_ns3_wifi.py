"""ns-3 WiFi segments: frames bridged between real interfaces and an ns-3 WLAN, rates that
follow the distance, stations moved while running, and a real run whose plan changes
as stations walk away from the access point.

``test_wifi_segment_*``: one access point and two stations between network namespaces
of our own (``dwifi-<run id>-*``, removed in ``finally``), no switch: ping and TCP
through the WLAN, a station moved through the running process's control channel.
``test_wifi_edge_*``: ``experiments/wifi_edge.yaml`` through ``daitn run`` (Mininet
hosts, userspace Open vSwitch, the DCC, PyTorch nodes): two data nodes that are
WiFi stations walk away during training and the DCC re-plans because of it.
All take the emulation lock, as the runs do.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from testbed.capabilities import probe
from testbed.network import emulation_lock
from testbed.ns3link import ConfigError, Ns3Links, StationSpec, TapEnd, WifiSpec
from testbed.wait import wait_for

pytestmark = pytest.mark.emulation
REPO = Path(__file__).resolve().parents[2]
DAITN = [sys.executable, "-m", "testbed.cli"]
AP_IP, STA_IPS = "10.207.0.100", ("10.207.0.1", "10.207.0.2")
STA_MACS = ("00:00:00:00:00:01", "00:00:00:00:00:02")
PORT = 5203


def sh(ns: str, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


@contextmanager
def wlan(tmp_path: Path, emu, positions=((5.0, 0.0), (0.0, 8.0)), sensitivity: float = -90.0):
    """(sim, ns_ap, [ns_sta1, ns_sta2]): an access point's tap in one namespace, two
    stations' in two others. On the way out the process and every tap must be gone."""
    run_id = emu.new_run_id("w")
    names = [f"dwifi-{run_id}-ap", f"dwifi-{run_id}-s1", f"dwifi-{run_id}-s2"]
    made = []
    with emulation_lock(lambda *_: None):
        try:
            for ns in names:
                subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
                made.append(ns)
                subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
            seg = WifiSpec("w1", ap=TapEnd("eth0", netns=names[0], mac="02:d7:00:00:00:01", addrs=(f"{AP_IP}/24",)),
                           stations=tuple(StationSpec(f"s{i + 1}", TapEnd("eth0", netns=names[i + 1], mac=STA_MACS[i],
                                                                          addrs=(f"{STA_IPS[i]}/24",)),
                                                      position=positions[i]) for i in range(2)),
                           rx_sensitivity_dbm=sensitivity)
            with Ns3Links([], tmp_path, run_id, wifi=[seg], max_lag_ms=0) as sim:
                yield sim, names[0], names[1:]
            for ns in names:
                assert "eth0" not in sh(ns, ["ip", "-o", "link", "show"]).stdout, f"tap left in {ns}"
        finally:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    emu.assert_no_leftovers([run_id])


def ping_ok(ns: str, dst: str, count: int = 5) -> tuple[int, str]:
    r = sh(ns, ["ping", "-n", "-c", str(count), "-i", "0.1", "-W", "2", dst])
    m = re.search(r"(\d+) received", r.stdout)
    return (int(m.group(1)) if m else 0), r.stdout[-600:]


def tcp_mbps(client_ns: str, server_ns: str, server_ip: str, seconds: float = 3) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{PORT}" in sh(server_ns, ["ss", "-Hltn", f"sport = :{PORT}"]).stdout, 10,
                 "iperf3 server listening")
        r = sh(client_ns, ["iperf3", "-c", server_ip, "-p", str(PORT), "-J", "-t", str(seconds)],
               timeout=seconds + 60)
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()
    j = json.loads(r.stdout)
    assert "error" not in j, j["error"]
    return j["end"]["sum_received"]["bits_per_second"] / 1e6


def test_wifi_segment_bridges_hosts_and_rate_follows_distance(tmp_path, emu):
    """Frames cross the WLAN both ways (AP side <-> stations, station <-> station through
    the AP); TCP from a station 5 m from the AP gets what 54 Mbit/s 802.11a gives
    (~24 Mbit/s), and after the station is moved to 85 m while running (the control
    channel) the channel model says 12 Mbit/s PHY, the rate manager uses it, and TCP
    falls below half. A frame whose source MAC is not the station's own is not sent
    (plain infrastructure mode cannot carry it) and is counted."""
    with wlan(tmp_path, emu) as (sim, ns_ap, (ns1, ns2)):
        for ns, dst in ((ns_ap, STA_IPS[0]), (ns_ap, STA_IPS[1]), (ns1, AP_IP), (ns1, STA_IPS[1])):
            got, out = ping_ok(ns, dst)
            assert got == 5, f"{ns} -> {dst}: {out}"
        near = tcp_mbps(ns1, ns_ap, AP_IP)
        st_near = sim.wifi_status()["s1"]
        applied = sim.move_station("s1", (85, 0))
        assert applied["event"] == "applied" and applied["to"] == [85.0, 0.0, 0.0], applied
        time.sleep(1.0)   # the AP's next frames from the station carry the new SNR
        far = tcp_mbps(ns1, ns_ap, AP_IP)
        wait_for(lambda: sim.wifi_status()["s1"]["distance_m"] == 85.0, 5, "a status line after the move")
        st_far = sim.wifi_status()["s1"]
        # a frame with a foreign source MAC, written into the station's tap
        spoof = ("from scapy.all import Ether, IP, UDP, sendp; "
                 f"sendp(Ether(src='02:00:00:00:00:99', dst='ff:ff:ff:ff:ff:ff')/IP(dst='{AP_IP}')/UDP(), "
                 "iface='eth0', count=3, verbose=False)")
        r = sh(ns2, [sys.executable, "-c", spoof])
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sim.wifi_status()["s2"]["foreign_src"] >= 3, 5, "the spoofed frames counted")
        sim.set_velocity("s2", (2.0, 0.0))
        time.sleep(2.2)
        moved = sim.wifi_status()["s2"]["position"][0]
        with pytest.raises(ConfigError, match="no WiFi station 'h9'"):
            sim.move_station("h9", (1, 1))
    print(f"TCP s1 -> AP: {near:.1f} Mbit/s at 5 m ({st_near['model_rate_mbps']} Mbit/s PHY), "
          f"{far:.1f} Mbit/s at 85 m ({st_far['model_rate_mbps']} Mbit/s PHY, used {st_far['up_rate_mbps']}); "
          f"s2 moved to x={moved}")
    assert st_near["model_rate_mbps"] == 54 and st_near["up_rate_mbps"] == 54, st_near
    assert 18 <= near <= 30, near
    assert st_far["model_rate_mbps"] == 12 and st_far["up_rate_mbps"] == 12, st_far
    assert far < 0.5 * near and far > 4, (near, far)
    assert moved > 2.0, moved


# --- a real run: experiments/wifi_edge.yaml ---------------------------------------------

@pytest.fixture(scope="module")
def wifi_run(tmp_path_factory):
    caps = probe()
    if not caps.ns3:
        pytest.fail(f"the ns3 backend is not usable here: {caps.ns3_detail}")
    out = tmp_path_factory.mktemp("wifi_edge") / "run"
    r = subprocess.run(DAITN + ["run", str(REPO / "experiments" / "wifi_edge.yaml"), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode in (0, 1), f"daitn run failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    events = [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines() if ln.strip()]
    return out, events


def test_wifi_edge_plan_changes_because_stations_walk_away(wifi_run):
    """The runner tells the DCC each moving station's slower link; the DCC re-plans
    with that link as the cause, and the new plan visits the degraded station later
    or not at all; the task still ends."""
    out, events = wifi_run
    told = [e for e in events if e["kind"] == "wifi_capacity" and not e["first"]]
    assert {e["station"] for e in told} >= {"h7", "h8"}, told
    moving = {"h7-s4": "h7", "h8-s4": "h8"}
    replans = [e for e in events if e["kind"] == "replan" and any(k in e["cause"] for k in moving)]
    assert replans, [e for e in events if e["kind"] == "replan"]
    demoted = []
    for e in replans:
        for link, host in moving.items():
            if link in e["cause"] and host in e["old"]:
                if host not in e["new"] or e["new"].index(host) > e["old"].index(host):
                    demoted.append((e["cause"], e["old"], e["new"]))
    print("re-plans caused by the WiFi links:", [(e["cause"], e["old"], e["new"]) for e in replans])
    assert demoted, f"no re-plan put a degraded station later or dropped it: {replans}"
    (task,) = json.loads((out / "summary.json").read_text())["tasks"]
    assert task["end_reason"], task


def test_wifi_edge_records_positions_and_rates(wifi_run):
    """Each station's position, channel and throughput are in the events; the moving
    stations' model rate falls as their distance grows; the summary and the manifest
    describe the segment; ns-3's pcaps of the WLAN are there; nothing is left over."""
    out, events = wifi_run
    samples = [e for e in events if e["kind"] == "wifi_station" and e["station"] == "h7"]
    assert len(samples) >= 5, samples
    dist = [s["distance_m"] for s in samples]
    rate = [s["model_rate_mbps"] for s in samples]
    assert dist[-1] > dist[0] + 40 and rate[-1] < rate[0], list(zip(dist, rate))
    assert all(s["associated"] for s in samples), samples
    assert any((s["down_mbps"] or 0) > 1 or (s["up_mbps"] or 0) > 1 for e in [events]
               for s in (x for x in e if x["kind"] == "wifi_station")), "no WiFi traffic measured"
    wifi = json.loads((out / "summary.json").read_text())["network"]["wifi"]
    assert set(wifi) == {"h7", "h8", "h9"} and wifi["h7"]["max_distance_m"] > 60, wifi
    links = json.loads((out / "manifest.json").read_text())["links"]
    assert sorted((ln["a"], ln["b"]) for ln in links if ln["backend"] == "wifi") == \
        [("h7", "s4"), ("h8", "s4"), ("h9", "s4")], links
    assert (out / "pcaps" / "ns3-edge-ap.pcap").stat().st_size > 0
    run_id = json.loads((out / "manifest.json").read_text())["run_id"]
    from testbed.clean import leftovers
    left = {k: v for k, v in leftovers(run_id).items() if v}
    assert not left, left
