"""Open tap interfaces ourselves and put them where the link ends belong.

The ns3 wheel's TapBridge execs a tap-creator helper at a path baked in when
the wheel was built (/gcl-builds/...), which does not exist here. We open
``/dev/net/tun`` ourselves (TUNSETIFF, IFF_TAP | IFF_NO_PI: plain Ethernet
frames) and hand the descriptor to an ns-3 FdNetDevice. The taps are not
persistent: an interface lives as long as a descriptor to it is open, so when
the ns-3 process ends, however it ends, its taps go with it, in whatever
namespace they were moved to. Nothing to clean up.
"""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess

from testbed.ns3link.config import TapEnd

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class TapError(RuntimeError):
    """A tap could not be opened or placed; says which and what ip said."""


def open_tap(name: str) -> int:
    """Create tap ``name`` in this process's namespace; return its descriptor
    (close-on-exec: pass it to a child with ``pass_fds``)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(f"cannot open /dev/net/tun for tap {name}: {e} (run as root; is the tun "
                       "module available?)") from e
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        raise TapError(f"cannot create tap {name}: {e}") from e
    return fd


def netns_path(netns: str | int) -> str:
    return f"/proc/{netns}/ns/net" if isinstance(netns, int) else f"/run/netns/{netns}"


def in_netns(netns: str | int | None, argv: list[str]) -> list[str]:
    """``argv`` run inside the namespace (None: here)."""
    if netns is None:
        return argv
    return ["nsenter", f"--net={netns_path(netns)}", "--", *argv]


def _ip_batch(netns: str | int | None, lines: list[str], what: str):
    r = subprocess.run(in_netns(netns, ["ip", "-batch", "-"]), input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        where = "the root namespace" if netns is None else f"namespace {netns!r}"
        raise TapError(f"{what} in {where} failed: {(r.stderr or r.stdout).strip()}\n"
                       f"ip commands: {lines}")


def link_exists(netns: str | int | None, ifname: str) -> bool:
    r = subprocess.run(in_netns(netns, ["ip", "-o", "link", "show", "dev", ifname]),
                       capture_output=True, text=True, timeout=15)
    return r.returncode == 0


def check_place(end: TapEnd, where: str):
    """Refuse before anything is made: the namespace must exist and the name be free."""
    if end.netns is not None and not os.path.exists(netns_path(end.netns)):
        raise TapError(f"{where}: namespace {end.netns!r} does not exist ({netns_path(end.netns)})")
    if link_exists(end.netns, end.ifname):
        raise TapError(f"{where}: an interface {end.ifname!r} already exists in "
                       f"{'the root namespace' if end.netns is None else repr(end.netns)}")


def place(fd_name: str, end: TapEnd):
    """Move tap ``fd_name`` (made in the root namespace) to ``end.netns``, call it
    ``end.ifname``, set its MAC and MTU, bring it up and give it ``end.addrs``."""
    if end.netns is not None:
        _ip_batch(None, [f"link set dev {fd_name} netns {end.netns}"], f"moving tap {fd_name}")
    lines = []
    if fd_name != end.ifname:
        lines.append(f"link set dev {fd_name} name {end.ifname}")
    if end.mac:
        lines.append(f"link set dev {end.ifname} address {end.mac}")
    lines.append(f"link set dev {end.ifname} mtu {end.mtu} up")
    lines += [f"addr add {a} dev {end.ifname}" for a in end.addrs]
    _ip_batch(end.netns, lines, f"configuring tap {end.ifname}")


__all__ = ["TapError", "open_tap", "place", "check_place", "in_netns", "netns_path", "link_exists"]
