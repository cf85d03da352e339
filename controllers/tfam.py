"""T-FAM, the training feasibility assessment module: what a training trip costs and whether it can succeed.

The DCC asks T-FAM whether a training request (:class:`controllers.mtrce.TrainingRequest`)
can be met on the network as the DRRT shows it now. T-FAM holds the cost model an MTRCE
policy plans with (:class:`CostModel`: seconds to train and verify, bytes a transfer puts
on the wire, expected accuracy after so many samples), the wording of every reason a
request is refused (:func:`verdict`) and the entry point :func:`assess`, which has a
policy plan the trip and returns an :class:`Assessment`.

Pure: no os_ken, no mininet, no clock (``now`` is passed in). Only :func:`calibrate`
imports torch and the data sets, to measure the constants on the machine at hand.

Everything here is an estimate that the run later checks against what happened
(``events.jsonl`` holds both): time and bytes per leg, and the expected accuracy.
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # mtrce imports this module; the names are for annotations only
    from controllers.mtrce import Plan, Policy, TrainingRequest

__all__ = ["CostModel", "Assessment", "assess", "expected_accuracy", "expected_accuracy_rows",
           "samples_needed", "label_coverage", "verdict", "labels_phrase", "human_bytes",
           "calibrate", "calibrate_training", "calibrate_accuracy", "CHUNK_BYTES"]

# nodes/transport.py CHUNK_BYTES, repeated so T-FAM stays importable without the node code;
# tests/unit/test_tfam.py checks that the two agree.
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class CostModel:
    """The constants T-FAM and the MTRCE plan with. Each says how it was obtained; run
    :func:`calibrate` on another machine and pass ``CostModel(**numbers)``."""

    # Seconds one sample takes for one epoch at capacity 1.0: measured by
    # calibrate_training() on this machine (2 cores, torch 2.13 CPU, 1 torch thread as the
    # testbed runs nodes): train_local on the digits training pool (1347 samples), batch 4,
    # MLP [64], lr 0.1, momentum 0.5, median of 5-7 epochs after a warm-up. Eight runs gave
    # 6.3e-5 to 1.6e-4 s as other jobs loaded the machine; 9.3e-5 is their median.
    train_s_per_sample_epoch: float = 9.3e-5
    # ... for that model of 21,469 bytes; a bigger model costs more per sample. Rough
    # linear fit through that point and bench/bench_policies.py's MLP [512, 512]
    # (1.2 MB, ~6.7e-4 s per sample per epoch on the same machine): +4.9e-10 s per byte
    # of model state beyond the calibrated one.
    calibrated_model_bytes: int = 21469
    train_s_per_sample_epoch_per_byte: float = 4.9e-10
    # One MPVU evaluation: the MPVU deserialises the model (21469 bytes) and evaluates it on
    # the digits verification set (450 samples), and the stop serialises the model it sends.
    # calibrate_training(): 2.0 to 3.4 ms over the same eight runs, median 2.1 ms.
    verify_s: float = 0.0021
    # DA-ITN bytes a model transfer adds besides the state, from docs/protocol.md and
    # nodes/transport.py, checked against nodes.wire.encode in tests/unit/test_tfam.py:
    # every MODEL_CHUNK / EVAL_REQUEST chunk carries the 36-byte header, MODEL_DIGEST (2+32)
    # and CHUNK (2+16) TLVs and the 40-byte AUTH trailer = 128 bytes per chunk ...
    overhead_bytes_per_chunk: int = 128
    # ... and once per transfer: the task TLVs of the first chunk (TARGET_ACCURACY,
    # DEADLINE, PARTIES, TRANSPORT, ITINERARY, ACCURACY: 28 to 52 bytes; 40 typical) plus
    # the receiver's reply (ACK 85 bytes, EVAL_VERDICT with 10 classes 165 bytes; 125
    # between them). TCP/IP/Ethernet headers are not counted: these are the bytes
    # nodes.runtime's "transfer" events report, which is what the run compares with.
    overhead_bytes_per_transfer: int = 165
    chunk_bytes: int = CHUNK_BYTES
    # One-way path latencies a transfer waits for: each transfer opens a TCP connection
    # (SYN, SYN-ACK: 2), sends (1) and waits for the reply (1).
    latency_factor: float = 4.0
    # TCP's initial window (Linux: 10 segments of 1448 bytes): a model larger than this
    # takes extra round trips during slow start; each doubles the window.
    tcp_initial_window_bytes: int = 14480
    # When the DRRT knows neither the available rate nor the capacity of a link direction.
    default_link_mbps: float = 100.0
    # A saturated link still gives a new TCP flow some share: at least this fraction of
    # capacity is assumed available (the TCP-fair share with up to 9 competing flows).
    min_share: float = 0.1
    # A node that reports load (busy fraction) is assumed to be half-way through a job as
    # long as the one we would add; queued jobs are assumed as long as ours.
    residual_fraction: float = 0.5
    # Expected accuracy (see expected_accuracy and label_coverage), fitted by
    # calibrate_accuracy() on the testbed default: digits, MLP [64], one epoch per stop, MPVU
    # set of all 10 labels. Numbers in brackets: what the fit gave on this machine.
    # - acc_max, acc_samples_scale: ceiling with every label covered and sample-epochs for
    #   the gap to chance to shrink by e, least squares over the verdicts after each stop of
    #   8-lap trips over 4 Dirichlet(0.3) shards, seeds 0-5, the two constants below fixed
    #   [0.911, 770; rms 0.054: single verdicts scatter by about 0.05, so a run's first
    #   verdict over the target tends to come before this mean curve's]. Below the 0.94 that
    #   IID data reaches: moving between skewed shards forgets.
    acc_max: float = 0.911
    acc_samples_scale: float = 770.0
    # - acc_distinct_half: m distinct samples scale the ceiling by m / (m + half): training
    #   again on the same few samples stops helping. From the plateaus of stratified subsets
    #   trained epoch after epoch, relative to the whole pool's [25: 0.75, 50: 0.85, 100: 0.90,
    #   200: 0.93, 400 and all 1347: 0.94 -> 6.0 samples, rms 0.013].
    acc_distinct_half: float = 6.0
    # - label_share_full: a label counts as covered in full once it holds this fraction of a
    #   fair share (1 / n_classes) of the samples seen, in proportion below it. From the
    #   plateaus of single Dirichlet(0.3) shards trained epoch after epoch (24 shards, 0.50
    #   to 0.85) fitted as 0.94 x distinct factor x coverage [0.15, rms 0.030; counting every
    #   label with a sample as covered instead: rms 0.19]. A label with 1 sample among 300
    #   is all but absent.
    label_share_full: float = 0.15

    def __post_init__(self):
        for name in ("train_s_per_sample_epoch", "verify_s", "latency_factor", "min_share",
                     "residual_fraction", "acc_distinct_half"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"CostModel.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("chunk_bytes", "default_link_mbps", "acc_samples_scale", "tcp_initial_window_bytes",
                     "label_share_full"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CostModel.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.acc_max <= 1:
            raise ValueError(f"CostModel.acc_max must be in (0, 1], got {self.acc_max!r}")

    # ---- bytes and seconds ---------------------------------------------------
    def transfer_bytes(self, model_bytes: int) -> int:
        """DA-ITN bytes one transfer of a ``model_bytes`` state puts on the wire."""
        chunks = max(1, -(-model_bytes // self.chunk_bytes))
        return model_bytes + chunks * self.overhead_bytes_per_chunk + self.overhead_bytes_per_transfer

    def transfer_seconds(self, nbytes: int, latency_ms: float, bottleneck_mbps: float) -> float:
        """Seconds to move ``nbytes`` over a path of one-way ``latency_ms`` whose slowest link
        gives ``bottleneck_mbps``: the latencies a connection waits for, slow-start round
        trips, and the bytes at the bottleneck rate (the path pipelines, so only the slowest
        link counts)."""
        rounds = max(0, math.ceil(math.log2(nbytes / self.tcp_initial_window_bytes + 1)) - 1)
        waits = self.latency_factor + 2 * rounds
        return waits * latency_ms / 1000 + nbytes * 8 / (bottleneck_mbps * 1e6)

    def train_seconds(self, samples: int, epochs: int, capacity: float, model_bytes: int | None = None) -> float:
        """Seconds of training at a node of relative speed ``capacity`` (nodes.model.Throttle),
        for a model of ``model_bytes`` (None: the calibrated model's size)."""
        extra = max(0, (model_bytes or self.calibrated_model_bytes) - self.calibrated_model_bytes)
        per = self.train_s_per_sample_epoch + extra * self.train_s_per_sample_epoch_per_byte
        return samples * epochs * per / capacity

    def wait_seconds(self, train_s: float, load: float, queue_len: int) -> float:
        """Queueing estimate at a node: the jobs it has queued, plus the rest of the one it is
        busy with, each assumed as long as ours (``train_s``)."""
        return (queue_len + self.residual_fraction * min(max(load, 0.0), 1.0)) * train_s


# ---- expected accuracy --------------------------------------------------------
def label_coverage(hist, cost: CostModel | None = None, n_classes: int | None = None) -> float:
    """How well the samples of label histogram ``hist`` cover the ``n_classes`` classes
    (default: its length), 0..1: each label adds ``min(1, share * n_classes /
    label_share_full) / n_classes``, its share being its count over all counts. Counting
    every label with a sample as covered would call a shard with one sample of a label
    among 300 complete; the MPVU would disagree."""
    cost = cost or CostModel()
    n_classes = n_classes or len(hist)
    total = sum(hist)
    if total <= 0 or n_classes <= 0:
        return 0.0
    full = cost.label_share_full * total / n_classes  # count that covers a label in full
    return sum(min(1.0, c / full) for c in hist if c > 0) / n_classes


def _ceiling(coverage: float, distinct: float | None, cost: CostModel) -> float:
    c = cost.acc_max * min(max(coverage, 0.0), 1.0)
    if distinct is not None:
        c *= distinct / (distinct + cost.acc_distinct_half) if distinct > 0 else 0.0
    return c


def expected_accuracy(samples_seen: float, coverage: float, cost: CostModel | None = None,
                      n_classes: int = 10, distinct: float | None = None) -> float:
    """MPVU accuracy expected after the model trained on ``samples_seen`` sample-epochs
    drawn from ``distinct`` different samples (None: all different) with label coverage
    ``coverage`` (0..1, :func:`label_coverage`) of the ``n_classes`` classes.

    ``chance + (ceiling - chance) * (1 - exp(-samples_seen / acc_samples_scale))`` with
    ``ceiling = acc_max * coverage * distinct / (distinct + acc_distinct_half)``: an
    untrained model scores chance (1 / n_classes); training closes the gap exponentially in
    the samples seen; the ceiling scales with coverage, since a model (almost) never shown
    a label does not predict it, and falls when little distinct data is seen again and
    again. A heuristic with four fitted constants (see :class:`CostModel`), not a learning
    curve of the task at hand: the data set, the learning rate, the order of the stops and
    the MPVU's labels all move the real curve, which the run records next to this estimate.
    """
    cost = cost or CostModel()
    chance = 1.0 / max(1, n_classes)
    ceiling = _ceiling(coverage, distinct, cost)
    return chance + (ceiling - chance) * (1.0 - math.exp(-max(samples_seen, 0.0) / cost.acc_samples_scale))


def samples_needed(target: float, coverage: float, cost: CostModel | None = None,
                   n_classes: int = 10, distinct: float | None = None) -> float:
    """Sample-epochs after which :func:`expected_accuracy` reaches ``target`` (math.inf if
    it never does at this coverage and distinct data)."""
    cost = cost or CostModel()
    chance = 1.0 / max(1, n_classes)
    if target <= chance:
        return 0.0
    ceiling = _ceiling(coverage, distinct, cost)
    if ceiling <= target:
        return math.inf
    return -cost.acc_samples_scale * math.log(1.0 - (target - chance) / (ceiling - chance))


def expected_accuracy_rows(samples_seen, hists, distinct, cost: CostModel | None = None):
    """:func:`expected_accuracy` of :func:`label_coverage` for many candidates at once
    (numpy): ``hists`` is a K x n_classes array of pooled label counts, ``samples_seen``
    and ``distinct`` arrays of K. The MTRCE's greedy step scores every candidate with it."""
    cost = cost or CostModel()
    hists = np.asarray(hists, dtype=float)
    n_classes = hists.shape[1]
    total = hists.sum(axis=1)
    full = cost.label_share_full * total / n_classes
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.where(hists > 0, np.minimum(1.0, hists / full[:, None]), 0.0).sum(axis=1) / n_classes
        distinct = np.asarray(distinct, dtype=float)
        factor = np.where(distinct > 0, distinct / (distinct + cost.acc_distinct_half), 0.0)
    chance = 1.0 / n_classes
    ceiling = cost.acc_max * np.clip(cov, 0.0, 1.0) * factor
    seen = np.maximum(np.asarray(samples_seen, dtype=float), 0.0)
    return chance + (ceiling - chance) * (1.0 - np.exp(-seen / cost.acc_samples_scale))


# ---- reasons --------------------------------------------------------------------
def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'; 5000000 -> '5 MB' (decimal units, as link rates are)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} B"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s".replace(".0 s", " s")


def labels_phrase(labels) -> str:
    """[7] -> 'label 7'; [7, 9] -> 'labels 7 and 9'; [3, 7, 9] -> 'labels 3, 7 and 9'."""
    ls = [str(x) for x in sorted(labels)]
    if len(ls) == 1:
        return f"label {ls[0]}"
    return f"labels {', '.join(ls[:-1])} and {ls[-1]}"


def _acc(acc: float, target: float) -> str:
    """Two decimals, more when two would round up to the target ("0.90 below 0.9")."""
    for d in (2, 3, 4):
        if round(acc, d) < target:
            return f"{acc:.{d}f}"
    return f"{acc:.5f}"


def verdict(*, target: float, deadline_s: float, byte_budget: int | None, max_laps: int,
            est_seconds: float, est_bytes: int, reaches_target: bool, expected_acc: float,
            unheld_labels=(), unvisited_labels=()) -> list[str]:
    """Why a plan with these estimates fails the request (empty: it does not)."""
    out = []
    if unheld_labels:
        verb = "is" if len(unheld_labels) == 1 else "are"
        out.append(f"{labels_phrase(unheld_labels)} {verb} held by no reachable data node")
    if unvisited_labels:
        out.append(f"the plan reaches no holder of {labels_phrase(unvisited_labels)} "
                   "before the target is expected")
    if not reaches_target:
        laps = "lap" if max_laps == 1 else "laps"
        out.append(f"expected accuracy {_acc(expected_acc, target)} after {max_laps} {laps} stays below "
                   f"the target {target:g}")
    if est_seconds > deadline_s:
        out.append(f"estimated {_seconds(est_seconds)} exceeds the deadline of {deadline_s:g} s"
                   if deadline_s > 0 else "the deadline has passed")
    if byte_budget is not None and est_bytes > byte_budget:
        out.append(f"the plan moves {human_bytes(est_bytes)}, over the byte budget of "
                   f"{human_bytes(byte_budget)}")
    return out


# ---- the assessment ---------------------------------------------------------------
@dataclass
class Assessment:
    """T-FAM's answer: can the request be met, why not, and the best plan found (an
    infeasible answer still carries it where one exists)."""

    feasible: bool
    reasons: list[str]
    plan: Plan | None
    est_seconds: float
    est_bytes: int
    expected_accuracy: float

    def to_dict(self) -> dict:
        """JSON-ready (for events.jsonl and the FEASIBILITY message)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["reasons"] = list(self.reasons)
        d["plan"] = None if self.plan is None else self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Assessment:
        from controllers.mtrce import Plan
        return cls(d["feasible"], list(d["reasons"]),
                   None if d["plan"] is None else Plan.from_dict(d["plan"]),
                   d["est_seconds"], d["est_bytes"], d["expected_accuracy"])


def assess(req: TrainingRequest, snapshot: dict, now: float, policy: Policy,
           cost: CostModel | None = None) -> Assessment:
    """T-FAM: can ``req`` be met on the network of ``snapshot`` (NetworkMaps.snapshot) at
    ``now``? ``policy`` (an MTRCE policy) plans the trip; the answer carries its plan."""
    cost = cost or CostModel()
    plan = policy.plan(req, snapshot, now, cost)
    feasible, reasons = plan.feasible, list(plan.reasons)
    if not plan.feasible and plan.stops and (req.deadline_s < RELAXED_DEADLINE_S or req.byte_budget):
        # Which constraint binds? Plan again without deadline and byte budget: a plan
        # that then reaches the target says how late (or how heavy) reaching it is,
        # instead of the quick plan's "stays below the target"; one that does not
        # reach it says how close the network can get at best.
        free = policy.plan(dataclasses.replace(req, deadline_s=RELAXED_DEADLINE_S, byte_budget=None),
                           snapshot, now, cost)
        below = [r for r in reasons if "stays below the target" in r]
        if free.stops and free.feasible:
            why = []
            if free.est_seconds > req.deadline_s:
                why.append(f"reaching the target {req.target_accuracy:g} is expected to take "
                           f"{_seconds(free.est_seconds)} ({_trip(free)}), over the deadline of {req.deadline_s:g} s")
            if req.byte_budget is not None and free.est_bytes > req.byte_budget:
                why.append(f"reaching the target {req.target_accuracy:g} is expected to move "
                           f"{human_bytes(free.est_bytes)} ({_trip(free)}), over the byte budget of "
                           f"{human_bytes(req.byte_budget)}")
            if why:
                reasons = why + [r for r in reasons if r not in below and "exceeds the deadline" not in r
                                 and "over the byte budget" not in r]
                plan = free
        elif free.stops and below and free.expected_accuracy > plan.expected_accuracy + 0.005:
            reasons = [f"expected accuracy at best {_acc(free.expected_accuracy, req.target_accuracy)} "
                       f"({_trip(free)}) even without deadline and byte budget, below the target "
                       f"{req.target_accuracy:g}"] + [r for r in reasons if r not in below]
            plan = free  # the closest the network can get: the plan worth showing
    return Assessment(feasible, reasons, plan if plan.stops else None,
                      plan.est_seconds, plan.est_bytes, plan.expected_accuracy)


RELAXED_DEADLINE_S = 1e9


def _trip(plan) -> str:
    laps = f", {plan.laps} laps" if plan.laps > 1 else ""
    return f"{' -> '.join(plan.itinerary())}{laps}"


# ---- calibration (measures the constants above; imports torch) ---------------------
def calibrate_training(repeats: int = 5, evals: int = 20, max_samples: int | None = None,
                       seed: int = 0) -> dict:
    """Time nodes.model.train_local and one MPVU evaluation on the digits data with the
    testbed defaults (batch 4, MLP [64], lr 0.1, momentum 0.5, one torch thread).
    Returns {"train_s_per_sample_epoch", "verify_s", "samples", "model_bytes"}: medians
    after a warm-up epoch. ``max_samples`` caps the training pool (quick checks)."""
    import statistics
    import time

    import torch

    from nodes.data import load_dataset, verification_set
    from nodes.model import build_mlp, bytes_to_state, evaluate, state_to_bytes, train_local

    d = {"dataset": "digits", "max_samples": max_samples}
    ds = load_dataset(d, seed)
    vx, vy = verification_set(ds, d, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # training.torch_threads default: nodes share the cores
    try:
        model = build_mlp(in_features=ds.in_features, n_classes=ds.n_classes, hidden=(64,), seed=seed)
        train_local(model, ds.train_X, ds.train_y, epochs=1, seed=seed)  # warm-up
        per = []
        for i in range(repeats):
            st = train_local(model, ds.train_X, ds.train_y, epochs=1, seed=seed + i + 1)
            per.append(st["seconds"] / st["samples"])
        state = state_to_bytes(model)
        evals_s = []
        for _ in range(evals):
            t = time.perf_counter()
            m = bytes_to_state(build_mlp(in_features=ds.in_features, n_classes=ds.n_classes,
                                         hidden=(64,), seed=seed), state)
            evaluate(m, vx, vy)
            state_to_bytes(m)
            evals_s.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return {"train_s_per_sample_epoch": statistics.median(per), "verify_s": statistics.median(evals_s),
            "samples": len(ds.train_y), "model_bytes": len(state)}


def calibrate_accuracy(seeds=range(6), n_nodes: int = 4, laps: int = 8, alpha: float = 0.3,
                       subset_sizes=(25, 50, 100, 200, 400), repeat_sample_epochs: int = 6000) -> dict:
    """Fit the constants of :func:`expected_accuracy` and :func:`label_coverage` on three
    experiments per seed, testbed defaults throughout (digits, MLP [64], batch 4, lr 0.1,
    momentum 0.5, MPVU set of all 10 labels):

    - repeats (``acc_distinct_half``): a stratified subset of m samples (each of
      ``subset_sizes`` and the whole pool) trained epoch after epoch up to
      ``repeat_sample_epochs``; its plateau (mean of the last third of its verdicts)
      relative to the whole pool's is fitted as m / (m + half);
    - shards (``label_share_full``): each of ``n_nodes`` Dirichlet(``alpha``) shards alone,
      trained the same way; its plateau fitted as the pool's plateau x distinct factor x
      label_coverage(shard);
    - a trip (``acc_max``, ``acc_samples_scale``): the shards visited in turn, one epoch per
      stop, for ``laps`` laps, a point after every stop (sample-epochs seen, coverage of the
      samples seen, accuracy), fitted with the two constants above fixed.

    Least squares on grids. Returns the four constants, the rms error of each fit and the
    plateaus measured."""
    import dataclasses

    import torch

    from nodes.data import _stratified_take, label_histogram, make_shards, verification_set
    from nodes.model import build_mlp, evaluate, train_local

    d = {"dataset": "digits", "partition": "dirichlet", "alpha": alpha}
    trip, plateaus, shard_pts = [], {}, []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in seeds:
            shards, ds = make_shards([f"h{i + 1}" for i in range(n_nodes)], d, seed)
            vx, vy = verification_set(ds, d, seed)

            def fresh():
                return build_mlp(in_features=ds.in_features, n_classes=ds.n_classes, hidden=(64,), seed=seed)

            def plateau(X, y):
                model, accs = fresh(), []
                for e in range(max(3, repeat_sample_epochs // len(y))):
                    train_local(model, X, y, epochs=1, seed=seed * 1000 + e)
                    accs.append(evaluate(model, vx, vy)["accuracy"])
                return float(np.mean(accs[-max(1, len(accs) // 3):]))

            rng = np.random.default_rng([seed, 7])
            for m in (*subset_sizes, len(ds.train_y)):
                idx = _stratified_take(ds.train_y, m, rng)
                plateaus.setdefault(m, []).append(plateau(ds.train_X[idx], ds.train_y[idx]))
            hists = [label_histogram(sh.y, ds.n_classes) for sh in shards.values()]
            for sh, h in zip(shards.values(), hists):
                shard_pts.append((h, plateau(sh.X, sh.y)))
            model, seen, pooled = fresh(), 0, [0] * ds.n_classes
            for lap in range(laps):
                for i, (sh, h) in enumerate(zip(shards.values(), hists)):
                    train_local(model, sh.X, sh.y, epochs=1, seed=seed * 1000 + lap * n_nodes + i)
                    seen += len(sh.y)
                    if lap == 0:
                        pooled = [a + b for a, b in zip(pooled, h)]
                    trip.append((seen, pooled, evaluate(model, vx, vy)["accuracy"]))
    finally:
        torch.set_num_threads(threads)
    full = max(plateaus)
    top = float(np.mean(plateaus[full]))
    ms = np.array([m for m in plateaus if m != full], dtype=float)
    ratio = np.array([np.mean(plateaus[int(m)]) / top for m in ms])
    halves = np.arange(0.5, 200.01, 0.5)
    errs = [float(np.sqrt(np.mean((ms / (ms + h) - ratio) ** 2))) for h in halves]
    half = float(halves[int(np.argmin(errs))])
    best_share = None
    for share in np.arange(0.02, 1.0001, 0.01):
        cm = CostModel(label_share_full=float(share))
        pred = [top * sum(h) / (sum(h) + half) * label_coverage(h, cm) for h, _ in shard_pts]
        e = float(np.sqrt(np.mean((np.array(pred) - [p for _, p in shard_pts]) ** 2)))
        if best_share is None or e < best_share[0]:
            best_share = (e, float(round(share, 2)))
    cm = dataclasses.replace(CostModel(), label_share_full=best_share[1], acc_distinct_half=half)
    n = np.array([t[0] for t in trip], dtype=float)
    cov = np.array([label_coverage(t[1], cm) for t in trip])
    dist = np.array([sum(t[1]) / (sum(t[1]) + half) for t in trip])
    acc = np.array([t[2] for t in trip])
    best = None
    for a_max in np.arange(0.80, 1.0001, 0.001):
        for scale in np.arange(50, 4001, 10):
            pred = 0.1 + (a_max * cov * dist - 0.1) * (1 - np.exp(-n / scale))
            err = float(np.sqrt(np.mean((pred - acc) ** 2)))
            if best is None or err < best[0]:
                best = (err, float(a_max), float(scale))
    return {"acc_max": round(best[1], 3), "acc_samples_scale": best[2], "acc_distinct_half": half,
            "label_share_full": best_share[1], "rms_trip": best[0], "rms_distinct": min(errs),
            "rms_shards": best_share[0], "trip_points": len(trip),
            "plateaus": {int(m): float(np.mean(v)) for m, v in sorted(plateaus.items())},
            "shard_plateaus": [p for _, p in shard_pts]}


def calibrate(**kw) -> dict:
    """Both calibrations; the result's cost-model keys can be passed to CostModel(**...)."""
    tr = calibrate_training(**{k: v for k, v in kw.items() if k in ("repeats", "evals", "max_samples")})
    ac = calibrate_accuracy(**{k: v for k, v in kw.items() if k in ("seeds", "n_nodes", "laps", "alpha",
                                                                    "subset_sizes", "repeat_sample_epochs")})
    return {"train_s_per_sample_epoch": tr["train_s_per_sample_epoch"], "verify_s": tr["verify_s"],
            "acc_max": ac["acc_max"], "acc_samples_scale": ac["acc_samples_scale"],
            "acc_distinct_half": ac["acc_distinct_half"], "label_share_full": ac["label_share_full"],
            "details": {"training": tr, "accuracy": ac}}


if __name__ == "__main__":  # python -m controllers.tfam: print this machine's numbers
    import json
    print(json.dumps(calibrate(), indent=1))
