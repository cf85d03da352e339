"""ns-3 links (testbed.ns3link): fidelity of delay, rate and loss, captures, and the lag guard.

Each test makes two network namespaces of its own (``dns3-<run id>-a``/``-b``:
the name carries the tag; removed in ``finally``), joins them by one ns-3 link (a tap in each, ns-3 in
between, one process) and measures across it with ping, iperf3 and a UDP
counter. Nothing here touches Mininet or Open vSwitch.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from testbed import clean
from testbed.network import emulation_lock
from testbed.ns3link import ConfigError, LinkSpec, Ns3DiedError, Ns3LagError, Ns3Links, TapEnd, TapError
from testbed.wait import wait_for

pytestmark = pytest.mark.emulation

IP_A, IP_B = "10.203.0.1", "10.203.0.2"
MAC_A, MAC_B = "02:d3:00:00:00:01", "02:d3:00:00:00:02"
IPERF_PORT = 5201
UDP_PORT = 5999


def sh(ns: str, cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


@contextmanager
def namespaces(run_id: str):
    """Two fresh namespaces named after the run; always deleted."""
    names = [f"dns3-{run_id}-a", f"dns3-{run_id}-b"]
    made = []
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def link_between(ns_a: str, ns_b: str, **kw) -> LinkSpec:
    return LinkSpec("l1", a=TapEnd("eth0", netns=ns_a, mac=MAC_A, addrs=(f"{IP_A}/24",)),
                    b=TapEnd("eth0", netns=ns_b, mac=MAC_B, addrs=(f"{IP_B}/24",)), **kw)


def static_neighbours(ns_a: str, ns_b: str):
    """No ARP across the link: a lost ARP exchange stalls the sender for a second
    and its losses are not the link's."""
    for ns, ip, mac in ((ns_a, IP_B, MAC_B), (ns_b, IP_A, MAC_A)):
        r = sh(ns, ["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent"])
        assert r.returncode == 0, r.stderr


@contextmanager
def ns3_pair(tmp_path: Path, emu, **link):
    """(sim, ns_a, ns_b): two namespaces joined by one ns-3 link. On the way out
    the ns-3 process and both taps must be gone."""
    run_id = emu.new_run_id("n")
    with namespaces(run_id) as (ns_a, ns_b):
        sim = Ns3Links([link_between(ns_a, ns_b, **link)], tmp_path, run_id, max_lag_ms=50)
        with sim:
            static_neighbours(ns_a, ns_b)
            yield sim, ns_a, ns_b
        for ns in (ns_a, ns_b):
            left = sh(ns, ["ip", "-o", "link", "show"]).stdout
            assert "eth0" not in left, f"tap left in {ns} after ns-3 stopped: {left}"
    emu.assert_no_leftovers([run_id])


def ping(ns: str, dst: str, count: int, interval: float) -> tuple[int, int, list[float], str]:
    """(transmitted, received, [rtt ms ...], output)."""
    r = sh(ns, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst])
    out = r.stdout + r.stderr
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, f"no ping summary: {out[-1000:]}"
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    return int(m.group(1)), int(m.group(2)), rtts, out


