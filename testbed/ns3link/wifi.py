"""WiFi segments of a topology, as data: which hosts are stations of which access point, and where they are.

Pure (no mininet, no ns-3): the spec (:mod:`testbed.spec`) builds a
:class:`WirelessTopology`, the network (:mod:`testbed.network`) plans ports and
starts ns-3 from it, and the runner turns the rate ns-3 reports into a link
capacity for the DCC with :func:`capacity_mbps`.

A segment joins one access point, an Open vSwitch port of ``ap_switch``, to the
hosts listed as its stations. In the topology each station keeps its one link to
``ap_switch`` (so the graph, the DCC's maps and its routing see ``hN - sX`` as
usual), but all the segment's station links share one switch port, the AP's
tap: :func:`testbed.network.plan_ports` gives them the same port number.

Why 802.11a with the Ideal rate manager and log-distance loss by default:
802.11a (5 GHz, OFDM 6-54 Mbit/s, no DSSS/ERP protection modes) has one clean
ladder of eight rates, so throughput steps down visibly as a station moves
away; the Ideal manager picks the fastest rate the last SNR allows (the
receiver's SNR, which ns-3 knows), so the rate follows the distance without
Minstrel's sampling noise and the same movement gives the same rates run after
run (``minstrel`` is there for realism: it samples like Linux drivers do).
Log-distance path loss with exponent 3 (indoor, obstructed) and free-space loss
at 1 m is ns-3's default channel: with 16 dBm, a 7 dB noise figure and the
standard's -82 dBm minimum sensitivity a station gets 54 Mbit/s up to ~20 m,
then 48 ... 18 Mbit/s, and loses the AP at ~51 m; with a commodity receiver's
-90 dBm (``rx_sensitivity_dbm``) the rates go on down to 6 Mbit/s, out to ~90 m.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from topologies.model import Topology, is_host

OUT_OF_REACH_MBPS = 0.01   # what the DCC is told for a station the AP cannot hear: nothing gets through
MIN_RSSI_DBM = -82.0       # default receiver sensitivity: 802.11a's minimum at 6 Mbit/s
REFERENCE_LOSS_DB = {"80211a": 46.73, "80211g": 40.09}   # == config.REFERENCE_LOSS_DB


@dataclass(frozen=True)
class WifiStation:
    """A host that is a station: position (m) and velocity (m/s) at the start, as (x, y, z)."""
    host: str
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class WifiSegment:
    """One access point on ``ap_switch`` and its stations (see the module doc for the defaults)."""
    name: str
    ap_switch: str
    stations: tuple[WifiStation, ...]
    ap_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    standard: str = "80211a"
    rate_manager: str = "ideal"
    tx_power_dbm: float = 16.0206
    path_loss_exponent: float = 3.0
    reference_loss_db: float | None = None
    rx_sensitivity_dbm: float = -82.0

    @property
    def hosts(self) -> list[str]:
        return [st.host for st in self.stations]


@dataclass
class WirelessTopology(Topology):
    """A :class:`Topology` some of whose host links are carried by WiFi segments.

    A subclass (not a field of Topology): ``dataclasses.replace`` keeps it, so
    code that changes links (``with_link_defaults``, ``set_link``) keeps the
    segments, and code that knows nothing of WiFi sees a plain topology.
    """
    wifi: tuple[WifiSegment, ...] = field(default_factory=tuple)


def segments(topo: Topology) -> tuple[WifiSegment, ...]:
    return getattr(topo, "wifi", ()) or ()


def station_segments(topo: Topology) -> dict[str, WifiSegment]:
    """Station host -> its segment."""
    return {st.host: seg for seg in segments(topo) for st in seg.stations}


def is_wifi_link(topo: Topology, a: str, b: str) -> bool:
    """Is ``a - b`` a station's link to its access point's switch?"""
    seg = station_segments(topo).get(a if is_host(a) else b)
    return seg is not None and seg.ap_switch == (b if is_host(a) else a)


def with_wifi(topo: Topology, segs: list[WifiSegment]) -> Topology:
    """``topo`` with these segments (unchanged if none). Station links lose their
    bw/delay/loss: the radio decides, and the DCC learns it from the run."""
    if not segs:
        return topo
    stations = {st.host: seg.ap_switch for seg in segs for st in seg.stations}
    links = []
    from dataclasses import fields, replace
    for ln in topo.links:
        host = ln.a if is_host(ln.a) else ln.b if is_host(ln.b) else None
        if host in stations:
            ln = replace(ln, bw_mbit=None, delay_ms=None, loss_pct=None, backend=None)
        links.append(ln)
    base = {f.name: getattr(topo, f.name) for f in fields(Topology)}
    return WirelessTopology(**{**base, "links": links}, wifi=tuple(segs))


def distance(a, b) -> float:
    return math.dist(tuple(a) + (0.0,) * (3 - len(a)), tuple(b) + (0.0,) * (3 - len(b)))


def rx_dbm(seg: WifiSegment, metres: float) -> float:
    """Received power at ``metres`` from the AP under the segment's log-distance model."""
    ref = seg.reference_loss_db if seg.reference_loss_db is not None else REFERENCE_LOSS_DB[seg.standard]
    return seg.tx_power_dbm - ref - 10 * seg.path_loss_exponent * math.log10(max(metres, 1.0))


