"""Link fidelity: a shaped link delivers the bandwidth and loss it was given, and
what this kernel cannot emulate (delay without sch_netem) is refused up front.

Topology: h1 - s1 - s2 - h2, shaping on the s1-s2 link (both directions, at
each sender's egress: s1-eth1 and s2-eth1; see testbed/shaping.py).
"""
from __future__ import annotations

import json
import re

import pytest

from testbed.controller import free_port
from testbed.network import EmulatedNetwork, NetworkError
from testbed.wait import wait_for
from topologies.model import Link, Topology

pytestmark = pytest.mark.emulation

IPERF_PORT = 5201


def two_switches(bw_mbit=None, loss_pct=None, delay_ms=None, lossy_host_pct=None) -> Topology:
    """h1 - s1 - s2 - h2 with the s1-s2 link shaped as given. ``lossy_host_pct``
    adds h3 on s1 whose own link (h3-s1) drops that share of packets, so the
    drop happens at h3's egress, in the sender's own stack."""
    links = [Link("s1", "s2", bw_mbit=bw_mbit, loss_pct=loss_pct, delay_ms=delay_ms),
             Link("h1", "s1"), Link("h2", "s2")]
    hosts = ["h1", "h2"]
    if lossy_host_pct is not None:
        links.append(Link("h3", "s1", loss_pct=lossy_host_pct))
        hosts.append("h3")
    return Topology(name="two-switches", switches=["s1", "s2"], hosts=hosts, links=links,
                    source="tests/emulation/test_links.py").validate()


