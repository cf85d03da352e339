"""Typed, strict configuration of ns-3 links and WiFi segments: what the testbed asks for, and what sim.py runs.

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


# --- WiFi segments ---------------------------------------------------------------

STANDARDS = ("80211a", "80211g")
RATE_MANAGERS = ("ideal", "minstrel")
# Free-space loss at 1 m at the standard's default channel (36: 5180 MHz; 1: 2412 MHz),
# 20 log10(4 pi f / c): the log-distance model's reference loss unless one is given.
REFERENCE_LOSS_DB = {"80211a": 46.73, "80211g": 40.09}


def _vector(v, where: str) -> tuple[float, float, float]:
    """(x, y) or (x, y, z) in metres (or m/s) as a 3-tuple of finite floats."""
    if not isinstance(v, (tuple, list)) or len(v) not in (2, 3) \
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v):
        raise ConfigError(f"{where}: expected [x, y] or [x, y, z] (numbers), got {v!r}")
    out = tuple(float(c) for c in v) + (0.0,) * (3 - len(v))
    if not all(abs(c) < 1e6 for c in out):
        raise ConfigError(f"{where}: coordinates must be finite and below 1e6, got {v!r}")
    return out


@dataclass(frozen=True)
class StationSpec:
    """A WiFi station: the tap ``end`` (an emulated host's interface; its ``mac`` is
    required, the station's radio takes the same address) at ``position`` (m),
    moving at ``velocity`` (m/s) from the start. ``host`` names it in status lines
    and commands."""
    host: str
    end: TapEnd
    position: tuple = (0.0, 0.0, 0.0)
    velocity: tuple = (0.0, 0.0, 0.0)

    def check(self, where: str):
        if not LINK_NAME_RE.match(self.host or ""):
            raise ConfigError(f"{where}: host must be 1-64 of A-Z a-z 0-9 _ . -, got {self.host!r}")
        self.end.check(f"{where}: end")
        if self.end.mac is None:
            raise ConfigError(f"{where}: end.mac is required: the station's radio sends with its "
                              "host's MAC as source (plain infrastructure mode allows no other)")
        if int(self.end.mac.split(":")[0], 16) & 1:
            raise ConfigError(f"{where}: end.mac {self.end.mac} is a group address")
        _vector(self.position, f"{where}: position")
        _vector(self.velocity, f"{where}: velocity")


@dataclass(frozen=True)
class WifiSpec:
    """A WiFi segment simulated by ns-3: one access point whose tap is ``ap`` (an
    Open vSwitch port, usually) at ``ap_position``, and its ``stations``.

    ``standard``: 80211a (5 GHz, OFDM 6-54 Mbit/s) or 80211g (2.4 GHz);
    ``rate_manager``: ideal (picks the fastest mode the last SNR allows) or minstrel
    (sampling, as Linux drivers do); path loss: log-distance with
    ``path_loss_exponent`` and ``reference_loss_db`` at 1 m (None: free space at the
    band, :data:`REFERENCE_LOSS_DB`); ``tx_power_dbm`` at AP and stations alike.
    ``rx_sensitivity_dbm``: weaker frames are not received (-82: the standard's minimum
    sensitivity at 6 Mbit/s; commodity receivers reach -88..-91).
    ``ap_mac``: the BSSID (None: 02:da:1f:00:00:NN, N = the segment's index + 1).
    """
    name: str
    ap: TapEnd
    stations: tuple
    ap_position: tuple = (0.0, 0.0, 0.0)
    ap_mac: str | None = None
    standard: str = "80211a"
    rate_manager: str = "ideal"
    tx_power_dbm: float = 16.0206
    path_loss_exponent: float = 3.0
    reference_loss_db: float | None = None
    rx_sensitivity_dbm: float = -82.0

    def check(self, where: str = "wifi"):
        where = f"{where} {self.name!r}"
        if not LINK_NAME_RE.match(self.name or ""):
            raise ConfigError(f"{where}: name must be 1-64 of A-Z a-z 0-9 _ . -")
        self.ap.check(f"{where}: ap")
        _vector(self.ap_position, f"{where}: ap_position")
        if self.ap_mac is not None and not MAC_RE.match(self.ap_mac):
            raise ConfigError(f"{where}: ap_mac {self.ap_mac!r} is not a lower-case MAC address")
        if self.standard not in STANDARDS:
            raise ConfigError(f"{where}: standard must be one of {', '.join(STANDARDS)}, got {self.standard!r}")
        if self.rate_manager not in RATE_MANAGERS:
            raise ConfigError(f"{where}: rate_manager must be one of {', '.join(RATE_MANAGERS)}, "
                              f"got {self.rate_manager!r}")
        if not -10 <= self.tx_power_dbm <= 30:
            raise ConfigError(f"{where}: tx_power_dbm must be within -10..30, got {self.tx_power_dbm}")
        if not 1.5 <= self.path_loss_exponent <= 6:
            raise ConfigError(f"{where}: path_loss_exponent must be within 1.5..6, got {self.path_loss_exponent}")
        if not -110 <= self.rx_sensitivity_dbm <= -40:
            raise ConfigError(f"{where}: rx_sensitivity_dbm must be within -110..-40, got {self.rx_sensitivity_dbm}")
        if self.reference_loss_db is not None and not 0 <= self.reference_loss_db <= 100:
            raise ConfigError(f"{where}: reference_loss_db must be within 0..100, got {self.reference_loss_db}")
        if not self.stations:
            raise ConfigError(f"{where}: stations: at least one station is needed")
        hosts, macs = set(), set()
        for st in self.stations:
            if not isinstance(st, StationSpec):
                raise ConfigError(f"{where}: expected StationSpec, got {type(st).__name__}: {st!r}")
            st.check(f"{where}: station {st.host!r}")
            if st.host in hosts:
                raise ConfigError(f"{where}: station {st.host!r} listed twice")
            if st.end.mac in macs:
                raise ConfigError(f"{where}: station {st.host!r}: MAC {st.end.mac} used by another station")
            hosts.add(st.host)
            macs.add(st.end.mac)

    def reference_loss(self) -> float:
        return self.reference_loss_db if self.reference_loss_db is not None else REFERENCE_LOSS_DB[self.standard]


def default_ap_mac(index: int) -> str:
    return "02:da:1f:00:%02x:%02x" % ((index + 1) >> 8 & 255, (index + 1) & 255)


def check_links(links: list[LinkSpec], wifi: list[WifiSpec] = ()):
    """Every link and segment valid, names unique, no interface asked for twice in one
    namespace, no host a station twice."""
    if not links and not wifi:
        raise ConfigError("no links and no WiFi segments given")
    names, places, stations = set(), set(), set()

    def place(what: str, end: TapEnd):
        key = (end.netns, end.ifname)
        if key in places:
            raise ConfigError(f"{what}: interface {end.ifname!r} in namespace {end.netns!r} is used "
                              "by another link end")
        places.add(key)

    for link in links:
        if not isinstance(link, LinkSpec):
            raise ConfigError(f"expected LinkSpec, got {type(link).__name__}: {link!r}")
        link.check()
        if link.name in names:
            raise ConfigError(f"link {link.name!r}: name used twice")
        names.add(link.name)
        for side, end in (("a", link.a), ("b", link.b)):
            place(f"link {link.name!r}: {side}", end)
    for seg in wifi:
        if not isinstance(seg, WifiSpec):
            raise ConfigError(f"expected WifiSpec, got {type(seg).__name__}: {seg!r}")
        seg.check()
        if seg.name in names:
            raise ConfigError(f"wifi {seg.name!r}: name used twice (links and segments share names)")
        names.add(seg.name)
        place(f"wifi {seg.name!r}: ap", seg.ap)
        for st in seg.stations:
            if st.host in stations:
                raise ConfigError(f"wifi {seg.name!r}: station {st.host!r} is a station of another segment")
            stations.add(st.host)
            place(f"wifi {seg.name!r}: station {st.host!r}", st.end)


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
class SimStation:
    host: str
    mac: str
    end: SimEnd
    position: tuple = (0.0, 0.0, 0.0)
    velocity: tuple = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SimWifi:
    name: str
    ap: SimEnd
    ap_mac: str
    stations: tuple[SimStation, ...]
    ap_position: tuple = (0.0, 0.0, 0.0)
    standard: str = "80211a"
    rate_manager: str = "ideal"
    tx_power_dbm: float = 16.0206
    path_loss_exponent: float = 3.0
    reference_loss_db: float = 46.73
    rx_sensitivity_dbm: float = -82.0


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
    wifi: tuple[SimWifi, ...] = ()

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
    wifi = []
    for i, wd in enumerate(top.get("wifi") or []):
        where = f"{path}: wifi[{i}]"
        wd = _strict(SimWifi, wd, where)
        stations = []
        for j, sd in enumerate(wd.get("stations") or []):
            sd = _strict(SimStation, sd, f"{where}.stations[{j}]")
            end = SimEnd(**_strict(SimEnd, sd["end"], f"{where}.stations[{j}].end"))
            stations.append(SimStation(**{**sd, "end": end, "position": tuple(sd.get("position", (0, 0, 0))),
                                          "velocity": tuple(sd.get("velocity", (0, 0, 0)))}))
        if not stations:
            raise ConfigError(f"{where}.stations: at least one station is needed")
        ap = SimEnd(**_strict(SimEnd, wd["ap"], f"{where}.ap"))
        wifi.append(SimWifi(**{**wd, "ap": ap, "stations": tuple(stations),
                               "ap_position": tuple(wd.get("ap_position", (0, 0, 0)))}))
    if not links and not wifi:
        raise ConfigError(f"{path}: links, wifi: at least one link or WiFi segment is needed")
    return SimConfig(**{**top, "links": tuple(links), "wifi": tuple(wifi)})


__all__ = ["ConfigError", "TapEnd", "LinkSpec", "StationSpec", "WifiSpec", "SimEnd", "SimLink", "SimStation",
           "SimWifi", "SimConfig", "check_links", "load_sim_config", "default_ap_mac", "STANDARDS",
           "RATE_MANAGERS", "REFERENCE_LOSS_DB"]