def reach_m(seg: WifiSegment) -> float:
    """How far from the AP a station still hears it (received power >= the segment's
    ``rx_sensitivity_dbm``; the SNR floor of 4 dB may end it a little sooner)."""
    ref = seg.reference_loss_db if seg.reference_loss_db is not None else REFERENCE_LOSS_DB[seg.standard]
    return 10 ** ((seg.tx_power_dbm - ref - seg.rx_sensitivity_dbm) / (10 * seg.path_loss_exponent))


# --- what a station's link can carry ------------------------------------------------

# 802.11a / ERP-OFDM timing (IEEE 802.11-2020, 17.4.4 and 18.4.4): slot, SIFS, preamble +
# SIGNAL, symbol; CWmin 15. 802.11g adds a 6 us signal extension after every OFDM frame.
_OFDM = {"80211a": {"slot": 9e-6, "sifs": 16e-6, "ext": 0.0},
         "80211g": {"slot": 9e-6, "sifs": 10e-6, "ext": 6e-6}}
_OFDM_BASIC = (6.0, 12.0, 24.0)        # mandatory rates: ACKs go at the fastest one <= the data rate
_DSSS = (1.0, 2.0, 5.5, 11.0)          # 802.11g's DSSS/HR-DSSS rates (long preamble)
_MAC_OVERHEAD = 24 + 8 + 4             # MAC header, LLC/SNAP, FCS
_ACK_BYTES = 14


def frame_seconds(phy_mbps: float, ip_bytes: int = 1500, standard: str = "80211a") -> float:
    """Air time of one data frame of ``ip_bytes`` sent alone on the channel: DIFS, the
    mean backoff (CWmin / 2 slots), the frame, SIFS and the ACK."""
    if phy_mbps <= 0:
        raise ValueError(f"phy rate must be > 0 Mbit/s, got {phy_mbps}")
    if standard not in _OFDM:
        raise ValueError(f"unknown standard {standard!r} ({', '.join(_OFDM)})")
    t = _OFDM[standard]
    bits = 8 * (ip_bytes + _MAC_OVERHEAD)
    if standard == "80211g" and phy_mbps in _DSSS:
        slot, sifs = 20e-6, 10e-6
        data = 192e-6 + bits / (phy_mbps * 1e6)
        ack = 192e-6 + 8 * _ACK_BYTES / (min(phy_mbps, 2.0) * 1e6)
    else:
        slot, sifs = t["slot"], t["sifs"]

        def ofdm(nbits: float, rate: float) -> float:
            ndbps = rate * 4                    # data bits per 4 us symbol
            return 20e-6 + math.ceil((16 + nbits + 6) / ndbps) * 4e-6 + t["ext"]

        data = ofdm(bits, phy_mbps)
        ack = ofdm(8 * _ACK_BYTES, max([r for r in _OFDM_BASIC if r <= phy_mbps] or [6.0]))
    difs = sifs + 2 * slot
    return difs + 7.5 * slot + data + sifs + ack


def capacity_mbps(phy_mbps: float, standard: str = "80211a", ip_bytes: int = 1500) -> float:
    """What a station's link carries at PHY rate ``phy_mbps``: IP bits of full-size
    packets per second of air time, one sender, no collisions (an upper bound for
    TCP, whose ACKs share the air). :data:`OUT_OF_REACH_MBPS` when the rate is 0."""
    if phy_mbps <= 0:
        return OUT_OF_REACH_MBPS
    return 8 * ip_bytes / frame_seconds(phy_mbps, ip_bytes, standard) / 1e6


__all__ = ["WifiStation", "WifiSegment", "WirelessTopology", "segments", "station_segments", "is_wifi_link",
           "with_wifi", "distance", "rx_dbm", "reach_m", "frame_seconds", "capacity_mbps", "OUT_OF_REACH_MBPS",
           "MIN_RSSI_DBM"]
