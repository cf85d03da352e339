"""tc commands that shape one direction of a link at the sender's egress.

Bandwidth: an HTB class at the configured rate. Loss: with netem, netem's loss
under that class; without netem (our kernel), a classic-BPF classifier in
direct-action mode that draws ``ld rand`` and returns TC_ACT_SHOT for the
configured fraction. HTB drops such packets *silently* (it returns
NET_XMIT_SUCCESS|BYPASS to the sender, exactly like netem), so TCP and ping
see a lossy wire, not a local "No buffer space" error. Delay needs netem; the
caller refuses it before anything starts where netem is missing.
Pure string builders: nothing here runs a command.
"""
from __future__ import annotations

TC_ACT_SHOT = 2
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1: "no verdict", HTB then uses the default class
UNSHAPED_RATE_MBIT = 10000  # HTB needs a rate; loss-only links get one far above veth speed


def loss_bpf_bytecode(loss_pct: float) -> str:
    """Classic BPF: drop with probability loss_pct/100 (cls_bpf direct-action).

        ld  rand                 ; A = 32-bit random (SKF_AD_RANDOM)
        jge #threshold, pass, drop
        drop: ret #TC_ACT_SHOT
        pass: ret #TC_ACT_UNSPEC
    """
    if not 0 <= loss_pct <= 100:
        raise ValueError(f"loss must be within 0..100 %, got {loss_pct}")
    if loss_pct >= 100:
        return f"1,6 0 0 {TC_ACT_SHOT}"  # the threshold cannot exceed 2**32-1: drop outright
    threshold = int(round(loss_pct / 100 * 2**32))
    ld_rand = "32 0 0 4294963256"       # BPF_LD|BPF_W|BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM
    jge = f"53 1 0 {threshold}"         # BPF_JMP|BPF_JGE|BPF_K: A >= k -> skip 1 (pass)
    return f"4,{ld_rand},{jge},6 0 0 {TC_ACT_SHOT},6 0 0 {TC_ACT_UNSPEC}"


def htb_burst_bytes(rate_mbit: float) -> int:
    # Enough tokens for ~1 ms at rate (HTB's timer granularity), never below 15 KB
    # (mininet's default): too small a burst undershoots the rate on veth.
    return max(15000, int(rate_mbit * 1e6 / 8 / 1000))


def egress_commands(intf: str, bw_mbit: float | None, loss_pct: float | None,
                    delay_ms: float | None, netem: bool, queue_pkts: int = 1000) -> list[str]:
    """Commands (without namespace prefix) to shape ``intf``'s egress; [] if unshaped."""
    loss = loss_pct or 0.0
    if not 0 <= loss <= 100:
        raise ValueError(f"{intf}: loss must be within 0..100 %, got {loss}")
    if not bw_mbit and not loss and not delay_ms:
        return []
    if delay_ms and not netem:
        raise ValueError(f"{intf}: delay {delay_ms} ms needs sch_netem, which this kernel lacks")
    rate = bw_mbit or UNSHAPED_RATE_MBIT
    cmds = [
        f"tc qdisc replace dev {intf} root handle 1: htb default 1 r2q 10",
        f"tc class replace dev {intf} parent 1: classid 1:1 htb rate {rate}mbit "
        f"burst {htb_burst_bytes(rate)}",
    ]
    if netem and (delay_ms or loss):
        args = ""
        if delay_ms:
            args += f" delay {delay_ms}ms"
        if loss:
            args += f" loss {loss:.5f}%"
        cmds.append(f"tc qdisc replace dev {intf} parent 1:1 handle 10: netem{args} limit {queue_pkts}")
    else:
        cmds.append(f"tc qdisc replace dev {intf} parent 1:1 handle 10: pfifo limit {queue_pkts}")
        if loss:
            cmds.append(f"tc filter replace dev {intf} parent 1: protocol all prio 1 handle 1 "
                        f"bpf bytecode \"{loss_bpf_bytecode(loss)}\" da")
    return cmds