def iperf3(client, server, args: list[str], duration: float) -> tuple[dict, dict]:
    """Run one iperf3 test client -> server; return (client JSON, server JSON)."""
    srv = server.popen(["iperf3", "-s", "-1", "-J", "-p", str(IPERF_PORT)])
    cli = None
    try:
        wait_for(lambda: f":{IPERF_PORT}" in server.cmd(f"ss -Hltn 'sport = :{IPERF_PORT}'"), 10,
                 f"iperf3 server listening on {server.name}")
        cli = client.popen(["iperf3", "-c", server.IP(), "-p", str(IPERF_PORT), "-J",
                            "-t", str(duration), *args])
        out, err = cli.communicate(timeout=duration + 30)
        sout, serr = srv.communicate(timeout=15)
    finally:
        for p in (cli, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    try:
        cj, sj = json.loads(out), json.loads(sout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"iperf3 gave no JSON: client {out!r} {err!r}, server {sout!r} {serr!r}") from e
    for who, j in (("client", cj), ("server", sj)):
        if "error" in j:
            raise AssertionError(f"iperf3 {who} failed: {j['error']}; client end: {cj.get('end')}, "
                                 f"server end: {sj.get('end')}")
    return cj, sj


@pytest.mark.parametrize("rate", [10, 50])
def test_tcp_bandwidth_matches_link_rate(tmp_path, caps, emu, rate):
    """iperf3 TCP h1 -> h2 over a link shaped to ``rate`` Mbit/s delivers it within 10 %.

    Measured as goodput at the receiver (bytes the server got / time), the first
    second omitted (slow start). HTB counts Ethernet frames, so the best possible
    TCP goodput is 1448/1514 = 95.6 % of the rate; the tolerance is on the
    nominal rate as configured.
    """
    with emu.emulated(two_switches(bw_mbit=rate), tmp_path, caps=caps) as (ctl, net):
        h1, h2 = net.host("h1"), net.host("h2")
        client, _ = iperf3(h1, h2, ["-O", "1"], duration=5)
        got = client["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"configured {rate} Mbit/s, TCP goodput {got:.2f} Mbit/s "
              f"(frame rate ~{got * 1514 / 1448:.2f} Mbit/s)")
        assert rate * 0.9 <= got <= rate * 1.1, f"{got:.2f} Mbit/s on a {rate} Mbit/s link"


def ping(src, dst, count: int, interval: float) -> tuple[int, int, str]:
    """(transmitted, received, output) of ``count`` pings src -> dst."""
    out = src.cmd(f"ping -c {count} -i {interval} -W 1 {dst.IP()} 2>&1")
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, f"no ping summary: {out[-1000:]}"
    return int(m.group(1)), int(m.group(2)), out


def test_loss_matches_link_loss_and_is_silent_to_the_sender(tmp_path, caps, emu):
    """10 % loss on s1-s2 measures 7-13 % one way; the BPF drop is silent to the sender.

    Method: 3000 pings h1 -> h2 at 1 ms intervals. An echo survives only if the
    request survives s1 -> s2 and the reply s2 -> s1; both directions drop
    independently with the same p, so the round-trip loss is r = 1 - (1 - p)^2
    and the one-way loss is p = 1 - sqrt(1 - r). With r ~ 19 % over 3000 echoes
    one standard deviation of p is ~0.4 % points: 7-13 % is a wide band.
    (Not iperf3 -u: before sending, its client trades one datagram each way
    with the server and waits 30 s without retrying, so ~19 % of runs over this
    path fail before measuring anything.)

    Silence: h3 sits on a 20 % lossy link of its own, so the random drop happens
    at h3's egress qdisc, in the sending host's stack. A drop the qdisc reported
    (NET_XMIT_DROP) would make ping print "sendmsg: No buffer space available"
    (ENOBUFS); the HTB + cls_bpf drop must not, yet h3's qdisc must count drops.
    """
    topo = two_switches(loss_pct=10, lossy_host_pct=20)
    with emu.emulated(topo, tmp_path, caps=caps) as (ctl, net):
        hosts = [net.host(h) for h in ("h1", "h2", "h3")]
        h1, h2, h3 = hosts
        # Static neighbours: over a lossy path ARP fails now and then; the sender
        # then stalls, its neighbour queue overflows (losses that are not the
        # link's) and ping's packets stuck there exhaust its socket buffer
        # (sendmsg: ENOBUFS, not the qdisc's doing).
        for a in hosts:
            for b in hosts:
                if a is not b:
                    a.cmd(f"ip neigh replace {b.IP()} lladdr {b.MAC()} dev {a.defaultIntf()} nud permanent")

        sent, got, out = ping(h1, h2, 3000, 0.001)
        assert sent == 3000, out[-500:]
        round_trip = 1 - got / sent
        one_way = 100 * (1 - (1 - round_trip) ** 0.5)
        print(f"configured 10 % loss: {sent - got}/{sent} echoes lost (round trip "
              f"{100 * round_trip:.2f} %), one-way equivalent {one_way:.2f} %")
        assert 7 <= one_way <= 13, f"measured {one_way:.2f} % one-way loss on a 10 % lossy link"

        sent, got, out = ping(h3, h2, 300, 0.01)
        assert sent == 300, out[-500:]
        assert "No buffer space" not in out and "sendmsg" not in out and "errors" not in out, out[-2000:]
        stats = h3.cmd(f"tc -s qdisc show dev {h3.defaultIntf()}")
        dropped = int(re.search(r"qdisc htb 1: root.*?dropped (\d+)", stats, re.S).group(1))
        print(f"h3 egress: cls_bpf dropped {dropped} of {sent} echo requests, ping saw no "
              f"error; {got}/{sent} echoes came back")
        assert dropped > 0, stats


def test_link_with_delay_refused_on_tc_without_netem(caps, emu):
    if caps.netem:
        pytest.skip("this kernel has sch_netem: delay is emulated, not refused")
    topo = two_switches(delay_ms=5)
    run_id = emu.new_run_id()
    with emu.run_env(run_id):
        net = EmulatedNetwork(topo, run_id, caps, free_port(), log=lambda *_: None,
                              backend="tc")  # auto would use ns-3
        with pytest.raises(NetworkError, match=r"link s1-s2 .*netem"):
            with net:
                pytest.fail("EmulatedNetwork built a network with a delay it cannot emulate")
    assert net.net is None
    assert emu.bridges_of_run(run_id) == []
    emu.assert_no_leftovers([run_id], timeout=0)
