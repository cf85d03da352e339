"""Unit tests for T-FAM (controllers/tfam.py): cost model, expected accuracy, reasons, assess()."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.mtrce import NaiveRandom, SearchPolicy, TrainingRequest, get_policy
from controllers.tfam import (CHUNK_BYTES, Assessment, CostModel, assess, calibrate_training,
                              expected_accuracy, expected_accuracy_rows, human_bytes, label_coverage,
                              labels_phrase, samples_needed, verdict)
from test_mtrce import COST, data, line, req, snapshot_of


# ---- bytes on the wire -----------------------------------------------------------------------
def test_overheads_match_what_the_wire_encodes():
    from nodes import transport, wire
    from nodes.wire import Message, MsgType as MT, Tlv

    assert CHUNK_BYTES == transport.CHUNK_BYTES
    key, digest = b"k" * 32, hashlib.sha256(b"x").digest()

    def size(m):
        return len(wire.encode(m, key, 1))
    middle = Message(MT.MODEL_CHUNK, tlvs={Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(CHUNK_BYTES, 10**6)},
                     body=b"")
    assert size(middle) == CostModel().overhead_bytes_per_chunk
    task = {Tlv.TARGET_ACCURACY: 0.85, Tlv.DEADLINE: 1_764_000_000_000, Tlv.PARTIES: wire.Parties(1, 9),
            Tlv.TRANSPORT: 10, Tlv.MODEL_DIGEST: digest, Tlv.CHUNK: wire.Chunk(0, 1000)}
    firsts = [size(Message(MT.EVAL_REQUEST, tlvs=task, body=b"")),
              size(Message(MT.MODEL_CHUNK, body=b"", tlvs={
                  **task, Tlv.ACCURACY: 0.5, Tlv.ITINERARY: wire.Itinerary(0, 0, 10, list(range(2, 10)))}))]
    replies = [size(Message(MT.ACK, flags=wire.REPLY, body=wire.Ack(10, 0))),
               size(Message(MT.EVAL_VERDICT, flags=wire.REPLY, tlvs={Tlv.MODEL_DIGEST: digest},
                            body=wire.EvalVerdict(0.5, 0.5, 450, [0.5] * 10)))]
    extra = [f - CostModel().overhead_bytes_per_chunk for f in firsts]
    per_transfer = CostModel().overhead_bytes_per_transfer
    assert min(extra) + min(replies) <= per_transfer <= max(extra) + max(replies)


def test_transfer_bytes_count_chunks():
    c = CostModel()
    assert c.transfer_bytes(1000) == 1000 + 128 + c.overhead_bytes_per_transfer
    assert c.transfer_bytes(CHUNK_BYTES) == CHUNK_BYTES + 128 + c.overhead_bytes_per_transfer
    assert c.transfer_bytes(CHUNK_BYTES + 1) == CHUNK_BYTES + 1 + 2 * 128 + c.overhead_bytes_per_transfer


def test_transfer_seconds_pipeline_at_the_bottleneck_and_pay_slow_start():
    c = CostModel()
    # fits the initial window: 4 one-way latencies + serialisation
    assert c.transfer_seconds(10_000, 10.0, 8.0) == pytest.approx(0.040 + 0.010)
    # 100 kB needs 3 windows (1 + 2 + 4 x 14480 B): 2 more round trips
    assert c.transfer_seconds(100_000, 10.0, 800.0) == pytest.approx((4 + 4) * 0.010 + 0.001)
    assert c.transfer_seconds(14_480, 10.0, 800.0) < 0.045 < c.transfer_seconds(14_481, 10.0, 800.0)


def test_train_and_wait_seconds():
    c = CostModel(train_s_per_sample_epoch=1e-3)
    assert c.train_seconds(100, 2, 0.5) == pytest.approx(0.4)
    assert c.wait_seconds(2.0, load=1.0, queue_len=3) == pytest.approx(7.0)
    assert c.wait_seconds(2.0, load=0.0, queue_len=0) == 0


@pytest.mark.parametrize("bad", [{"acc_max": 0.0}, {"acc_max": 1.2}, {"verify_s": -1.0},
                                 {"acc_samples_scale": 0.0}, {"label_share_full": 0.0}])
def test_cost_model_refuses_impossible_constants(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CostModel(**bad)


# ---- expected accuracy -------------------------------------------------------------------------
def test_expected_accuracy_starts_at_chance_and_saturates_at_the_scaled_ceiling():
    c = CostModel(acc_max=0.9, acc_samples_scale=800.0, acc_distinct_half=6.0)
    assert expected_accuracy(0, 1.0, c) == pytest.approx(0.1)
    assert expected_accuracy(1e7, 1.0, c) == pytest.approx(0.9)
    assert expected_accuracy(1e7, 0.5, c) == pytest.approx(0.45)
    assert expected_accuracy(1e7, 1.0, c, distinct=6) == pytest.approx(0.45)
    assert expected_accuracy(800, 1.0, c) == pytest.approx(0.1 + 0.8 * (1 - math.exp(-1)))
    assert expected_accuracy(1e7, 1.0, c, n_classes=4) == pytest.approx(0.9)
    assert expected_accuracy(0, 1.0, c, n_classes=4) == pytest.approx(0.25)


@given(st.floats(0, 20000), st.floats(0, 20000), st.floats(0, 1), st.floats(0, 1), st.integers(1, 5000))
def test_expected_accuracy_rises_with_samples_and_coverage(n1, n2, c1, c2, m):
    lo_n, hi_n = sorted((n1, n2))
    lo_c, hi_c = sorted((c1, c2))
    hi_acc = expected_accuracy(hi_n, hi_c, COST, distinct=m)
    if hi_c * COST.acc_max * m / (m + COST.acc_distinct_half) >= 0.1:  # above chance, more is better
        assert expected_accuracy(lo_n, hi_c, COST, distinct=m) <= hi_acc + 1e-12
    assert expected_accuracy(hi_n, lo_c, COST, distinct=m) <= hi_acc + 1e-12
    assert expected_accuracy(hi_n, hi_c, COST, distinct=m) <= expected_accuracy(hi_n, hi_c, COST) + 1e-12


@given(st.floats(0.11, 0.95), st.floats(0.05, 1), st.none() | st.integers(1, 5000))
def test_samples_needed_inverts_expected_accuracy(target, cov, m):
    n = samples_needed(target, cov, COST, distinct=m)
    if math.isinf(n):
        assert expected_accuracy(1e9, cov, COST, distinct=m) <= target + 1e-9
    else:
        assert expected_accuracy(n, cov, COST, distinct=m) == pytest.approx(target, abs=1e-9)
        assert expected_accuracy(n * 0.99, cov, COST, distinct=m) < target
    assert samples_needed(0.05, cov, COST) == 0


def test_label_coverage_weighs_a_label_by_its_share():
    c = CostModel(label_share_full=0.2)
    assert label_coverage([30] * 10, c) == 1.0
    assert label_coverage([30] * 8 + [0, 0], c) == pytest.approx(0.8)
    # 1 sample of label 9 among 271: 1/271 of the data, 0.02 of the 0.02 a full label needs
    assert label_coverage([30] * 9 + [1], c) == pytest.approx(0.9 + 0.1 * (1 / 271) / 0.02)
    assert label_coverage([5, 0, 0, 0], c, n_classes=10) == pytest.approx(0.1)
    assert label_coverage([0] * 10, c) == 0.0


def test_the_array_version_agrees_with_the_scalar_one():
    rng = np.random.default_rng(3)
    hists = rng.integers(0, 50, size=(40, 10)) * (rng.random((40, 10)) < 0.6)
    seen = rng.uniform(0, 5000, 40)
    distinct = hists.sum(axis=1)
    rows = expected_accuracy_rows(seen, hists, distinct, COST)
    for i in range(40):
        want = expected_accuracy(seen[i], label_coverage(list(hists[i]), COST), COST, 10, int(distinct[i]))
        assert rows[i] == pytest.approx(want, abs=1e-12)


# ---- reasons ----------------------------------------------------------------------------------
def test_reason_wording():
    assert human_bytes(12_100_000) == "12.1 MB" and human_bytes(5_000_000) == "5 MB"
    assert human_bytes(20_293) == "20.3 kB" and human_bytes(512) == "512 B"
    assert labels_phrase([9]) == "label 9" and labels_phrase([9, 7]) == "labels 7 and 9"
    assert labels_phrase([3, 9, 7]) == "labels 3, 7 and 9"
    out = verdict(target=0.85, deadline_s=300, byte_budget=5_000_000, max_laps=10, est_seconds=410.2,
                  est_bytes=12_100_000, reaches_target=False, expected_acc=0.7149, unheld_labels=[7, 9],
                  unvisited_labels=[3])
    assert out == ["labels 7 and 9 are held by no reachable data node",
                   "the plan reaches no holder of label 3 before the target is expected",
                   "expected accuracy 0.71 after 10 laps stays below the target 0.85",
                   "estimated 410 s exceeds the deadline of 300 s",
                   "the plan moves 12.1 MB, over the byte budget of 5 MB"]
    assert verdict(target=0.85, deadline_s=300, byte_budget=None, max_laps=1, est_seconds=2.5,
                   est_bytes=10**9, reaches_target=True, expected_acc=0.9, unheld_labels=[1]) == [
        "label 1 is held by no reachable data node"]
    assert verdict(target=0.8, deadline_s=3, byte_budget=None, max_laps=1, est_seconds=4.25, est_bytes=0,
                   reaches_target=True, expected_acc=0.9) == ["estimated 4.2 s exceeds the deadline of 3 s"]


# ---- assess ------------------------------------------------------------------------------------
def test_assess_feasible_carries_the_plan_and_its_estimates():
    snap = snapshot_of(line(), {"h2": data(3000), "h4": data(500, capacity=0.0)})
    a = assess(req(target_accuracy=0.7), snap, 100.0, get_policy("greedy"), COST)
    assert a.feasible and a.plan is not None and a.plan.itinerary() == ["h2"]
    assert (a.est_seconds, a.est_bytes, a.expected_accuracy) == (a.plan.est_seconds, a.plan.est_bytes,
                                                                 a.plan.expected_accuracy)
    assert a.reasons == ["h4 holds data but has no compute"]
    assert a.expected_accuracy >= 0.7


def test_assess_infeasible_keeps_the_best_plan_and_says_why():
    snap = snapshot_of(line(), {"h2": data(3000, range(8))})
    a = assess(req(target_accuracy=0.85, required_labels=(9,)), snap, 100.0, SearchPolicy(), COST)
    assert not a.feasible
    assert a.reasons[:2] == ["label 9 is held by no reachable data node",
                             "expected accuracy 0.72 after 10 laps stays below the target 0.85"]
    assert a.plan is not None and a.plan.itinerary() == ["h2"]
    none = assess(req(), snapshot_of(line(), {}), 100.0, NaiveRandom(), COST)
    assert not none.feasible and none.plan is None
    assert none.reasons == ["no data node that is up has both data and compute"]


def test_assess_uses_the_calibrated_defaults_without_a_cost_model():
    snap = snapshot_of(line(), {"h2": data(3000)})
    a = assess(req(target_accuracy=0.7), snap, 100.0, get_policy("greedy"))
    assert a.plan.stops[0].est_train_s == pytest.approx(3000 * CostModel().train_s_per_sample_epoch)


def test_assessment_json_round_trip():
    snap = snapshot_of(line(), {"h2": data(300), "h3": data(800, [1, 2, 3])})
    for r in (req(target_accuracy=0.8), req(target_accuracy=0.99, byte_budget=1)):
        a = assess(r, snap, 100.0, get_policy("search"), COST)
        d = json.loads(json.dumps(a.to_dict()))
        assert d == a.to_dict()
        assert Assessment.from_dict(d) == a


def test_request_validation_names_the_field():
    with pytest.raises(ValueError, match="model_bytes"):
        TrainingRequest(1, "h1", 0, 0.8, 10.0)
    with pytest.raises(ValueError, match="target_accuracy"):
        TrainingRequest(1, "h1", 10, 1.5, 10.0)
    with pytest.raises(ValueError, match="max_laps"):
        TrainingRequest(1, "h1", 10, 0.5, 10.0, max_laps=0)
    assert TrainingRequest(1, "h1", 10, 0.5, 10.0, required_labels=[3, 1], exclude={"h2"}).required_labels == (3, 1)


# ---- calibration ---------------------------------------------------------------------------------
def test_calibration_measures_this_machine_near_the_defaults():
    got = calibrate_training(repeats=1, evals=2, max_samples=200)
    assert got["samples"] == 200 and got["model_bytes"] > 19_240  # the MLP's parameters and more
    d = CostModel()
    # a guard against unit slips (ms for s), not a benchmark: machines differ by a few x
    assert d.train_s_per_sample_epoch / 10 < got["train_s_per_sample_epoch"] < d.train_s_per_sample_epoch * 10
    assert d.verify_s / 10 < got["verify_s"] < d.verify_s * 10
    assert dataclasses.replace(d, **{k: got[k] for k in ("train_s_per_sample_epoch", "verify_s")})


def test_infeasible_reasons_name_the_binding_constraint():
    """A deadline that cuts the trip short is reported as the deadline (how long reaching
    the target takes), not as the quick plan's accuracy; a target the network cannot
    reach at all is reported with the best accuracy it can get, and that plan is shown."""
    snap = snapshot_of(line(), {"h2": data(300, range(5)), "h3": data(800, range(5, 10)),
                                "h4": data(600, [1, 2, 3])})
    for pol in ("greedy", "search"):
        ok = assess(req(target_accuracy=0.8, deadline_s=100.0), snap, 100.0, get_policy(pol), COST)
        assert ok.feasible
        late = assess(req(target_accuracy=0.8, deadline_s=ok.est_seconds / 2), snap, 100.0, get_policy(pol), COST)
        assert not late.feasible
        assert late.reasons[0].startswith("reaching the target 0.8 is expected to take ")
        assert f"over the deadline of {ok.est_seconds / 2:g} s" in late.reasons[0]
        assert not any("stays below" in r for r in late.reasons)
        assert late.plan.itinerary() == ok.plan.itinerary()
        heavy = assess(req(target_accuracy=0.8, byte_budget=ok.est_bytes // 2), snap, 100.0, get_policy(pol), COST)
        assert not heavy.feasible and "over the byte budget" in heavy.reasons[0]
        never = assess(req(target_accuracy=0.9, deadline_s=10.0), snap, 100.0, get_policy(pol), COST)
        assert not never.feasible
        assert never.reasons[0].startswith("expected accuracy at best 0.897 (")
        assert "even without deadline and byte budget" in never.reasons[0]
        assert len(never.plan.itinerary()) == 3  # every stop: the closest it gets, not the quickest


def test_accuracy_in_reasons_never_rounds_up_to_the_target():
    out = verdict(target=0.9, deadline_s=10, byte_budget=None, max_laps=10, est_seconds=1, est_bytes=0,
                  reaches_target=False, expected_acc=0.8996)
    assert out == ["expected accuracy 0.8996 after 10 laps stays below the target 0.9"]
