"""Unit tests for the tc command builders (testbed/shaping.py).

The loss filter is checked by running its classic-BPF bytecode in a tiny
interpreter (only the opcodes a cls_bpf loss program needs).
"""
import re

import pytest

from testbed.shaping import (TC_ACT_SHOT, TC_ACT_UNSPEC, UNSHAPED_RATE_MBIT, egress_commands,
                             htb_burst_bytes, loss_bpf_bytecode)

SKF_AD_OFF = -0x1000
SKF_AD_RANDOM = 56
U32 = 2**32


def parse_bpf(text: str) -> list[tuple[int, int, int, int]]:
    """tc's "N,op jt jf k,..." bytecode string -> [(code, jt, jf, k)]."""
    parts = text.split(",")
    n = int(parts[0])
    insns = [tuple(int(x) for x in p.split()) for p in parts[1:]]
    assert n == len(insns), f"count {n} but {len(insns)} instructions"
    for code, jt, jf, k in insns:
        assert 0 <= code < 2**16 and 0 <= jt < 256 and 0 <= jf < 256 and 0 <= k < U32, (code, jt, jf, k)
    return insns


def run_bpf(insns, rand: int) -> int:
    """Execute classic BPF with ``ld rand`` returning ``rand``; return the verdict."""
    a = 0
    pc = 0
    for _ in range(len(insns) + 1):
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            assert k == (SKF_AD_OFF + SKF_AD_RANDOM) % U32, f"ld of k={k} is not SKF_AD_RANDOM"
            a = rand
            pc += 1
        elif cls == 0x05:  # BPF_JMP
            op, src = code & 0xF0, code & 0x08
            assert src == 0, "only BPF_K jumps"
            taken = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}[op]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not return")


def threshold_of(insns) -> int:
    (jge,) = [i for i in insns if i[0] == 0x35]
    return jge[3]


# --- the BPF program ------------------------------------------------------------

def test_bytecode_shape():
    text = loss_bpf_bytecode(10)
    insns = parse_bpf(text)
    assert len(insns) == 4
    assert insns[0] == (0x20, 0, 0, 4294963256)
    assert insns[1][:3] == (0x35, 1, 0)
    assert insns[2] == (6, 0, 0, TC_ACT_SHOT)
    assert insns[3] == (6, 0, 0, TC_ACT_UNSPEC)
    assert TC_ACT_SHOT == 2 and TC_ACT_UNSPEC == U32 - 1


@pytest.mark.parametrize("pct, threshold", [(10, 429496730), (50, 2**31), (1, 42949673),
                                            (0.5, 21474836), (25, 2**30)])
def test_threshold_math(pct, threshold):
    assert threshold_of(parse_bpf(loss_bpf_bytecode(pct))) == threshold
    assert abs(threshold / U32 - pct / 100) < 1e-9


@pytest.mark.parametrize("pct", [0.1, 1, 10, 33.3, 50, 90, 99.9])
def test_verdict_at_threshold_boundary(pct):
    insns = parse_bpf(loss_bpf_bytecode(pct))
    t = threshold_of(insns)
    assert 0 < t < U32
    assert run_bpf(insns, 0) == TC_ACT_SHOT
    assert run_bpf(insns, t - 1) == TC_ACT_SHOT
    assert run_bpf(insns, t) == TC_ACT_UNSPEC
    assert run_bpf(insns, U32 - 1) == TC_ACT_UNSPEC


def test_drop_fraction_matches_loss():
    # the fraction of the 32-bit random space that is dropped is loss/100
    for pct in (3, 10, 47.5):
        t = threshold_of(parse_bpf(loss_bpf_bytecode(pct)))
        assert t / U32 == pytest.approx(pct / 100, abs=1e-9)


def test_zero_loss_never_drops():
    insns = parse_bpf(loss_bpf_bytecode(0))
    for r in (0, 1, 12345, 2**31, U32 - 2, U32 - 1):
        assert run_bpf(insns, r) == TC_ACT_UNSPEC, r


@pytest.mark.parametrize("r", [0, 1, 2**31, U32 - 2])
def test_full_loss_drops(r):
    insns = parse_bpf(loss_bpf_bytecode(100))
    assert run_bpf(insns, r) == TC_ACT_SHOT


def test_full_loss_drops_even_max_random():
    insns = parse_bpf(loss_bpf_bytecode(100))
    assert run_bpf(insns, U32 - 1) == TC_ACT_SHOT


@pytest.mark.parametrize("bad", [-0.1, 100.01, 1000])
def test_loss_out_of_range(bad):
    with pytest.raises(ValueError, match="loss must be within 0..100"):
        loss_bpf_bytecode(bad)


# --- HTB burst ----------------------------------------------------------------

