"""Typed, strict configuration of ns-3 links: what the testbed asks for, and what sim.py runs.

Plain dataclasses rather than pydantic: sim.py reads :class:`SimConfig` on the
start-up path of the ns-3 process, which we keep short (see build.py), and the
checks are few. Unknown keys are errors naming the key and the file.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")   # IFNAMSIZ - 1, no '/', ':' or spaces
LINK_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # goes into file names and JSON unescaped
NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")  # a file in /run/netns
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class ConfigError(ValueError):
    """A link spec or a sim config is invalid: says which field of what and why."""


@dataclass(frozen=True)
class TapEnd:
    """One end of an ns-3 link: a tap interface the testbed opens and hands to ns-3.

    ``netns`` says where the interface lives: ``None`` for the root namespace (to
    attach it to an Open vSwitch bridge as a port), a name for a named namespace
    (``ip netns``), or the pid of a process in the namespace (a Mininet host's
    shell). There it is called ``ifname`` and gets ``mac``, ``mtu`` and ``addrs``
    (CIDR strings) and is brought up.
    """
    ifname: str
    netns: str | int | None = None
    mac: str | None = None
    mtu: int = 1500
    addrs: tuple[str, ...] = ()

    def check(self, where: str):
        if not IFNAME_RE.match(self.ifname or ""):
            raise ConfigError(f"{where}.ifname: {self.ifname!r} is not an interface name "
                              "(1-15 of A-Z a-z 0-9 _ . -)")
        if isinstance(self.netns, bool) or not (self.netns is None or isinstance(self.netns, (str, int))):
            raise ConfigError(f"{where}.netns: a namespace name, a pid or None, got {self.netns!r}")
        if isinstance(self.netns, str) and not NETNS_RE.match(self.netns):
            raise ConfigError(f"{where}.netns: {self.netns!r} is not a namespace name")
        if isinstance(self.netns, int) and self.netns <= 0:
            raise ConfigError(f"{where}.netns: pid must be positive, got {self.netns}")
        if self.mac is not None and not MAC_RE.match(self.mac):
            raise ConfigError(f"{where}.mac: {self.mac!r} is not a lower-case MAC address aa:bb:..")
        if not 68 <= self.mtu <= 9000:
            raise ConfigError(f"{where}.mtu: must be within 68..9000, got {self.mtu}")


@dataclass(frozen=True)
class LinkSpec:
    """A full-duplex link simulated by ns-3 between two taps.

    Each direction independently: frames queue in a drop-tail queue of
    ``queue_packets``, are serialised at ``rate_mbps`` (whole Ethernet frames; None:
    no rate limit), arrive ``delay_ms`` later and are dropped with probability
    ``loss_pct`` / 100 (per frame, per direction, as the spec's ``loss`` means).
    """
    name: str
    a: TapEnd
    b: TapEnd
    rate_mbps: float | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    queue_packets: int = 100

    def check(self, where: str = "link"):
        where = f"{where} {self.name!r}"
        if not LINK_NAME_RE.match(self.name or ""):
            raise ConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . -")
        self.a.check(f"{where}: a")
        self.b.check(f"{where}: b")
        if self.rate_mbps is not None and not 0 < self.rate_mbps <= 100_000:
            raise ConfigError(f"{where}: rate_mbps must be within (0, 100000] or None, got {self.rate_mbps}")
        if not 0 <= self.delay_ms <= 60_000:
            raise ConfigError(f"{where}: delay_ms must be within 0..60000, got {self.delay_ms}")
        if not 0 <= self.loss_pct <= 100:
            raise ConfigError(f"{where}: loss_pct must be within 0..100, got {self.loss_pct}")
        if not 1 <= self.queue_packets <= 1_000_000:
            raise ConfigError(f"{where}: queue_packets must be within 1..1000000, got {self.queue_packets}")


def check_links(links: list[LinkSpec]):
    """Every link valid, link names unique, no interface asked for twice in one namespace."""
    if not links:
        raise ConfigError("no links given")
    names, places = set(), set()
    for link in links:
        if not isinstance(link, LinkSpec):
            raise ConfigError(f"expected LinkSpec, got {type(link).__name__}: {link!r}")
        link.check()
        if link.name in names:
            raise ConfigError(f"link {link.name!r}: name used twice")
        names.add(link.name)
        for side, end in (("a", link.a), ("b", link.b)):
            key = (end.netns, end.ifname)
            if key in places:
                raise ConfigError(f"link {link.name!r}: {side}: interface {end.ifname!r} in namespace "
                                  f"{end.netns!r} is used by another link end")
            places.add(key)


# --- what sim.py reads ---------------------------------------------------------

@dataclass(frozen=True)
class SimEnd:
    fd: int
    mtu: int = 1500
    pcap: str = ""          # "" : no capture


@dataclass(frozen=True)
class SimLink:
    name: str
    a: SimEnd
    b: SimEnd
    rate_bps: float = 0.0   # 0: unlimited
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    queue_packets: int = 100


@dataclass(frozen=True)
class SimConfig:
    """The resolved configuration of one ns-3 process (written to the run directory)."""
    run_id: str
    status_path: str
    links: tuple[SimLink, ...]
    seed: int = 1
    run: int = 1
    max_lag_ms: float = 0.0        # 0: never stop for lag (it is still measured)
    lag_sample_ms: float = 10.0
    status_every_s: float = 1.0
    rt_priority: int = 0           # SCHED_FIFO priority of the ns-3 threads; 0: normal scheduling

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def _strict(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = sorted(n for n, f in known.items() if n not in data
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    return data


def load_sim_config(path: str | Path) -> SimConfig:
    """Read and check a sim config JSON file; ConfigError names the file and the key."""
    path = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read JSON: {e}") from e
    top = _strict(SimConfig, data, path)
    links = []
    for i, ld in enumerate(top.get("links") or []):
        ld = _strict(SimLink, ld, f"{path}: links[{i}]")
        ends = {s: SimEnd(**_strict(SimEnd, ld[s], f"{path}: links[{i}].{s}")) for s in ("a", "b")}
        links.append(SimLink(**{**ld, **ends}))
    if not links:
        raise ConfigError(f"{path}: links: at least one link is needed")
    return SimConfig(**{**top, "links": tuple(links)})


__all__ = ["ConfigError", "TapEnd", "LinkSpec", "SimEnd", "SimLink", "SimConfig", "check_links",
           "load_sim_config"]
