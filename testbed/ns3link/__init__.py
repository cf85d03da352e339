"""The ``ns3`` link backend: links simulated by ns-3 in real time between tap interfaces.

Each :class:`LinkSpec` is a full-duplex point-to-point link with a rate, a one-way
delay, a per-direction random loss and a drop-tail queue; one ns-3 process
(:mod:`testbed.ns3link.sim`) runs all links of an experiment, started, watched
and stopped by :class:`Ns3Links`, with its own log, status lines (real-time lag)
and pcap files in the run directory. Taps are opened by the testbed and handed
to ns-3 (:mod:`testbed.ns3link.taps`), not made by the wheel's TapBridge. Start-up
is kept short (~0.1 s) by compiling the ns-3 side once at set-up against the
wheel (:mod:`testbed.ns3link.build`) instead of going through cppyy.

A :class:`WifiSpec` is a WiFi segment in the same process: an access point (its
tap, usually an Open vSwitch port) and :class:`StationSpec` stations (taps in
emulated hosts, whose MACs the stations' radios take), 802.11a/g with Ideal or
Minstrel rate control, log-distance path loss and constant-velocity mobility;
:mod:`testbed.ns3link.wifi` holds the topology side (segments, the shared AP
port, the capacity a rate gives). While running, :meth:`Ns3Links.set_link`
changes a link's rate, delay or loss and :meth:`Ns3Links.move_station` /
:meth:`Ns3Links.set_velocity` move stations (commands on the process's stdin,
applied by the simulator thread).

Errors: :class:`ConfigError` (a ValueError: a bad spec, raised before anything
starts), :class:`TapError` (a tap could not be made or placed), and
:class:`Ns3LinkError` for the process: :class:`Ns3StartError` (did not start),
:class:`Ns3DiedError` (exited while needed), :class:`Ns3LagError` (fell behind
real time by more than ``max_lag_ms``).

Example::

    link = LinkSpec("l1", a=TapEnd("eth0", netns="h1ns", addrs=("10.0.0.1/24",)),
                    b=TapEnd("eth0", netns="h2ns", addrs=("10.0.0.2/24",)),
                    rate_mbps=20, delay_ms=10, loss_pct=1)
    with Ns3Links([link], run_dir, run_id) as sim:
        ...                 # traffic; sim.check() raises if ns-3 died or lagged
    sim.report              # LagReport: lag percentiles and maximum, in ms
"""
from testbed.ns3link.config import ConfigError, LinkSpec, StationSpec, TapEnd, WifiSpec
from testbed.ns3link.links import (DEFAULT_MAX_LAG_MS, LagReport, Ns3DiedError, Ns3LagError,
                                   Ns3LinkError, Ns3Links, Ns3StartError)
from testbed.ns3link.taps import TapError

__all__ = ["Ns3Links", "LinkSpec", "TapEnd", "WifiSpec", "StationSpec", "LagReport", "ConfigError", "TapError", "Ns3LinkError",
           "Ns3StartError", "Ns3DiedError", "Ns3LagError", "DEFAULT_MAX_LAG_MS"]