def test_htb_burst_minimum_and_scaling():
    assert htb_burst_bytes(1) == 15000
    assert htb_burst_bytes(0.001) == 15000
    assert htb_burst_bytes(120) == 15000  # 120 Mbit/s * 1 ms = 15000 B exactly
    assert htb_burst_bytes(100) == 15000
    assert htb_burst_bytes(1000) == 125000
    assert htb_burst_bytes(UNSHAPED_RATE_MBIT) == 1250000
    assert isinstance(htb_burst_bytes(333.3), int)


# --- egress commands -----------------------------------------------------------

@pytest.mark.parametrize("args", [(None, None, None), (0, 0, 0), (None, 0.0, None)])
@pytest.mark.parametrize("netem", [True, False])
def test_unshaped_is_empty(args, netem):
    assert egress_commands("h1-eth0", *args, netem=netem) == []


def test_bandwidth_only():
    cmds = egress_commands("s1-eth2", 100, None, None, netem=False)
    assert cmds == [
        "tc qdisc replace dev s1-eth2 root handle 1: htb default 1 r2q 10",
        "tc class replace dev s1-eth2 parent 1: classid 1:1 htb rate 100mbit burst 15000",
        "tc qdisc replace dev s1-eth2 parent 1:1 handle 10: pfifo limit 1000",
    ]
    # the same with netem available: no netem qdisc when there is nothing for it to do
    assert egress_commands("s1-eth2", 100, None, None, netem=True) == cmds


def test_bandwidth_burst_follows_rate():
    cmds = egress_commands("h2-eth0", 1000, None, None, netem=False, queue_pkts=50)
    assert "htb rate 1000mbit burst 125000" in cmds[1]
    assert cmds[2].endswith("pfifo limit 50")


def test_loss_without_netem_uses_bpf_filter():
    cmds = egress_commands("h1-eth0", None, 10, None, netem=False)
    assert len(cmds) == 4
    assert f"htb rate {UNSHAPED_RATE_MBIT}mbit burst {htb_burst_bytes(UNSHAPED_RATE_MBIT)}" in cmds[1]
    assert "pfifo" in cmds[2]
    m = re.fullmatch(r'tc filter replace dev h1-eth0 parent 1: protocol all prio 1 handle 1 '
                     r'bpf bytecode "([^"]+)" da', cmds[3])
    assert m, cmds[3]
    assert m.group(1) == loss_bpf_bytecode(10)
    assert threshold_of(parse_bpf(m.group(1))) == 429496730
    assert not any("netem" in c for c in cmds)


def test_loss_and_bw_without_netem():
    cmds = egress_commands("h1-eth0", 20, 2.5, None, netem=False)
    assert "htb rate 20mbit burst 15000" in cmds[1]
    assert cmds[3].startswith("tc filter replace dev h1-eth0 parent 1: ")
    assert loss_bpf_bytecode(2.5) in cmds[3]


def test_netem_loss():
    cmds = egress_commands("h1-eth0", 50, 10, None, netem=True, queue_pkts=200)
    assert cmds[:2] == [
        "tc qdisc replace dev h1-eth0 root handle 1: htb default 1 r2q 10",
        "tc class replace dev h1-eth0 parent 1: classid 1:1 htb rate 50mbit burst 15000",
    ]
    assert cmds[2] == "tc qdisc replace dev h1-eth0 parent 1:1 handle 10: netem loss 10.00000% limit 200"
    assert len(cmds) == 3  # no BPF filter on top of netem
    assert not any("bpf" in c or "pfifo" in c for c in cmds)


def test_netem_delay_and_loss():
    cmds = egress_commands("s3-eth1", None, 0.25, 12.5, netem=True)
    assert cmds[2] == ("tc qdisc replace dev s3-eth1 parent 1:1 handle 10: netem delay 12.5ms "
                       "loss 0.25000% limit 1000")
    assert f"rate {UNSHAPED_RATE_MBIT}mbit" in cmds[1]


def test_netem_delay_only():
    cmds = egress_commands("s3-eth1", 10, None, 5, netem=True)
    assert cmds[2] == "tc qdisc replace dev s3-eth1 parent 1:1 handle 10: netem delay 5ms limit 1000"
    assert "loss" not in cmds[2]


def test_delay_without_netem_is_refused():
    with pytest.raises(ValueError, match=r"s1-eth1: delay 5 ms needs sch_netem"):
        egress_commands("s1-eth1", 100, None, 5, netem=False)
    with pytest.raises(ValueError, match="needs sch_netem"):
        egress_commands("s1-eth1", None, 1, 0.1, netem=False)


def test_zero_delay_without_netem_is_fine():
    assert egress_commands("s1-eth1", 100, None, 0, netem=False)[1].endswith("burst 15000")


def test_loss_out_of_range_in_egress_commands():
    with pytest.raises(ValueError):
        egress_commands("h1-eth0", None, 150, None, netem=False)
