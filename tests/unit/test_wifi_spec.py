"""Unit tests for the spec's ``wifi:`` section and the WiFi timeline events (no root).

A segment turns the topology into a WirelessTopology: its stations share the access
point's switch port, their links are ``wifi`` links, and bad segments, stations and
moves are refused naming the field, what is wrong and what to do.
"""
import copy
from pathlib import Path

import pytest
import yaml

from testbed.network import ap_ports, fabric_of, link_backends, plan_ports
from testbed.ns3link import wifi as w
from testbed.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "wifi-unit",
    "topology": {"generator": "tree", "params": {"depth": 2, "fanout": 3}},  # h7..h9 on s4
    "links": {"bw": 20},
    "nodes": {"h1": ["client"], "h2": ["data"], "h6": ["mpvu"], "h7": ["data"], "h8": ["data"]},
    "tasks": [{"id": 1, "client": "h1", "target_accuracy": 0.8, "deadline_s": 60}],
    "wifi": [{"name": "edge", "ap": {"switch": "s4", "position": [0, 0]},
              "stations": {"h7": {"position": [5, 0]}, "h8": {"position": [0, 10, 1.5], "velocity": [0, 1]}}}],
    "timeline": [{"at_s": 2, "kind": "move_station", "station": "h7", "to": [40, 0], "speed": 5},
                 {"at_s": 3, "kind": "set_velocity", "station": "h8", "velocity": [0, 0]}],
}


def write(tmp_path, d) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_good_wifi_spec_builds_a_wireless_topology(tmp_path):
    spec, topo = load_spec(write(tmp_path, GOOD))
    assert isinstance(topo, w.WirelessTopology)
    (seg,) = topo.wifi
    assert (seg.name, seg.ap_switch, seg.standard, seg.rate_manager) == ("edge", "s4", "80211a", "ideal")
    assert [(s.host, s.position, s.velocity) for s in seg.stations] == [
        ("h7", (5.0, 0.0, 0.0), (0.0, 0.0, 0.0)), ("h8", (0.0, 10.0, 1.5), (0.0, 1.0, 0.0))]
    # the radio decides a station link's rate: the topology's bw default does not apply
    wl = [ln for ln in topo.links if "h7" in (ln.a, ln.b)][0]
    assert wl.bw_mbit is None
    assert spec.timeline[0].to == [40, 0] and spec.timeline[0].speed == 5


def test_stations_share_the_access_points_port(tmp_path):
    _, topo = load_spec(write(tmp_path, GOOD))
    ports = {(a, b): (ap, bp) for a, ap, b, bp in plan_ports(topo)}
    sw, port = ap_ports(topo)["edge"]
    assert sw == "s4"
    station_ports = {bp if b == "s4" else ap for (a, b), (ap, bp) in ports.items() if {"h7", "h8"} & {a, b}}
    assert station_ports == {port}
    # h9 stays wired, on a port of its own
    h9 = [bp if b == "s4" else ap for (a, b), (ap, bp) in ports.items() if "h9" in (a, b)]
    assert h9 and h9[0] != port
    fab = fabric_of(topo)
    assert fab.hosts["h7"].port == fab.hosts["h8"].port == port
    be = dict(zip([(ln.a, ln.b) for ln in topo.links], link_backends(topo, "auto", netem=False)))
    assert {k: v for k, v in be.items() if v == "wifi"} == {k: "wifi" for k in be if {"h7", "h8"} & set(k)}


def test_no_wifi_keeps_the_plain_topology(tmp_path):
    d = copy.deepcopy(GOOD)
    d.pop("wifi")
    d.pop("timeline")
    _, topo = load_spec(write(tmp_path, d))
    assert not isinstance(topo, w.WirelessTopology)


def test_experiment_wifi_edge_checks():
    spec, topo = load_spec(REPO / "experiments" / "wifi_edge.yaml")
    assert topo.wifi and spec.timeline


def _set(path, value):
    def mutate(d):
        cur = d
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    return mutate


def _station_to(sw_host):
    def mutate(d):
        d["wifi"][0]["stations"][sw_host] = {"position": [1, 1]}
    return mutate