def iperf3(ns_client: str, ns_server: str, args: list[str], duration: float) -> dict:
    """One iperf3 test; the client's JSON."""
    srv = subprocess.Popen(["ip", "netns", "exec", ns_server, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: f":{IPERF_PORT}" in sh(ns_server, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout,
                 10, "iperf3 server listening")
        r = sh(ns_client, ["iperf3", "-c", IP_B if ns_server.endswith("-b") else IP_A, "-p",
                           str(IPERF_PORT), "-J", "-t", str(duration), *args], timeout=duration + 60)
        srv.wait(timeout=15)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    j = json.loads(r.stdout)
    assert "error" not in j, f"iperf3 failed: {j['error']}"
    return j


UDP_RECEIVER = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
seen = set()
s.settimeout(30)            # until the first datagram, then 2 s of silence ends the count
try:
    while True:
        seen.add(int.from_bytes(s.recv(2048)[:4], "big"))
        s.settimeout(2)
except socket.timeout:
    pass
print(json.dumps({"received": len(seen)}), flush=True)
"""

UDP_SENDER = """
import socket, sys, time
dst, port, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = bytes(996)
t0 = time.monotonic()
for i in range(n):
    late = t0 + i / rate - time.monotonic()
    if late > 0:
        time.sleep(late)
    s.sendto(i.to_bytes(4, "big") + pad, (dst, port))
"""


def udp_count(ns_tx: str, ns_rx: str, dst: str, n: int, rate_pps: float) -> int:
    """How many of ``n`` numbered 1000-byte datagrams, sent at ``rate_pps``, arrived."""
    rx = subprocess.Popen(["ip", "netns", "exec", ns_rx, sys.executable, "-c", UDP_RECEIVER, str(UDP_PORT)],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        r = sh(ns_tx, [sys.executable, "-c", UDP_SENDER, dst, str(UDP_PORT), str(n), str(rate_pps)],
               timeout=n / rate_pps + 60)
        assert r.returncode == 0, r.stderr
        out, _ = rx.communicate(timeout=60)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    return json.loads(out.strip().splitlines()[-1])["received"]


# --- fidelity ------------------------------------------------------------------

def test_rtt_matches_twice_the_link_delay(tmp_path, emu):
    """A 10 ms link (20 Mbit/s) gives a ping RTT of 20 ms within 10 % (mean and median).

    Expected: 2 x 10 ms plus serialising two 98-byte frames at 20 Mbit/s
    (2 x 39 us) plus the taps' and ns-3's own time. RTTs can never be below
    2 x 10 ms: that would mean the delay was not applied. Single RTTs are not
    bounded: on this shared 2-core machine one echo in a hundred or so waits
    for a CPU for several ms (outside ns-3's events: the reader thread or the
    hosts' stacks); the mean and median carry the fidelity claim.
    """
    with ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=10) as (sim, ns_a, ns_b):
        sent, got, rtts, out = ping(ns_a, IP_B, 100, 0.05)
        assert got == sent == 100, out[-800:]
        rtts.sort()
        avg, median, p95 = sum(rtts) / len(rtts), rtts[len(rtts) // 2], rtts[94]
        print(f"RTT over 2 x 10 ms: min {rtts[0]:.3f} median {median:.3f} mean {avg:.3f} "
              f"p95 {p95:.3f} max {rtts[-1]:.3f} ms; ns-3 packet lag {sim.status()['packet_lag']}")
    assert 18.0 <= avg <= 22.0, f"mean RTT {avg:.3f} ms on a 2 x 10 ms link: {rtts}"
    assert 18.0 <= median <= 22.0, f"median RTT {median:.3f} ms on a 2 x 10 ms link: {rtts}"
    assert rtts[0] >= 20.0, f"an RTT of {rtts[0]:.3f} ms beat the configured 2 x 10 ms"


def test_tcp_throughput_matches_link_rate(tmp_path, emu):
    """iperf3 TCP over a 20 Mbit/s, 2 x 10 ms ns-3 link delivers 20 Mbit/s within 10 %.

    Goodput at the receiver, first 2 s omitted (slow start). The rate counts whole
    Ethernet frames, so the best TCP can do is 1448/1514 of it: 19.13 Mbit/s.
    """
    with ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=10) as (sim, ns_a, ns_b):
        j = iperf3(ns_a, ns_b, ["-O", "2"], duration=8)
        got = j["end"]["sum_received"]["bits_per_second"] / 1e6
        ab = sim.counters("l1")["a_to_b"]
    lag = sim.report
    print(f"20 Mbit/s link: TCP goodput {got:.2f} Mbit/s, retransmits "
          f"{j['end']['sum_sent'].get('retransmits')}, ns-3 a->b {ab}, lag max {lag.max_ms:.3f} ms, "
          f"packet lag p99 {lag.packet.get('p99_ms')} ms")
    assert 18.0 <= got <= 22.0, f"{got:.2f} Mbit/s of TCP goodput on a 20 Mbit/s link"
    assert ab["write_errors"] == 0, ab


def test_link_is_full_duplex(tmp_path, emu):
    """Both directions at once each get (nearly) the full rate; a shared, half-duplex
    medium would split it. Each direction now also carries the other flow's ACKs
    (66 bytes per two 1514-byte segments), so the best goodput is ~18.7 Mbit/s
    each: the bound is 85 % of the rate, far above the 50 % of a shared medium."""
    with ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=10) as (sim, ns_a, ns_b):
        j = iperf3(ns_a, ns_b, ["-O", "2", "--bidir"], duration=6)
    fwd = j["end"]["sum_received"]["bits_per_second"] / 1e6
    rev = j["end"]["sum_received_bidir_reverse"]["bits_per_second"] / 1e6
    print(f"20 Mbit/s link, both directions at once: a->b {fwd:.2f}, b->a {rev:.2f} Mbit/s")
    assert 17.0 <= fwd <= 22.0 and 17.0 <= rev <= 22.0, f"a->b {fwd:.2f}, b->a {rev:.2f} Mbit/s"


def fresh_counters(sim) -> dict:
    """l1's a->b counters from a status line written after now (they come once a second)."""
    t = time.time()
    wait_for(lambda: sim.status().get("unix_s", 0) > t, 5, "a status line newer than now")
    return sim.counters("l1")["a_to_b"]


def test_link_changes_while_running(tmp_path, emu):
    """Delay, rate and loss change while the link runs (Ns3Links.set_link: a command on
    the process's stdin, applied by the simulator thread), and the change is measured.

    5 ms -> 25 ms one way: the ping RTT goes from ~10 to ~50 ms; 20 -> 5 Mbit/s: TCP
    goodput falls to 5 Mbit/s within 10 %; 0 -> 20 % loss: ns-3 drops ~20 % of the
    pings' frames (its own counter) and then no more once set back to 0."""
    with emulation_lock(lambda *_: None), ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=5) as (sim, ns_a, ns_b):
        _, got1, rtt1, out = ping(ns_a, IP_B, 20, 0.05)
        applied = sim.set_link("l1", delay_ms=25)
        assert applied["event"] == "applied" and applied["delay_ns"] == 25e6, applied
        _, got2, rtt2, out2 = ping(ns_a, IP_B, 20, 0.05)
        sim.set_link("l1", rate_mbps=5)
        j = iperf3(ns_a, ns_b, ["-O", "2"], duration=6)
        slow = j["end"]["sum_received"]["bits_per_second"] / 1e6
        before = fresh_counters(sim)
        sim.set_link("l1", loss_pct=20, delay_ms=1)
        sent, echoed, _, _ = ping(ns_a, IP_B, 300, 0.01)
        mid = fresh_counters(sim)
        sim.set_link("l1", loss_pct=0)
        ping(ns_a, IP_B, 100, 0.01)
        after = fresh_counters(sim)
        with pytest.raises(ConfigError, match="no ns-3 link 'nope'"):
            sim.set_link("nope", rate_mbps=1)
    med1, med2 = sorted(rtt1)[len(rtt1) // 2], sorted(rtt2)[len(rtt2) // 2]
    frames = mid["frames_in"] - before["frames_in"]
    lost = mid["loss_drops"] - before["loss_drops"]
    print(f"RTT {med1:.2f} -> {med2:.2f} ms (5 -> 25 ms one way); TCP at 5 Mbit/s: {slow:.2f} Mbit/s; "
          f"20 % loss: ns-3 dropped {lost} of {frames} frames a->b, pings {echoed}/{sent}")
    assert got1 == got2 == 20, (out[-400:], out2[-400:])
    assert 9.0 <= med1 <= 12.0 and 49.0 <= med2 <= 53.0, (rtt1, rtt2)
    assert 4.5 <= slow <= 5.5, f"{slow:.2f} Mbit/s after the rate went to 5 Mbit/s"
    assert 0.13 <= lost / frames <= 0.27, (lost, frames)
    assert after["loss_drops"] == mid["loss_drops"], "frames still dropped after loss went back to 0"


def test_loss_matches_configured_loss(tmp_path, emu):
    """1 % loss per direction measures 0.5-1.5 %, one way (UDP count) and from pings.

    10000 numbered datagrams a -> b: one standard deviation of the measured loss
    is 0.1 % points. 2000 pings at 10 ms: an echo survives only if the request
    and the reply both do, so the one-way loss is 1 - sqrt(1 - round-trip loss)
    (one standard deviation ~0.16 % points). ns-3's own drop counter must agree
    with what the receiver missed.
    """
    with ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=10, loss_pct=1.0) as (sim, ns_a, ns_b):
        before = sim.counters("l1")["a_to_b"]
        n = 10000
        got = udp_count(ns_a, ns_b, IP_B, n, rate_pps=2000)
        after = sim.counters("l1")["a_to_b"]
        sent, echoed, _, out = ping(ns_a, IP_B, 2000, 0.01)
    udp_loss = 100 * (n - got) / n
    rt = 1 - echoed / sent
    ping_loss = 100 * (1 - (1 - rt) ** 0.5)
    drops = after["loss_drops"] - before["loss_drops"]
    print(f"1 % loss: UDP {n - got}/{n} lost ({udp_loss:.2f} %, ns-3 dropped {drops}, queue drops "
          f"{after['queue_drops'] - before['queue_drops']}); ping {sent - echoed}/{sent} echoes lost "
          f"({100 * rt:.2f} % round trip, {ping_loss:.2f} % one way)")
    assert sent == 2000, out[-500:]
    assert 0.5 <= udp_loss <= 1.5, f"{udp_loss:.2f} % of datagrams lost on a 1 % lossy link"
    assert 0.5 <= ping_loss <= 1.5, f"{ping_loss:.2f} % one-way loss from pings on a 1 % lossy link"
    assert after["queue_drops"] == before["queue_drops"], "the queue dropped: the loss is not the error model's"
    assert abs(drops - (n - got)) <= 3, f"ns-3 dropped {drops} but the receiver missed {n - got}"


def test_rt_priority_puts_every_ns3_thread_on_sched_fifo(tmp_path, emu):
    """rt_priority: the simulator and the taps' reader threads (started after the
    policy is set, so inheriting it) all run SCHED_FIFO, with RLIMIT_RTTIME set."""
    run_id = emu.new_run_id("n")
    with namespaces(run_id) as (ns_a, ns_b):
        with Ns3Links([link_between(ns_a, ns_b, delay_ms=10)], tmp_path, run_id, rt_priority=10) as sim:
            sent, got, _, out = ping(ns_a, IP_B, 5, 0.1)
            tasks = os.listdir(f"/proc/{sim.pid}/task")
            policies = {t: Path(f"/proc/{sim.pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[38]
                        for t in tasks}
            limits = Path(f"/proc/{sim.pid}/limits").read_text()
        assert got == sent == 5, out[-500:]
        assert len(tasks) >= 3, f"expected the simulator and two tap readers, got threads {tasks}"
        assert set(policies.values()) == {"1"}, f"scheduling policy per thread (1 = SCHED_FIFO): {policies}"
        assert re.search(r"Max realtime timeout\s+500000\s+2000000\s+us", limits), limits
    emu.assert_no_leftovers([run_id])


# --- captures --------------------------------------------------------------------

def test_pcaps_show_each_frame_on_both_sides_of_the_delay(tmp_path, emu):
    """ns-3's own captures land in the run directory, scapy reads them, and an echo
    request is seen at tap a when sent and at tap b 10 ms later (Unix timestamps)."""
    from scapy.all import ICMP, rdpcap

    t0 = time.time()
    with ns3_pair(tmp_path, emu, rate_mbps=20, delay_ms=10) as (sim, ns_a, ns_b):
        sent, got, _, out = ping(ns_a, IP_B, 20, 0.05)
        assert got == sent == 20, out[-500:]
        pcaps = list(sim.pcaps)
    assert [p.name for p in pcaps] == ["ns3-l1-a.pcap", "ns3-l1-b.pcap"]
    assert all(p.parent == tmp_path / "pcaps" for p in pcaps)
    side = {}
    for p in pcaps:
        frames = rdpcap(str(p))
        side[p.name] = {(f[ICMP].type, f[ICMP].seq): float(f.time) for f in frames
                        if ICMP in f and f[ICMP].type in (0, 8)}
    a, b = side["ns3-l1-a.pcap"], side["ns3-l1-b.pcap"]
    requests = [k for k in a if k[0] == 8 and k in b]
    assert len(requests) == 20, f"echo requests in both captures: {len(requests)} of 20"
    one_way = [1000 * (b[k] - a[k]) for k in requests]
    print(f"echo request a -> b in the captures: {min(one_way):.3f}-{max(one_way):.3f} ms")
    assert all(9.9 <= d <= 11.0 for d in one_way), one_way
    assert all(t0 - 1 <= t <= time.time() + 1 for t in a.values()), "capture timestamps are not Unix time"


# --- the real-time guard and the life cycle ---------------------------------------

def test_run_fails_clearly_when_ns3_falls_behind_real_time(tmp_path, emu):
    """A simulator that cannot keep up (here: stopped for 0.3 s, as on an
    overloaded machine) ends the run with Ns3LagError saying by how much."""
    run_id = emu.new_run_id("n")
    with namespaces(run_id) as (ns_a, ns_b):
        with pytest.raises(Ns3LagError, match=r"ns-3 fell \d+\.\d+ ms behind real time .*limit 20\.00 ms"):
            with Ns3Links([link_between(ns_a, ns_b, delay_ms=10)], tmp_path, run_id, max_lag_ms=20) as sim:
                pid = sim.pid
                os.kill(pid, signal.SIGSTOP)
                time.sleep(0.3)     # the overload being emulated: not a synchronisation
                os.kill(pid, signal.SIGCONT)
                wait_for(lambda: sim.proc.poll() is not None, 10, "the ns-3 process to stop itself")
        assert sim.report.exceeded and sim.report.max_ms >= 250, sim.report
        assert "FAILED: ns-3 fell" in (tmp_path / "logs" / "ns3.log").read_text()
    emu.assert_no_leftovers([run_id])


def test_run_fails_when_ns3_dies(tmp_path, emu):
    """A simulator that dies mid-run is noticed by the watcher: check() raises while
    the run goes on, and leaving the context raises too, pointing at the log."""
    run_id = emu.new_run_id("n")
    with namespaces(run_id) as (ns_a, ns_b):
        with pytest.raises(Ns3DiedError, match=r"exited with code -9 while the run needed it; see .*ns3\.log"):
            with Ns3Links([link_between(ns_a, ns_b)], tmp_path, run_id) as sim:
                sim.check()
                os.kill(sim.pid, signal.SIGKILL)
                wait_for(lambda: sim.failure is not None, 5, "the watcher to notice")
                with pytest.raises(Ns3DiedError):
                    sim.check()
        for ns in (ns_a, ns_b):
            assert "eth0" not in sh(ns, ["ip", "-o", "link"]).stdout, f"tap left in {ns}"
    emu.assert_no_leftovers([run_id])


def test_bad_specs_are_refused_before_anything_starts(tmp_path, emu):
    run_id = emu.new_run_id("n")

    def start(links):
        with Ns3Links(links, tmp_path, run_id):
            pytest.fail("Ns3Links started links it should have refused")

    with namespaces(run_id) as (ns_a, ns_b):
        with pytest.raises(TapError, match="dns3-nonexistent.* does not exist"):
            start([link_between(ns_a, "dns3-nonexistent")])
        with pytest.raises(ConfigError, match="ifname"):
            start([LinkSpec("l1", TapEnd("x" * 16, netns=ns_a), TapEnd("eth0", netns=ns_b))])
        with pytest.raises(ConfigError, match="loss_pct"):
            start([link_between(ns_a, ns_b, loss_pct=101)])
        r = sh(ns_b, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
        assert r.returncode == 0, r.stderr
        with pytest.raises(TapError, match="already exists"):
            start([link_between(ns_a, ns_b)])
        assert "eth0" not in sh(ns_a, ["ip", "-o", "link"]).stdout, "a tap was left in namespace a"
        assert not (tmp_path / "logs" / "ns3.log").exists(), "an ns-3 process was started"
    assert clean.leftovers(run_id)["processes"] == []
