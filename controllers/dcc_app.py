"""The DA-ITN Control Center as an os-ken app: a thin OpenFlow shim.

It turns switch/link events and DA-ITN control messages into calls on pure
policy — :mod:`controllers.fabric` (forwarding), :mod:`controllers.maps`
(DRRT/QRRT), :mod:`controllers.tasks` with :mod:`controllers.tfam` and
:mod:`controllers.mtrce` (training), :mod:`controllers.qirce` (queries),
:mod:`controllers.lineage` (model tracking) — and their answers into
flow-mods, meter-mods and packet-outs.
Topology discovery is LLDP, sent and parsed here with os-ken's LLDP codec: we
run our own probe loop rather than os-ken's topology app, whose port state
machine loses ports that change state during the OpenFlow handshake (seen on
fat-trees: links never discovered). It also serves the DCC service address on the fabric: nodes' DA-ITN control
messages (UDP to DCC_IP) arrive here as packet-ins and are answered by
packet-out. State for the testbed runner is written atomically to a JSON file.

Configuration comes from the launcher through environment variables:
DAITN_FABRIC (expected fabric JSON), DAITN_STATE (state JSON to write),
DAITN_EVENTS (events JSONL to append).
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time

from os_ken.base import app_manager
from os_ken.controller import event, ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, DEAD_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.lib.packet import arp, ethernet, ipv4, packet, udp
from os_ken.ofproto import ofproto_v1_3
from os_ken.topology.switches import LLDPPacket

from controllers import fabric as fab
from controllers import aiflows, cookies
from controllers.lineage import Lineage
from controllers.mtrce import TrainingRequest, get_policy
from controllers.qirce import Query, QueryRouter, ReplicaInfo, place_replicas
from controllers.tasks import TaskTracker
from controllers.maps import LinkInfo, MapsError, NetworkMaps, plan_view
from controllers.northbound import NorthboundAPI
from controllers.submissions import SubmissionError, Submissions
from nodes import wire
from nodes.transport import Endpoint
from nodes.wire import Message, MsgType, Role, Tlv, WireError


def task_dscp(task_id: int) -> int:
    """The DSCP that marks a task's traffic (OpenFlow ``ip_dscp``): 8..55,
    clear of 0 (best effort) and 46/48+ (EF, network control) for most tasks."""
    return 8 + (task_id - 1) % 48


class _ProbeTick(event.EventBase):
    """Time to send LLDP probes and expire unseen links (posted by _probe_loop)."""


class _ApiCommand(event.EventBase):
    """A change asked for on the northbound API, applied on the app's thread."""

    def __init__(self, kind: str, args: dict):
        super().__init__()
        self.kind, self.args = kind, args


class DCCApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fabric = fab.Fabric.load(os.environ["DAITN_FABRIC"])
        self.state_path = os.environ["DAITN_STATE"]
        self.events_path = os.environ["DAITN_EVENTS"]
        self.datapaths: dict[int, object] = {}
        self.discovered: set[tuple[int, int, int, int]] = set()
        self.installed: set[fab.FlowSpec] = set()
        self.meters: set = set()  # aiflows.MeterSpec installed
        self.flow_mods_added = 0
        self.flow_mods_deleted = 0
        self.converged_at: float | None = None
        self.started = time.time()
        self.knowledge: dict[str, dict] = {}
        self.answers: dict[int, tuple] = {}
        self.verdicts: list[dict] = []  # MPVU verdicts, in arrival order  # task_id -> (feasibility, itinerary) (idempotent)
        self.errors = 0
        key_file = os.environ.get("DAITN_KEY_FILE")
        self.ep = Endpoint(wire.DCC_NODE, open(key_file, "rb").read() if key_file else None)
        self.ports: dict[int, dict[int, str]] = {}  # dpid -> port_no -> hw_addr
        self.link_seen: dict[tuple[int, int, int, int], float] = {}
        self.probe_interval = float(os.environ.get("DAITN_LLDP_INTERVAL", "1.0"))
        kcfg = self.fabric.extra.get("knowledge", {})
        self.stats_interval = float(kcfg.get("port_stats_interval_s", 1.0))
        self.report_interval = float(kcfg.get("report_interval_s", 1.0))
        self.maps = NetworkMaps(report_interval_s=self.report_interval,
                                down_after_intervals=float(kcfg.get("down_after_intervals", 2.5)))
        self.maps.set_links(self._link_infos())
        self.echo_rtt: dict[int, float] = {}      # dpid -> control-channel RTT, s
        self.probe_sent: dict[tuple[int, int], float] = {}  # (dpid, port) -> LLDP send time
        self.latency_recent: dict[tuple, collections.deque] = {}  # link key -> last one-way samples, ms
        self.last_stats = 0.0
        self.last_probe = 0.0
        self._published: dict = {}
        self.policy_name = self.fabric.extra.get("policy", "greedy")
        self.tracker = TaskTracker(self.fabric, get_policy(self.policy_name),
                                   reserve_mbps=self.fabric.extra.get("reserve_mbps"))
        self.hop_answers: dict[tuple, Message] = {}   # (task, hop_count, version) -> answer (idempotent)
        self.finished_tasks: set[int] = set()
        self.barriers: dict[int, dict] = {}           # xid -> pending hop flow installation
        self.hop_install_ms: list[dict] = []
        self.lineage = Lineage()          # OAM: every model version the DCC has heard of
        self.last_sha: dict[int, str] = {}  # task -> hash of its latest version
        self.plans: dict[int, dict] = {}  # task -> T-FAM assessment (with the plan)
        self.epochs = int(self.fabric.extra.get("local_epochs", 1))
        # training.max_local_epochs: the plan chooses each stop's epochs (TLV EPOCHS in the answers)
        self.max_epochs = self.fabric.extra.get("max_local_epochs")
        if self.max_epochs is not None and self.max_epochs < self.epochs:
            self.max_epochs = self.epochs
        self.router = QueryRouter(seed=int(self.fabric.extra.get("seed", 0)))
        self.query_routes: dict[tuple, dict] = {}   # (client, server, model) -> {"flows", "last"}
        self.query_answers: dict[tuple, list] = {}  # (client, query seq, excluded) -> answers (idempotent)
        self.routed = 0
        self.placements: dict[int, Message] = {}
        # tasks and queries submitted through the API, handed to their clients in
        # answer to their knowledge reports; the API thread adds, the app reads
        self.submissions = Submissions(self.fabric.extra.get("roles", {}), self.fabric.extra.get("task_ids", []),
                                       features=self.fabric.extra.get("features"))
        self.sub_lock = threading.Lock()
        # recovery: a task whose holder died, or whose model was poisoned, goes on from the
        # MPVU's copy of its last verified version; the instruction answers the MPVU's report
        self.rollback_drop = self.fabric.extra.get("rollback_drop")
        self.resumes: dict[int, dict] = {}
        self._hold = None  # the barrier group an answer being made must wait for
        self.lost_holders: dict[tuple[int, str], int] = {}  # (task, node) -> version resumed from
        self._write_state()
        self.threads.append(hub.spawn(self._probe_loop))
        api = self.fabric.extra.get("api")
        self.api = None
        if api:
            token = open(api["token_file"]).read().strip()
            self.api = NorthboundAPI("127.0.0.1", int(api["port"]), token,
                                     {"maps": lambda: self._published.get("maps", {}),
                                      "drrt": lambda: self._published.get("maps", {}).get("drrt", {}),
                                      "qrrt": lambda: self._published.get("maps", {}).get("qrrt", {}),
                                      "tasks": lambda: self._published.get("tasks", {}),
                                      "plans": lambda: self._published.get("plans", {}),
                                      "models": lambda: self._published.get("models", {}),
                                      "flows": lambda: self._published.get("flows", {}),
                                      "state": lambda: self._published,
                                      "submissions": self._submissions_view},
                                     lambda kind, args: self.send_event(self.name, _ApiCommand(kind, args)),
                                     posts={"tasks": self._api_task, "queries": self._api_query})
            self.api.start()

    def _link_infos(self) -> list[LinkInfo]:
        """Every link the spec configured, with its capacity (the DCC is told what the
        testbed shaped: OVS reports a fixed 10 Gbit/s for veth ports)."""
        infos = []
        for ln in self.fabric.extra.get("links", []):
            # switch-switch links count as up once LLDP has seen them; host links
            # are up while their switch port is
            both_switches = ln.get("a_port") is not None and ln.get("b_port") is not None
            infos.append(LinkInfo(ln["a"], ln.get("a_port"), ln["b"], ln.get("b_port"),
                                  ln.get("bw"), ln.get("delay"), up=not both_switches))
        return infos

    # ---- bookkeeping -------------------------------------------------------
    def _event(self, kind: str, **data):
        rec = {"t": time.time(), "src": "dcc", "kind": kind, **data}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")

    def _write_state(self):
        t0 = time.time()
        state = {
            "pid": os.getpid(),
            "switches_connected": sorted(self.datapaths),
            "switches_expected": sorted(self.fabric.switches.values()),
            "links_discovered": len(self.discovered),
            "links_expected": len(self.fabric.expected_links()),
            "link_check": fab.compare_links(self.fabric, self.discovered),
            "converged": self.converged_at is not None,
            "converged_after_s": (self.converged_at - self.started) if self.converged_at else None,
            "flows_installed": self.flow_mods_added,
            "flows_deleted": self.flow_mods_deleted,
            "flows_current": len(self.installed),
            "knowledge": self.knowledge,
            "verdicts": len(getattr(self, "verdicts", ())),
            "errors": self.errors,
            "dropped": dict(self.ep.dropped),  # refused control messages, by reason
            "maps": self.maps.snapshot(time.time()) if hasattr(self, "maps") else {},
            "api_port": self.api.port if getattr(self, "api", None) else None,
            "tasks": self._tasks_view() if hasattr(self, "tracker") else {},
            "plans": {str(k): v for k, v in getattr(self, "plans", {}).items()},
            "models": self._models_view() if hasattr(self, "lineage") else {},
            "flows": self._flows_view(),
            "hop_flow_install_ms": [h["ms"] for h in getattr(self, "hop_install_ms", [])],
        }
        self._published = state
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:  # dumps: C encoder, 4x faster than json.dump's Python one
            f.write(json.dumps(state, sort_keys=True, default=list))
        os.replace(tmp, self.state_path)
        self.state_written, self.state_cost = time.time(), time.time() - t0

    # ---- OpenFlow translation ---------------------------------------------
    def _send_flow(self, spec: fab.FlowSpec, delete: bool = False):
        dp = self.datapaths.get(spec.dpid)
        if dp is None:
            return False
        ofp, parser = dp.ofproto, dp.ofproto_parser
        match = parser.OFPMatch(**spec.match_dict())
        if delete:
            mod = parser.OFPFlowMod(datapath=dp, cookie=spec.cookie, cookie_mask=(1 << 64) - 1,
                                    command=ofp.OFPFC_DELETE_STRICT, priority=spec.priority,
                                    out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=match)
        else:
            actions = []
            for kind, arg in spec.actions:
                assert kind == "output"
                port = ofp.OFPP_CONTROLLER if arg == fab.CONTROLLER else arg
                actions.append(parser.OFPActionOutput(port, ofp.OFPCML_NO_BUFFER))
            inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
            if getattr(spec, "meter", None):  # the hop's reserved bandwidth (meter first)
                inst.insert(0, parser.OFPInstructionMeter(spec.meter, ofp.OFPIT_METER))
            mod = parser.OFPFlowMod(datapath=dp, cookie=spec.cookie, priority=spec.priority,
                                    match=match, instructions=inst)
        dp.send_msg(mod)
        return True

    def _send_meter(self, m, delete: bool = False) -> bool:
        dp = self.datapaths.get(m.dpid)
        if dp is None:
            return False
        ofp, parser = dp.ofproto, dp.ofproto_parser
        bands = [] if delete else [parser.OFPMeterBandDrop(rate=m.rate_kbps, burst_size=m.burst_kb)]
        dp.send_msg(parser.OFPMeterMod(datapath=dp, command=ofp.OFPMC_DELETE if delete else ofp.OFPMC_ADD,
                                       flags=ofp.OFPMF_KBPS | (0 if delete else ofp.OFPMF_BURST),
                                       meter_id=m.meter_id, bands=bands))
        return True

    def _apply_meters(self, wanted: set) -> None:
        for m in sorted(self.meters - wanted, key=str):  # after their flows are gone (see _apply)
            self._send_meter(m, delete=True)
            self.meters.discard(m)
        for m in sorted(wanted - self.meters, key=str):
            if self._send_meter(m):
                self.meters.add(m)

    def _apply(self, wanted: set[fab.FlowSpec]):
        """Move the installed flows to ``wanted`` with the fewest flow-mods (meters
        a new flow uses are added before it, unused ones removed after)."""
        meters = self.tracker.wanted_meters() if hasattr(self, "tracker") else set()
        for m in sorted(meters - self.meters, key=str):
            if self._send_meter(m):
                self.meters.add(m)
        try:
            return self._apply_flows(wanted)
        finally:
            self._apply_meters(meters)

    def _apply_flows(self, wanted: set[fab.FlowSpec]):
        for spec in sorted(self.installed - wanted, key=str):
            if self._send_flow(spec, delete=True):
                self.flow_mods_deleted += 1
            self.installed.discard(spec)
        added = 0
        for spec in sorted(wanted - self.installed, key=str):
            if self._send_flow(spec):
                self.installed.add(spec)
                self.flow_mods_added += 1
                added += 1
        return added

    def _wanted_flows(self) -> set[fab.FlowSpec]:
        wanted = set()
        for dpid in self.datapaths:
            wanted.update(fab.service_flows(dpid))
        if self.converged_at is not None:
            wanted.update(f for f in fab.forwarding_flows(self.fabric, self.discovered)
                          if f.dpid in self.datapaths)
            wanted.update(f for f in self.tracker.wanted_flows() if f.dpid in self.datapaths)
            for r in getattr(self, "query_routes", {}).values():
                wanted.update(f for f in r["flows"] if f.dpid in self.datapaths)
        return wanted

    def _reconcile(self, cause: str):
        check = fab.compare_links(self.fabric, self.discovered)
        all_up = set(self.fabric.switches.values()) <= set(self.datapaths)
        if self.converged_at is None and all_up and not check["missing"]:
            self.converged_at = time.time()
            self._event("topology_converged", seconds=self.converged_at - self.started,
                        switches=len(self.datapaths), links=len(self.discovered),
                        unexpected_links=check["unexpected"])
        added = self._apply(self._wanted_flows())
        if added:
            self._event("flows_installed", cause=cause, added=added, total=len(self.installed))
        self._write_state()

    # ---- switch and topology events ----------------------------------------
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        dp = ev.msg.datapath
        self.datapaths[dp.id] = dp
        self.logger.info("switch %s (dpid %d) connected", self.fabric.name_of(dp.id), dp.id)
        # State is rebuilt, not assumed: the switch may hold flows and meters of an earlier
        # DCC (a restarted controller; fail mode secure kept them forwarding meanwhile).
        # Clear them and install what this DCC wants; a packet in between is retransmitted.
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPFlowMod(datapath=dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch()))
        dp.send_msg(parser.OFPMeterMod(datapath=dp, command=ofp.OFPMC_DELETE, meter_id=ofp.OFPM_ALL))
        self.installed = {f for f in self.installed if f.dpid != dp.id}
        self.meters = {m for m in self.meters if m.dpid != dp.id}
        self._event("switch_connected", dpid=dp.id, switch=self.fabric.name_of(dp.id))
        self._reconcile("switch_connected")

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _dead(self, ev):
        dp = ev.datapath
        if dp.id in self.datapaths and self.datapaths[dp.id] is dp:
            del self.datapaths[dp.id]
            self.ports.pop(dp.id, None)
            self.installed = {f for f in self.installed if f.dpid != dp.id}
            self.meters = {m for m in self.meters if m.dpid != dp.id}
            self._event("switch_disconnected", dpid=dp.id, switch=self.fabric.name_of(dp.id))
            self._drop_links(lambda k: dp.id in (k[0], k[2]), "switch_disconnected")

    # ---- LLDP topology discovery -------------------------------------------
    @set_ev_cls(ofp_event.EventOFPStateChange, MAIN_DISPATCHER)
    def _main(self, ev):
        dp = ev.datapath
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev):
        dp = ev.msg.datapath
        ports = self.ports.setdefault(dp.id, {})
        for p in ev.msg.body:
            if p.port_no <= dp.ofproto.OFPP_MAX:
                ports[p.port_no] = p.hw_addr
        self._probe(dp)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        dp, p, ofp = msg.datapath, msg.desc, msg.datapath.ofproto
        if p.port_no > ofp.OFPP_MAX:
            return
        down = msg.reason == ofp.OFPPR_DELETE or bool(p.state & ofp.OFPPS_LINK_DOWN) \
            or bool(p.config & ofp.OFPPC_PORT_DOWN)
        if down:
            self.ports.get(dp.id, {}).pop(p.port_no, None)
            self._drop_links(lambda k: (k[0], k[1]) == (dp.id, p.port_no) or (k[2], k[3]) == (dp.id, p.port_no),
                             "port_down")
        else:
            self.ports.setdefault(dp.id, {})[p.port_no] = p.hw_addr
            self._probe(dp)

    def _probe(self, dp):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        now = time.time()
        for port_no, hw in sorted(self.ports.get(dp.id, {}).items()):
            self.probe_sent[(dp.id, port_no)] = now
            data = LLDPPacket.lldp_packet(dp.id, port_no, hw, 120)
            dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=ofp.OFP_NO_BUFFER,
                                            in_port=ofp.OFPP_CONTROLLER,
                                            actions=[parser.OFPActionOutput(port_no)], data=data))

    def _probe_loop(self):
        # os-ken 4.2's hub runs native threads: this loop only posts a tick, so
        # all DCC state is changed by the app's one event thread (racing it lost
        # state writes and set iterations, and froze discovery).
        # ticks often enough to mark a silent node down within a quarter report
        # interval of its deadline; LLDP and port-stats requests go at their own pace
        tick = min(self.probe_interval, self.report_interval / 4, self.stats_interval)
        while True:
            hub.sleep(tick)
            self.send_event(self.name, _ProbeTick())

    @set_ev_cls(_ProbeTick)
    def _on_probe_tick(self, ev):
        now = time.time()
        self._release_held(now)
        self._maps_events(self.maps.tick(now))
        idle = [k for k, r in self.query_routes.items() if now - r["last"] > 10.0]
        for k in idle:  # no query for 10 s: the route's flows go
            del self.query_routes[k]
            self._event("query_route_removed", client=k[0], server=k[1], model=k[2])
        if idle:
            self._reconcile("query routes idle")
        if now - self.last_probe < self.probe_interval * 0.95:
            if now - self.last_stats >= self.stats_interval:
                self._request_stats(now)
            # The periodic write takes at most ~10 % of the event loop: at 200 hosts the
            # state (flows of 21 switches) is ~1 MB and ~150 ms to write; written 3 times a
            # second it starved LLDP and OpenFlow echoes (links and switches flapped)
            if now - getattr(self, "state_written", 0.0) >= 10 * getattr(self, "state_cost", 0.0):
                self._write_state()
            return
        self.last_probe = now
        # Probe every port each interval; a link unseen for 3.5 intervals is gone.
        for dp in list(self.datapaths.values()):
            self._probe(dp)
        for dp in list(self.datapaths.values()):
            # control-channel RTT, to take out of LLDP timings (link latency)
            dp.send_msg(dp.ofproto_parser.OFPEchoRequest(dp, data=repr(now).encode()))
        if now - self.last_stats >= self.stats_interval:
            self._request_stats(now)
        cutoff = now - 3.5 * self.probe_interval
        self._drop_links(lambda k: self.link_seen.get(k, 0) < cutoff, "lldp_timeout")

    def _request_stats(self, now: float):
        self.last_stats = now
        for dp in list(self.datapaths.values()):
            dp.send_msg(dp.ofproto_parser.OFPPortStatsRequest(dp, 0, dp.ofproto.OFPP_ANY))

    @set_ev_cls(ofp_event.EventOFPEchoReply, [MAIN_DISPATCHER, CONFIG_DISPATCHER])
    def _echo_reply(self, ev):
        try:
            sent = float(ev.msg.data.decode())
        except (ValueError, UnicodeDecodeError, AttributeError):
            return
        self.echo_rtt[ev.msg.datapath.id] = time.time() - sent

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats(self, ev):
        now = time.time()
        sw = self.fabric.name_of(ev.msg.datapath.id)
        for st in ev.msg.body:
            if st.port_no > ev.msg.datapath.ofproto.OFPP_MAX:
                continue
            self.maps.port_stats(sw, st.port_no, now, rx_bytes=st.rx_bytes, tx_bytes=st.tx_bytes,
                                 rx_packets=st.rx_packets, tx_packets=st.tx_packets,
                                 rx_dropped=st.rx_dropped, tx_dropped=st.tx_dropped)

    @set_ev_cls(_ApiCommand)
    def _api_command(self, ev):
        if ev.kind == "submitted":
            self._event("api_submitted", **ev.args)
            return
        if ev.kind == "refused":
            self._event("api_refused", **ev.args)
            return
        if ev.kind == "link":
            a, b, bw = ev.args["a"], ev.args["b"], ev.args["bw"]
            try:
                changes = self.maps.set_capacity(a, b, bw, time.time(), source="api")
            except MapsError as e:  # unknown link or bad value: refused, logged, not fatal
                self.logger.warning("refused link change %s: %s", ev.args, e)
                self._event("api_refused", request=ev.args, reason=str(e))
                return
            self._maps_events(changes)
            self._write_state()

    def _lldp_in(self, msg):
        try:
            src_dpid, src_port = LLDPPacket.lldp_parse(msg.data)
        except Exception:  # not our LLDP (os-ken raises several kinds)
            return
        key = (src_dpid, src_port, msg.datapath.id, msg.match["in_port"])
        now = time.time()
        self.link_seen[key] = now
        if key not in self.discovered:
            self.discovered.add(key)
            self._maps_events(self.maps.link_state(self.fabric.name_of(src_dpid),
                                                   self.fabric.name_of(msg.datapath.id), True, now, "lldp"))
            self._reconcile("link_discovered")
        sent = self.probe_sent.get((src_dpid, src_port))
        rtts = [self.echo_rtt.get(src_dpid), self.echo_rtt.get(msg.datapath.id)]
        if sent is not None and None not in rtts:
            # LLDP went controller -> src switch -> link -> dst switch -> controller. Time
            # the probe waited in our own event queue counts too, and it only ever adds:
            # the minimum of the last samples is the estimate (a busy controller made the
            # plain average read tens of ms on 0 ms links; bench_policies found it).
            one_way = max(0.0, (now - sent) - (rtts[0] + rtts[1]) / 2) * 1000
            recent = self.latency_recent.setdefault(key, collections.deque(maxlen=8))
            recent.append(one_way)
            self.maps.latency_sample(self.fabric.name_of(src_dpid), self.fabric.name_of(msg.datapath.id),
                                     min(recent), now)

    def _drop_links(self, pred, cause: str):
        gone = [k for k in self.discovered if pred(k)]
        for k in gone:
            self.discovered.discard(k)
            self.link_seen.pop(k, None)
            self._event("link_down", link=list(k), cause=cause)
            if (k[2], k[3], k[0], k[1]) not in self.discovered:  # both directions gone
                try:
                    self._maps_events(self.maps.link_state(self.fabric.name_of(k[0]),
                                                           self.fabric.name_of(k[2]), False, time.time(), cause))
                except MapsError as e:
                    self.logger.warning("link %s: %s", k, e)
        if gone:
            self._reconcile(cause)
        else:
            self._write_state()

    # ---- the DCC service on the fabric -------------------------------------
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        pkt = packet.Packet(msg.data)
        eth = pkt.get_protocol(ethernet.ethernet)
        if eth is None:
            return
        if eth.ethertype == fab.ETH_LLDP:
            self._lldp_in(msg)
            return
        in_port = msg.match["in_port"]
        a = pkt.get_protocol(arp.arp)
        if a is not None and a.opcode == arp.ARP_REQUEST and a.dst_ip == wire.DCC_IP:
            reply = packet.Packet()
            reply.add_protocol(ethernet.ethernet(dst=eth.src, src=wire.DCC_MAC, ethertype=fab.ETH_ARP))
            reply.add_protocol(arp.arp(opcode=arp.ARP_REPLY, src_mac=wire.DCC_MAC, src_ip=wire.DCC_IP,
                                       dst_mac=a.src_mac, dst_ip=a.src_ip))
            self._packet_out(msg.datapath, in_port, reply)
            return
        ip = pkt.get_protocol(ipv4.ipv4)
        u = pkt.get_protocol(udp.udp)
        if ip is None or u is None or ip.dst != wire.DCC_IP or u.dst_port != wire.DCC_UDP_PORT:
            return
        payload = pkt.protocols[-1] if isinstance(pkt.protocols[-1], (bytes, bytearray)) else b""
        self._hold = None
        try:
            request = self.ep.open(bytes(payload))
            answers = self._handle(request, ip.src)
        except WireError as e:
            self.errors += 1
            self.logger.warning("refused DA-ITN message from %s: %s", ip.src, e)
            self._write_state()
            answers = [Message(MsgType.ERROR, flags=wire.REPLY, body=wire.Error(1, str(e)[:500]))]
        hold, self._hold = self._hold, None
        dp = msg.datapath

        def send():
            for answer in answers:
                answer.flags |= wire.REPLY
                reply = packet.Packet()
                reply.add_protocol(ethernet.ethernet(dst=eth.src, src=wire.DCC_MAC, ethertype=fab.ETH_IPV4))
                reply.add_protocol(ipv4.ipv4(src=wire.DCC_IP, dst=ip.src, proto=fab.IPPROTO_UDP))
                reply.add_protocol(udp.udp(src_port=wire.DCC_UDP_PORT, dst_port=u.src_port))
                reply.add_protocol(self.ep.seal(answer))  # a fresh nonce for every copy sent
                self._packet_out(dp, in_port, reply)

        if hold is not None and hold["dpids"]:
            # the answer sends the model on: it leaves once every switch of the hop has
            # confirmed its flows (barrier), else the first packets could miss them
            hold.setdefault("then", []).append(send)
            hold["deadline"] = time.time() + self.HOLD_MAX_S
        else:
            send()

    def _packet_out(self, dp, port, pkt):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        pkt.serialize()
        out = parser.OFPPacketOut(datapath=dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                  actions=[parser.OFPActionOutput(port)], data=pkt.data)
        dp.send_msg(out)

    def _host_by_ip(self, ip: str) -> str | None:
        for name, h in self.fabric.hosts.items():
            if h.ip == ip:
                return name
        return None

    def _handle(self, msg: Message, src_ip: str) -> list[Message]:
        """Answer one control message; returns the messages to send back."""
        node = self._host_by_ip(src_ip) or src_ip
        if msg.type == MsgType.KNOWLEDGE_REPORT:
            kr = msg.body
            now = time.time()
            first = node not in self.knowledge
            roles = [r.name.lower() for r in Role if kr.roles & r]
            self.knowledge[node] = {"samples": kr.samples, "label_hist": list(kr.label_hist),
                                    "verification_samples": kr.verification_samples,
                                    "roles": roles, "t": now,
                                    "capacity": getattr(kr, "capacity", 1.0)}
            extra = {k: getattr(kr, k) for k in ("capacity", "load", "queue_len", "service_ms")
                     if hasattr(kr, k)}
            if hasattr(kr, "models"):
                extra["models"] = list(kr.models)
            eps = getattr(kr, "noise_epsilon", 0.0)
            events = self.maps.node_report(node, now, roles=roles, samples=kr.samples,
                                           label_hist=list(kr.label_hist),
                                           verification_samples=kr.verification_samples,
                                           noise_epsilon=eps or None, **extra)
            self._maps_events(events)
            if first:
                self._event("knowledge_report", node=node, samples=kr.samples,
                            label_hist=list(kr.label_hist), roles=roles, **extra)
            # No state write per report: the probe tick writes it (every <= report interval / 4).
            # Writing the whole state (O(nodes + flows)) for each of N nodes' reports is O(N^2)
            # per interval; at 50 nodes it starved the event loop (bench/bench_scale.py).
            if "mpvu" in roles and self.resumes:
                return self._resume_instructions(node, msg.src)
            if "client" not in roles:
                return []
            with self.sub_lock:  # work submitted through the API for this client (hand-off)
                work = self.submissions.handoffs_for(node, now)
            for m in work:
                m.dst = msg.src
            if work:
                self._event("handoff", client=node, tasks=[m.task_id for m in work if m.type == MsgType.TRAIN_REQUEST],
                            queries=[m.seq for m in work if m.type == MsgType.INFERENCE_QUERY])
            return work
        if msg.type == MsgType.EVAL_VERDICT:
            # the MPVU's verdict joins the model's record (lineage: #5 builds on it)
            v = msg.body
            digest = msg.tlvs.get(Tlv.MODEL_DIGEST)
            self.verdicts.append({"task": msg.task_id, "version": msg.model_version, "by": node,
                                  "accuracy": v.accuracy, "loss": v.loss, "samples": v.samples,
                                  "sha256": digest.hex() if digest else None, "t": time.time()})
            self._event("verdict_recorded", **self.verdicts[-1])
            if digest is not None:
                self._lineage(self.lineage.add_verdict(msg.task_id, msg.model_version, digest.hex(), node,
                                                       v.accuracy, v.loss, v.samples, time.time(),
                                                       per_class=list(v.per_class)))
            return []
        if msg.type == MsgType.TRAIN_REQUEST:
            with self.sub_lock:
                if self.submissions.task_taken(msg.task_id, time.time()):
                    self._event("submission_taken", task=msg.task_id, client=node)
            if msg.task_id not in self.answers:
                self.answers[msg.task_id] = self._plan(msg, node)
            feas, plan = self.answers[msg.task_id]
            for m in (feas, plan):
                if m is not None:
                    m.dst, m.seq = msg.src, msg.seq
            return [m for m in (feas, plan) if m is not None]
        if msg.type == MsgType.ITINERARY and not msg.flags & wire.REPLY:
            return [self._hop(msg, node)]
        if msg.type == MsgType.INFERENCE_QUERY:  # a client asks where to send a query (QIRCE)
            return self._route_query(msg, node)
        if msg.type in (MsgType.INFERENCE_RESULT, MsgType.ERROR) and not msg.flags & wire.REPLY:
            # how a query submitted through the API ended, from the client that ran it
            with self.sub_lock:
                q = self.submissions.query_of_seq(msg.seq)
                if q is None or q.client != node:
                    return [Message(MsgType.ERROR, dst=msg.src, seq=msg.seq,
                                    body=wire.Error(2, f"no submitted query with seq {msg.seq} for {node}"))]
                now = time.time()
                if msg.type == MsgType.INFERENCE_RESULT:
                    r = msg.body
                    done = self.submissions.query_ended(msg.seq, now, label=int(r.label),
                                                        confidence=float(r.confidence), service_ms=float(r.service_ms))
                else:
                    done = self.submissions.query_ended(msg.seq, now, error=msg.body.text)
                view = q.view()
            if done:
                self._event("submitted_query_ended", **{k: view[k] for k in (
                    "id", "client", "model", "status", "server", "label", "confidence", "service_ms", "error",
                    "latency_ms")})
            return [Message(MsgType.ACK, dst=msg.src, seq=msg.seq, model_id=msg.model_id, body=wire.Ack())]
        if msg.type == MsgType.TASK_RESULT:  # the client has its model: the task's flows go
            if msg.task_id not in self.finished_tasks:
                with self.sub_lock:
                    end = msg.tlvs.get(Tlv.END_REASON)
                    self.submissions.task_ended(msg.task_id, wire.EndReason(end).name.lower() if end is not None
                                                else "ended", msg.tlvs.get(Tlv.ACCURACY), time.time())
                self.finished_tasks.add(msg.task_id)
                self.resumes.pop(msg.task_id, None)
                for e in self.tracker.finished(msg.task_id, time.time()):
                    self._event(e.pop("kind"), **e)
                self._reconcile("task_finished")
            place = self._placement(msg.task_id)
            if place is None:
                return []
            place.dst, place.seq = msg.src, msg.seq
            return [place]
        return [Message(MsgType.ERROR, task_id=msg.task_id, dst=msg.src,
                        body=wire.Error(2, f"the DCC does not take {MsgType(msg.type).name} messages"))]

    @staticmethod
    def query_dscp(model_id: int) -> int:
        """Queries and results of a model: DSCP 56..63, apart from training tasks (8..55)."""
        return 56 + model_id % 8

    def _replicas(self, model_id: int) -> list[ReplicaInfo]:
        """Servers the QRRT says host ``model_id``, with the MPVU's accuracy of the
        version the task ended with (task id = model id, as clients submit them)."""
        qk = self.maps.snapshot(time.time())["qrrt"]["knowledge"]
        good = self.lineage.latest_good(model_id)
        acc = max((v["accuracy"] for v in good.verdicts), default=None) if good else None
        return [ReplicaInfo(n, model_id, acc) for n, k in sorted(qk.items()) if model_id in k.get("models", [])]

    def _route_query(self, msg: Message, client: str) -> list[Message]:
        """Q-FAM + QIRCE for one query: the best replica now (excluding servers the
        client says failed), flows for its query and result traffic; idempotent."""
        itin = msg.tlvs.get(Tlv.ITINERARY)
        exclude = frozenset(wire.node_name(n) for n in (itin.segments if itin else []))
        key = (client, msg.seq, msg.model_id, exclude)
        if key not in self.query_answers:
            now = time.time()
            privacy = wire.Privacy(msg.tlvs.get(Tlv.PRIVACY_LEVEL, 0)).name.lower()
            q = Query(query_id=msg.seq, client=client, model_id=msg.model_id,
                      max_latency_ms=msg.tlvs.get(Tlv.MAX_LATENCY), min_accuracy=msg.tlvs.get(Tlv.MIN_ACCURACY),
                      privacy=privacy)
            d = self.router.route(q, self._snapshot(now), self._replicas(msg.model_id), now, exclude=set(exclude))
            with self.sub_lock:
                self.submissions.query_routed(msg.seq, d.server, d.feasible, d.reasons, now)
            self.routed += 1
            if self.routed <= 20 or not d.feasible or exclude:  # the first ones, and every refusal/failover
                self._event("query_routed", client=client, query=msg.seq, model=msg.model_id,
                            feasible=d.feasible, server=d.server, predicted_ms=d.predicted_ms,
                            excluded=sorted(exclude), reasons=d.reasons[:3])
            feas = Message(MsgType.FEASIBILITY, model_id=msg.model_id,
                           body=wire.Feasibility(d.feasible, float((d.predicted_ms or 0) / 1000), 0,
                                                 [r[:200] for r in d.reasons[:10]]))
            out = [feas]
            if d.feasible:
                dscp = self.query_dscp(msg.model_id)
                self._query_flows(client, d.server, msg.model_id, dscp, d.path, now)
                out.append(Message(MsgType.ITINERARY, model_id=msg.model_id,
                                   tlvs={Tlv.ITINERARY: wire.Itinerary(0, 0, 1, [wire.node_id(d.server)]),
                                         Tlv.TRANSPORT: dscp},
                                   body=wire.ItineraryBody("qirce")))
            self.query_answers[key] = out
            if len(self.query_answers) > 10_000:  # bounded: old answers are not asked again
                self.query_answers.pop(next(iter(self.query_answers)))
        answers = self.query_answers[key]
        for m in answers:
            m.dst, m.seq = msg.src, msg.seq
        return answers

    def _query_flows(self, client: str, server: str, model_id: int, dscp: int, path, now: float):
        """Flows for a client's queries to a server (and the results back); kept while used."""
        k = (client, server, model_id)
        if k in self.query_routes:
            self.query_routes[k]["last"] = now
            return
        flows = set()
        if path:
            import dataclasses
            try:
                for f in aiflows.hop_flows(self.fabric, path, task_id=model_id, hop=0, dscp=dscp,
                                           src_ip=self.fabric.hosts[client].ip, dst_ip=self.fabric.hosts[server].ip):
                    flows.add(dataclasses.replace(f, cookie=cookies.make(cookies.AI_QUERY, model_id)))
            except ValueError as e:
                self._event("no_path", query_route=[client, server], detail=str(e))
        self.query_routes[k] = {"flows": frozenset(flows), "last": now, "path": path}
        self._event("query_route_installed", client=client, server=server, model=model_id, path=path,
                    flows=len(flows))
        self._apply(self._wanted_flows())

    def _placement(self, task_id: int) -> Message | None:
        """Where the task's replicas go (tasks[].replicas): k-median over network latency
        from the query sources of its workloads; answered once, then the same again."""
        cfg = self.fabric.extra.get("placement", {}).get(str(task_id))
        if cfg is None:
            with self.sub_lock:
                sub = self.submissions.tasks.get(task_id)
            if sub is None or not sub.task.get("replicas"):
                return None
            # a task submitted through the API: no workloads name it, so the query
            # source is the client that submitted it
            cfg = {"k": sub.task["replicas"], "candidates": self.submissions.inference,
                   "sources": {sub.client: 1.0}}
        if task_id not in self.placements:
            now = time.time()
            chosen, reasons = place_replicas(task_id, cfg["sources"], plan_view(self._snapshot(now),
                                                                                 self.tracker.plan_inputs),
                                             cfg["candidates"],
                                             int(cfg["k"]))
            self._event("placement", task=task_id, model=task_id, k=cfg["k"], chosen=chosen,
                        sources=cfg["sources"], reasons=reasons[:10],
                        policy="k-median over rate-weighted network latency to the query sources")
            self.placements[task_id] = Message(
                MsgType.ITINERARY, task_id=task_id, model_id=task_id,
                tlvs={Tlv.ITINERARY: wire.Itinerary(0, 0, 1, [wire.node_id(n) for n in chosen])},
                body=wire.ItineraryBody("placement"))
        return self.placements[task_id]

    def _snapshot(self, now: float) -> dict:
        return self.maps.snapshot(now)

    def _plan(self, msg: Message, client: str) -> tuple[Message, Message | None]:
        """T-FAM + MTRCE for a training request (idempotent per task); installs
        the first hop's flows before the answer goes out."""
        now = time.time()
        ask = msg.tlvs.get(Tlv.ITINERARY)
        deadline = msg.tlvs.get(Tlv.DEADLINE)
        req = TrainingRequest(
            task_id=msg.task_id, client=client, model_bytes=int(msg.body.model_bytes),
            target_accuracy=float(msg.tlvs.get(Tlv.TARGET_ACCURACY, 1.0)),
            deadline_s=(deadline / 1000 - now) if deadline else 3600.0,
            required_labels=tuple(msg.tlvs[Tlv.REQUIRED_LABELS]) if msg.tlvs.get(Tlv.REQUIRED_LABELS) else None,
            byte_budget=msg.tlvs.get(Tlv.BYTE_BUDGET),
            max_laps=(ask.max_laps if ask is not None and ask.max_laps else 10),
            local_epochs=self.epochs, max_epochs=self.max_epochs)
        dscp = task_dscp(msg.task_id)
        digest = msg.tlvs.get(Tlv.MODEL_DIGEST)
        if digest is not None:  # the initial model (version 0) opens the task's lineage
            self._lineage(self.lineage.add_version(task=msg.task_id, model_id=msg.model_id, version=0,
                                                   sha256=digest.hex(), parent_sha256=None, t=now))
            self.last_sha[msg.task_id] = digest.hex()
        a, task, events = self.tracker.submit(req, dscp, self._snapshot(now), now, req.max_laps)
        self.plans[msg.task_id] = a.to_dict()
        for e in events:
            kind = e.pop("kind")
            self._event(kind, client=client, dscp=dscp, **e)
        plan = a.plan
        # the walking skeleton's "itinerary" event, kept for the summary and older tools
        self._event("itinerary", task=msg.task_id, client=client, feasible=a.feasible,
                    itinerary=plan.itinerary() if plan else [], reasons=a.reasons,
                    policy=self.policy_name, labels_covered=plan.labels_covered if plan else [],
                    mpvu=plan.mpvu if plan else None, dscp=dscp, est_seconds=a.est_seconds,
                    est_bytes=a.est_bytes, expected_accuracy=a.expected_accuracy)
        feas = Message(MsgType.FEASIBILITY, task_id=msg.task_id, model_id=msg.model_id,
                       body=wire.Feasibility(a.feasible, float(a.est_seconds or 0.0), int(a.est_bytes or 0),
                                             [r[:200] for r in a.reasons[:20]]))
        if task is None:
            with self.sub_lock:
                self.submissions.task_ended(msg.task_id, "infeasible: " + "; ".join(a.reasons[:3]), None, now)
            return feas, None
        self._install_hop(task.task_id, task.hop, "first hop")
        plan_msg = Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                           tlvs={Tlv.ITINERARY: self._itinerary_tlv(task), Tlv.TRANSPORT: dscp,
                                 Tlv.PARTIES: wire.Parties(wire.node_id(client), wire.node_id(task.mpvu)),
                                 **self._epochs_tlv(task)},
                           body=wire.ItineraryBody(self.policy_name))
        return feas, plan_msg

    def _epochs_tlv(self, task) -> dict:
        """The local epochs the plan gives the stop the model goes to (only when the plan
        chooses them: training.max_local_epochs)."""
        if self.max_epochs is None or task.heading is None or task.heading == task.client:
            return {}
        return {Tlv.EPOCHS: int(task.epochs.get(task.heading, self.epochs))}

    @staticmethod
    def _itinerary_tlv(task) -> wire.Itinerary:
        return wire.Itinerary(max(task.ptr, 0), task.lap, task.max_laps, [wire.node_id(n) for n in task.segments])

    def _hop(self, msg: Message, node: str) -> Message:
        """A model's holder asks where to go next (idempotent per (task, hop, version))."""
        key = (msg.task_id, msg.hop_count, msg.model_version)
        if key not in self.hop_answers:
            now = time.time()
            r = self.resumes.get(msg.task_id)
            if r is not None and msg.model_version > r["version"]:
                self.resumes.pop(msg.task_id)  # the resumed model trained on: the instruction is done
            rolled = self._stale_holder(msg, node, now) or self._check_poison(msg, node, now)
            if rolled is not None:
                self.hop_answers[key] = rolled
                rolled.dst, rolled.seq = msg.src, msg.seq
                return rolled
            self._record_version(msg, node, now)
            end = msg.tlvs.get(Tlv.END_REASON)
            if msg.task_id not in self.tracker.tasks and msg.task_id not in self.tracker.done \
                    and msg.tlvs.get(Tlv.END_REASON) is None:
                self._adopt(msg, node, now)
            try:
                ans, events = self.tracker.hop_request(msg.task_id, node,
                                                       None if end is None else wire.EndReason(end).name.lower(),
                                                       self._snapshot(now), now)
            except KeyError as e:
                return Message(MsgType.ERROR, task_id=msg.task_id, body=wire.Error(3, str(e)[:200]))
            for e in events:
                self._event(e.pop("kind"), **e)
            task = self.tracker.tasks[msg.task_id]
            self._install_hop(msg.task_id, task.hop, "hop request")
            tlvs = {Tlv.ITINERARY: self._itinerary_tlv(task), Tlv.TRANSPORT: task.dscp}
            if ans["end"] is None:
                tlvs.update(self._epochs_tlv(task))
            if ans["end"] is not None:
                tlvs[Tlv.END_REASON] = self.END_REASONS.get(ans["end"], wire.EndReason.ERROR)
            self.hop_answers[key] = Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                                            model_version=msg.model_version, hop_count=msg.hop_count,
                                            tlvs=tlvs, body=wire.ItineraryBody(self.policy_name))
        a = self.hop_answers[key]
        a.dst, a.seq = msg.src, msg.seq
        return a

    def _adopt(self, msg: Message, node: str, now: float):
        """A hop request for a task this DCC does not know (it was restarted, so its task
        state is gone): rebuild the task from what the request carries - the itinerary,
        target, deadline, client and MPVU, the model's size - and go on with it."""
        itin, parties = msg.tlvs.get(Tlv.ITINERARY), msg.tlvs.get(Tlv.PARTIES)
        target, deadline, chunk = msg.tlvs.get(Tlv.TARGET_ACCURACY), msg.tlvs.get(Tlv.DEADLINE), msg.tlvs.get(Tlv.CHUNK)
        if itin is None or parties is None or target is None or deadline is None or not itin.segments:
            return  # an older node: the hop request is refused and the node follows its itinerary
        try:
            events = self.tracker.adopt(
                task_id=msg.task_id, holder=node, client=wire.node_name(parties.client),
                mpvu=wire.node_name(parties.mpvu), target=float(target), deadline=deadline / 1000,
                model_bytes=int(chunk.total) if chunk is not None and chunk.total else 1,
                segments=[wire.node_name(n) for n in itin.segments], ptr=itin.ptr, lap=itin.lap,
                max_laps=itin.max_laps, hop=msg.hop_count, dscp=task_dscp(msg.task_id), now=now)
        except ValueError as e:
            self._event("adopt_refused", task=msg.task_id, node=node, reason=str(e))
            return
        for e in events:
            self._event(e.pop("kind"), **e)

    END_REASONS = {"target_reached": wire.EndReason.TARGET_REACHED, "deadline": wire.EndReason.DEADLINE,
                   "max_laps": wire.EndReason.MAX_LAPS, "infeasible": wire.EndReason.INFEASIBLE}

    def _discard_answer(self, msg: Message, t) -> Message:
        return Message(MsgType.ITINERARY, task_id=msg.task_id, model_id=msg.model_id,
                       model_version=msg.model_version, hop_count=msg.hop_count,
                       tlvs={Tlv.ITINERARY: self._itinerary_tlv(t), Tlv.END_REASON: wire.EndReason.ROLLED_BACK},
                       body=wire.ItineraryBody(self.policy_name))

    def _stale_holder(self, msg: Message, node: str, now: float) -> Message | None:
        """A node the task was recovered from (it was down while holding the model) is back
        and asks where its copy goes: the task went on without it, so that copy is discarded."""
        t = self.tracker.tasks.get(msg.task_id)
        if t is None or (msg.task_id, node) not in self.lost_holders:
            return None
        self._event("superseded_model_discarded", task=msg.task_id, node=node, version=msg.model_version,
                    sha256=msg.tlvs[Tlv.MODEL_DIGEST].hex() if Tlv.MODEL_DIGEST in msg.tlvs else None,
                    reason=f"the task was recovered from version {self.lost_holders[(msg.task_id, node)]} "
                           f"while {node} was down")
        return self._discard_answer(msg, t)

    def _check_poison(self, msg: Message, node: str, now: float) -> Message | None:
        """A stop's verified accuracy fell more than controller.rollback_drop below the
        task's last verified version: roll back to that version (the MPVU sends it on),
        leave the node out of the task, and tell the node to discard its model."""
        acc, digest = msg.tlvs.get(Tlv.ACCURACY), msg.tlvs.get(Tlv.MODEL_DIGEST)
        t = self.tracker.tasks.get(msg.task_id)
        if not self.rollback_drop or acc is None or digest is None or t is None or t.ended is not None \
                or msg.tlvs.get(Tlv.END_REASON) is not None:
            return None
        good = self.lineage.latest_good(msg.task_id)  # before this version is recorded
        if good is None or good.is_initial or not good.verdicts:
            return None
        ref = min(v["accuracy"] for v in good.verdicts)
        if acc >= ref - self.rollback_drop:
            return None
        self._record_version(msg, node, now)
        bad = digest.hex()
        why = (f"poisoned model from {node}: verified accuracy {acc:.3f} is {ref - acc:.3f} below version "
               f"{good.version}'s {ref:.3f} (controller.rollback_drop {self.rollback_drop:g})")
        self._lineage(self.lineage.abandon(msg.task_id, bad, f"rolled back: {why}"))
        self._event("rollback", task=msg.task_id, node=node, bad_version=msg.model_version, bad_sha256=bad,
                    accuracy=acc, to_version=good.version, to_sha256=good.sha256, reference_accuracy=ref,
                    reason=why, excluded=[node])
        self._resume_task(msg.task_id, why, now, exclude={node})
        return self._discard_answer(msg, t)

    def _resume_task(self, task_id: int, cause: str, now: float, exclude=(), lost: str | None = None):
        """Go on from the MPVU's copy of the task's last verified version (see tasks.resume)."""
        t = self.tracker.tasks.get(task_id)
        good = self.lineage.latest_good(task_id)
        if t is None:
            return
        if good is None or good.is_initial or not t.mpvu:
            self._event("recovery_impossible", task=task_id, cause=cause,
                        reason="no verified version of the model is kept (the MPVU keeps each version it "
                               "verified; none yet)")
            return
        if lost is not None:
            self._event("recovery", task=task_id, lost_node=lost, from_version=good.version,
                        from_sha256=good.sha256, at=t.mpvu, cause=cause)
            self.lost_holders[(task_id, lost)] = good.version
        ans, events = self.tracker.resume(task_id, t.mpvu, self._snapshot(now), now, cause, exclude)
        for e in events:
            self._event(e.pop("kind"), **e)
        self.last_sha[task_id] = good.sha256
        self._install_hop(task_id, t.hop, f"resume: {cause}")
        tlvs = {Tlv.ITINERARY: self._itinerary_tlv(t), Tlv.TRANSPORT: t.dscp,
                Tlv.MODEL_DIGEST: bytes.fromhex(good.sha256), **self._epochs_tlv(t)}
        if ans["end"] is not None:
            tlvs[Tlv.END_REASON] = self.END_REASONS.get(ans["end"], wire.EndReason.ERROR)
        self.resumes[task_id] = {"version": good.version, "mpvu": t.mpvu, "handoffs": 0, "t": now,
                                 "msg": Message(MsgType.ITINERARY, task_id=task_id, model_id=task_id,
                                                model_version=good.version, hop_count=max(t.hop - 1, 0),
                                                tlvs=tlvs, body=wire.ItineraryBody(cause[:100]))}

    MAX_RESUME_HANDOFFS = 20

    def _resume_instructions(self, mpvu: str, dst: int) -> list[Message]:
        out = []
        for tid, r in list(self.resumes.items()):
            if r["mpvu"] != mpvu:
                continue
            if tid not in self.tracker.tasks or r["handoffs"] >= self.MAX_RESUME_HANDOFFS:
                self.resumes.pop(tid)
                if tid in self.tracker.tasks:
                    self._event("resume_failed", task=tid, reason=f"{mpvu} did not send version {r['version']} "
                                                                  f"on after {r['handoffs']} instructions")
                continue
            r["handoffs"] += 1
            r["msg"].dst = dst
            out.append(r["msg"])
        return out

    def _record_version(self, msg: Message, node: str, now: float):
        """A hop request names the version its holder trained: into the lineage."""
        digest = msg.tlvs.get(Tlv.MODEL_DIGEST)
        if digest is None:
            return
        k = self.knowledge.get(node, {})
        try:
            self._lineage(self.lineage.add_version(
                task=msg.task_id, model_id=msg.model_id, version=msg.model_version, sha256=digest.hex(),
                parent_sha256=self.last_sha.get(msg.task_id), trained_at=node,
                epochs=(t.epochs.get(node, self.epochs) if (t := self.tracker.tasks.get(msg.task_id)) else self.epochs),
                samples=k.get("samples"), label_hist=k.get("label_hist"), t=now))
            self.last_sha[msg.task_id] = digest.hex()
        except (ValueError, TypeError) as e:
            self._event("lineage_refused", task=msg.task_id, version=msg.model_version, reason=str(e))

    def _lineage(self, events: list[dict]):
        for e in events:
            kind = e.pop("kind")
            if kind == "verdict_unknown_model":
                # the MPVU's verdict comes before the holder's hop request names the
                # version: it waits in the lineage and is attached then
                kind = "verdict_pending"
            self._event(kind, **e)

    def _models_view(self) -> dict:
        out = self.lineage.to_dict()
        out["problems"] = self.lineage.problems()
        return out

    def _flows_view(self) -> dict:
        # Built again only when the flows changed: ~8400 flows at 200 hosts take ~90 ms,
        # and every state write (each link event among them) wants the view
        key = (id(self.installed), len(self.installed), self.flow_mods_added, self.flow_mods_deleted,
               len(getattr(self, "meters", ())))
        cached = getattr(self, "_flows_view_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        by_fn: dict[str, list] = {}
        for f in sorted(getattr(self, "installed", ()), key=str):
            fn = cookies.function_of(f.cookie) or "other"
            entry = {"dpid": f.dpid, "priority": f.priority, "match": dict(f.match),
                     "actions": [list(a) for a in f.actions], "cookie": hex(f.cookie)}
            th = cookies.task_hop_of(f.cookie)
            if th:
                entry["task"], entry["hop"] = th
            if getattr(f, "meter", None):
                entry["meter"] = f.meter
            by_fn.setdefault(fn, []).append(entry)
        view = {"count": sum(map(len, by_fn.values())), "by_function": by_fn,
                "meters": len(getattr(self, "meters", ()))}
        self._flows_view_cache = (key, view)
        return view

    def _install_hop(self, task_id: int, hop: int, why: str):
        """Apply the flows now wanted and time their installation with a barrier."""
        t0 = time.time()
        before = set(self.installed)
        self._apply(self._wanted_flows())
        touched = {f.dpid for f in self.installed ^ before}
        pending = {"task": task_id, "hop": hop, "t0": t0, "dpids": set(touched), "why": why}
        self._hold = pending  # an answer being made now waits for these barriers (_packet_in)
        for dpid in touched:
            dp = self.datapaths.get(dpid)
            if dp is None:
                continue
            req = dp.ofproto_parser.OFPBarrierRequest(dp)
            dp.set_xid(req)
            self.barriers[req.xid] = pending
            dp.send_msg(req)
        self._write_state()

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        pending = self.barriers.pop(ev.msg.xid, None)
        if pending is None:
            return
        pending["dpids"].discard(ev.msg.datapath.id)
        if not pending["dpids"]:  # every switch of the hop has applied its flow-mods
            ms = (time.time() - pending["t0"]) * 1000
            self.hop_install_ms.append({"task": pending["task"], "hop": pending["hop"], "ms": ms})
            self._event("hop_flows_installed", task=pending["task"], hop=pending["hop"], ms=round(ms, 3),
                        why=pending["why"])
            for send in pending.pop("then", []):
                send()

    HOLD_MAX_S = 0.5  # an answer waits this long at most for its hop's barriers

    def _release_held(self, now: float):
        """Answers whose barriers never came back (a switch went away): send them anyway."""
        for xid, pending in list(self.barriers.items()):
            if pending.get("then") and now >= pending.get("deadline", now):
                self._event("hop_answer_unconfirmed", task=pending["task"], hop=pending["hop"],
                            waiting_for=sorted(pending["dpids"]))
                for send in pending.pop("then", []):
                    send()

    REPLAN_ON = {"link_down": "link down", "link_up": "link up", "capacity_changed": "bandwidth change",
                 "node_down": "node failure", "node_joined": "node joined", "node_up": "node back"}

    def _maps_events(self, events: list[dict]):
        """Log the maps' events; a change of the network re-plans the active tasks."""
        causes = []
        for e in events:
            kind = e.pop("kind")
            self._event(kind, **e)
            if kind == "node_down":  # a task whose model it held goes on from its last verified version
                for t in list(self.tracker.tasks.values()):
                    if t.heading == e.get("node") and t.heading != t.client and t.ended is None:
                        self._resume_task(t.task_id, f"{t.heading} failed while holding the model", time.time(),
                                          exclude={t.heading}, lost=t.heading)
            if kind in self.REPLAN_ON:
                what = e.get("node") or "-".join(str(x) for x in (e.get("a"), e.get("b")) if x)
                causes.append(f"{self.REPLAN_ON[kind]} ({what})")
            elif kind == "knowledge_changed" and {"label_hist", "samples"} & set(e.get("changes", {})):
                causes.append(f"data changed ({e.get('node')})")  # drift, or a shard arriving
        if causes:
            self._replan("; ".join(causes))

    def _replan(self, cause: str):
        if not self.tracker.tasks:
            return
        now = time.time()
        events = self.tracker.replan(cause, self._snapshot(now), now)
        for e in events:
            self._event(e.pop("kind"), **e)
        if events:  # answers already given stand (a retransmitted request gets the same)
            self._install_hop(-1, -1, f"re-plan: {cause}")

    # ---- submissions through the northbound API (API thread) -------------------
    def _submissions_view(self) -> dict:
        with self.sub_lock:
            return self.submissions.view()

    def _api_task(self, req) -> tuple[int, dict]:
        with self.sub_lock:
            try:
                s = self.submissions.add_task(req)
            except SubmissionError as e:
                self.send_event(self.name, _ApiCommand("refused", {"request": "POST /v1/tasks", "reason": str(e)}))
                raise
            view = s.view()
        self.send_event(self.name, _ApiCommand("submitted", {"what": "task", **view}))
        return 202, view

    def _api_query(self, req) -> tuple[int, dict]:
        with self.sub_lock:
            models = {*self.fabric.extra.get("task_ids", []), *self.submissions.tasks}
            try:
                q = self.submissions.add_query(req, models=models)
            except SubmissionError as e:
                self.send_event(self.name, _ApiCommand("refused", {"request": "POST /v1/queries", "reason": str(e)}))
                raise
            view = q.view()
        self.send_event(self.name, _ApiCommand("submitted", {"what": "query", **{k: view[k] for k in (
            "id", "seq", "client", "model", "max_latency_ms", "min_accuracy", "privacy")}}))
        return 202, view

    def _tasks_view(self) -> dict:
        out = {}
        for tid, t in list(self.tracker.tasks.items()) + list(self.tracker.done.items()):
            out[str(tid)] = {"client": t.client, "mpvu": t.mpvu, "dscp": t.dscp, "segments": t.segments,
                             "ptr": t.ptr, "lap": t.lap, "holder": t.holder, "heading": t.heading,
                             "hop": t.hop, "replans": t.replans, "ended": t.ended,
                             "active": tid in self.tracker.tasks, "paths": t.paths,
                             "flows": len(t.flows)}
        return out