BAD = [
    ("unknown_key", _set(["wifi", 0, "colour"], "red"), "wifi.0.colour", "unknown key"),
    ("bad_standard", _set(["wifi", 0, "standard"], "80211ax"), "wifi.0.standard", "80211a"),
    ("bad_rate_manager", _set(["wifi", 0, "rate_manager"], "arf"), "wifi.0.rate_manager", "ideal"),
    ("ap_switch_unknown", _set(["wifi", 0, "ap", "switch"], "s9"), "wifi.0.ap.switch", "no switch 's9'"),
    ("station_unknown", _station_to("h42"), "wifi.0.stations.h42", "no host 'h42'"),
    ("station_elsewhere", _station_to("h2"), "wifi.0.stations.h2", "attached to s2"),
    ("position_1d", _set(["wifi", 0, "stations", "h7", "position"], [5]), "wifi.0.stations.h7.position",
     "[x, y]"),
    ("out_of_reach", _set(["wifi", 0, "stations", "h7", "position"], [80, 0]), "wifi.0.stations.h7.position",
     "beyond its reach"),
    ("no_stations", _set(["wifi", 0, "stations"], {}), "wifi.0.stations", "at least one station"),
    ("bad_exponent", _set(["wifi", 0, "propagation"], {"exponent": 9}), "wifi.0.propagation.exponent", "6"),
    ("move_non_station", _set(["timeline", 0, "station"], "h2"), "timeline.0.station", "not a WiFi station"),
    ("move_without_to", lambda d: d["timeline"][0].pop("to"), "timeline.0.to", "needs to"),
    ("velocity_missing", lambda d: d["timeline"][1].pop("velocity"), "timeline.1.velocity", "needs velocity"),
    ("velocity_with_to", _set(["timeline", 1, "to"], [1, 1]), "timeline.1", "velocity only"),
    ("negative_speed", _set(["timeline", 0, "speed"], -1), "timeline.0.speed", "greater than or equal"),
    ("set_link_on_wifi", lambda d: d["timeline"].append({"at_s": 1, "kind": "set_link", "link": ["h7", "s4"],
                                                        "bw": 5}),
     "timeline.2.link", "move_station"),
    ("link_down_on_wifi", lambda d: d["timeline"].append({"at_s": 1, "kind": "link_down", "link": ["s4", "h8"]}),
     "timeline.2.link", "WiFi station's link"),
    ("delay_on_tc_link", lambda d: (d["links"].update(backend="tc"),
                                    d["timeline"].append({"at_s": 1, "kind": "set_link", "link": ["s1", "s2"],
                                                          "delay": 5})),
     "timeline.2.delay", "backend: ns3"),
    ("station_twice", lambda d: d["wifi"].append({"ap": {"switch": "s4"}, "stations": {"h7": {"position": [1, 1]}}}),
     "wifi.1.stations.h7", "already a station of segment 'edge'"),
    ("same_name", lambda d: d["wifi"].append({"name": "edge", "ap": {"switch": "s4"},
                                              "stations": {"h9": {"position": [1, 1]}}}),
     "wifi.1.name", "used twice"),
]


@pytest.mark.parametrize("mutate,field,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_wifi_specs_name_the_field(tmp_path, mutate, field, reason):
    d = copy.deepcopy(GOOD)
    mutate(d)
    with pytest.raises(SpecError) as ei:
        load_spec(write(tmp_path, d))
    assert ei.value.field == field, str(ei.value)
    assert reason in ei.value.reason, str(ei.value)


def test_set_link_delay_accepted_on_a_link_ns3_may_carry(tmp_path):
    d = copy.deepcopy(GOOD)
    d["timeline"].append({"at_s": 1, "kind": "set_link", "link": ["s1", "s2"], "delay": 5})
    spec, _ = load_spec(write(tmp_path, d))
    assert spec.timeline[-1].delay == 5


def test_reach_and_capacity_model():
    seg = w.WifiSegment("x", "s1", ())
    assert 50 < w.reach_m(seg) < 52                      # -82 dBm at 16 dBm, exponent 3, 46.73 dB at 1 m
    far = w.WifiSegment("x", "s1", (), rx_sensitivity_dbm=-90)
    assert 90 < w.reach_m(far) < 100
    assert w.rx_dbm(seg, 5) == pytest.approx(-51.68, abs=0.05)   # as ns-3's LogDistance computes it
    caps = [w.capacity_mbps(r) for r in (6, 9, 12, 18, 24, 36, 48, 54)]
    assert caps == sorted(caps) and 29 < caps[-1] < 32 and 5 < caps[0] < 6
    assert w.capacity_mbps(0) == w.OUT_OF_REACH_MBPS
