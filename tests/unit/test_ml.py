"""Unit tests for the ML core: partitioning, state serialisation and sequential model-follow-data training."""

import numpy as np
import pytest
import torch

from nodes.data import (
    DataError,
    label_histogram,
    load_dataset,
    make_shards,
    partition_indices,
    verification_set,
)
from nodes.model import (
    bytes_to_state,
    build_mlp,
    evaluate,
    param_bytes,
    state_digest,
    state_to_bytes,
    train_local,
)

torch.set_num_threads(1)

NODES = ["d1", "d2", "d3", "d4"]
DIRICHLET = {"partition": "dirichlet", "alpha": 0.3}


def load_digits_split(verification_fraction=0.25, seed=0):
    ds = load_dataset({"verification_fraction": verification_fraction}, seed)
    return ds.train_X, ds.train_y, ds.verif_X, ds.verif_y


def dirichlet_partition(labels, n_parts, alpha, seed, min_size=10):
    return partition_indices(labels, n_parts, {"alpha": alpha, "min_samples_per_node": min_size}, seed)


def iid_partition(n, n_parts, seed):
    return partition_indices(np.zeros(n, dtype=np.int64), n_parts, {"partition": "iid"}, seed)


def shards_and_verification(nodes, d, seed):
    shards, ds = make_shards(nodes, d, seed)
    return (shards, *verification_set(ds, d, seed))


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def _mean_entropy(labels, parts):
    entropies = []
    for idx in parts:
        p = np.array(label_histogram(labels[idx]), dtype=float)
        p = p[p > 0] / p.sum()
        entropies.append(-(p * np.log(p)).sum())
    return float(np.mean(entropies))


def test_digits_split_is_stratified_scaled_and_deterministic():
    tx, ty, vx, vy = load_digits_split(0.25, seed=0)
    assert len(ty) + len(vy) == 1797 and tx.shape[1] == 64
    assert tx.dtype == np.float32 and 0.0 <= tx.min() and tx.max() <= 1.0
    assert set(vy.tolist()) == set(range(10))
    assert abs(len(vy) / 1797 - 0.25) < 0.01
    again = load_digits_split(0.25, seed=0)
    assert np.array_equal(tx, again[0]) and np.array_equal(vy, again[3])


@pytest.mark.parametrize("kind", ["iid", "dirichlet"])
def test_partitions_cover_every_index_once_and_are_deterministic(kind):
    _, ty, _, _ = load_digits_split()
    make = {
        "iid": lambda seed: iid_partition(len(ty), 4, seed),
        "dirichlet": lambda seed: dirichlet_partition(ty, 4, 0.3, seed),
    }[kind]
    parts = make(7)
    _assert_exact_cover(parts, len(ty))
    assert all(len(p) >= 10 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, make(7)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, make(8)))


def test_dirichlet_small_alpha_is_more_skewed_than_iid():
    _, ty, _, _ = load_digits_split()
    for seed in range(3):
        skewed = _mean_entropy(ty, dirichlet_partition(ty, 4, 0.1, seed))
        uniform = _mean_entropy(ty, iid_partition(len(ty), 4, seed))
        assert uniform > np.log(10) - 0.05
        assert skewed < uniform - 0.5


def test_dirichlet_impossible_min_size_raises():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match="needs 60 but the training pool holds 50"):
        dirichlet_partition(labels, 10, 0.3, seed=0, min_size=6)
    with pytest.raises(DataError, match="attempts"):
        # Tiny alpha puts each 5-sample class whole on one part, so four parts of >= 12 would need 60.
        dirichlet_partition(labels, 4, 0.001, seed=0, min_size=12)


def test_make_shards_is_deterministic_and_keyed_by_node():
    shards, vx, vy = shards_and_verification(NODES, DIRICHLET, seed=3)
    again, vx2, _ = shards_and_verification(NODES, DIRICHLET, seed=3)
    assert list(shards) == NODES and all(shards[n].node == n for n in NODES)
    assert sum(len(s.y) for s in shards.values()) + len(vy) == 1797
    assert all(np.array_equal(shards[n].X, again[n].X) for n in NODES)
    assert np.array_equal(vx, vx2)
    with pytest.raises(DataError, match="unknown partition kind"):
        make_shards(NODES, {"partition": "zipf"}, seed=0)


def test_state_round_trip_reproduces_predictions_and_digest():
    _, _, vx, vy = load_digits_split()
    src = build_mlp(seed=1)
    train_local(src, vx[:200], vy[:200], epochs=1, seed=0)
    data = state_to_bytes(src)
    dst = bytes_to_state(build_mlp(seed=2), data)
    x = torch.as_tensor(vx)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert state_digest(state_to_bytes(dst)) == state_digest(data)
    assert len(state_digest(data)) == 64


def test_build_is_seeded_and_param_bytes_scale_with_width():
    assert state_digest(state_to_bytes(build_mlp(seed=5))) == state_digest(state_to_bytes(build_mlp(seed=5)))
    assert state_digest(state_to_bytes(build_mlp(seed=5))) != state_digest(state_to_bytes(build_mlp(seed=6)))
    small, wide = param_bytes(build_mlp(hidden=(128,))), param_bytes(build_mlp(hidden=(256,)))
    assert small == 4 * (64 * 128 + 128 + 128 * 10 + 10)
    assert 1.9 < wide / small < 2.1
    assert param_bytes(build_mlp(hidden=(2048, 2048, 2048))) > 30_000_000


def test_train_local_is_deterministic_and_evaluate_reports_per_class():
    shards, vx, vy = shards_and_verification(NODES, DIRICHLET, seed=0)
    shard = shards["d1"]
    runs = []
    for _ in range(2):
        model = build_mlp(seed=0)
        stats = train_local(model, shard.X, shard.y, epochs=2, seed=4)
        runs.append(state_to_bytes(model))
    assert runs[0] == runs[1]
    assert stats["epochs"] == 2 and stats["samples"] == len(shard.y) and stats["loss"] > 0
    assert stats["seconds"] >= 0
    report = evaluate(model, shard.X, shard.y)
    assert report["samples"] == len(shard.y) and 0.0 <= report["accuracy"] <= 1.0
    hist = label_histogram(shard.y)
    assert [acc is None for acc in report["per_class_accuracy"]] == [h == 0 for h in hist]


def hops_to_target(seed, target=0.85, max_laps=4):
    """Visit the data nodes in order, one local epoch per stop; return the first hop reaching target."""
    shards, vx, vy = shards_and_verification(NODES, DIRICHLET, seed=seed)
    model = build_mlp(hidden=(64,), seed=seed)
    for hop in range(1, max_laps * len(NODES) + 1):
        shard = shards[NODES[(hop - 1) % len(NODES)]]
        train_local(model, shard.X, shard.y, epochs=1, seed=seed * 1000 + hop)
        if evaluate(model, vx, vy)["accuracy"] >= target:
            return hop
    return None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequential_training_over_dirichlet_shards_reaches_target(seed):
    hops = hops_to_target(seed)
    assert hops is not None, f"seed {seed}: verification accuracy stayed below 0.85 for 4 laps"


def test_capacity_throttles_training_to_the_declared_speed():
    """At capacity c the node idles (1/c - 1) x its compute time: total/compute ~ 1/c."""
    import numpy as np
    from nodes.model import build_mlp, train_local
    rng = np.random.default_rng(0)
    X, y = rng.random((400, 64), dtype=np.float32), rng.integers(0, 10, 400)
    full = train_local(build_mlp(seed=0), X, y, batch_size=4, capacity=1.0)
    assert full["throttled_seconds"] == 0
    half = train_local(build_mlp(seed=0), X, y, batch_size=4, capacity=0.25)
    ratio = (half["compute_seconds"] + half["throttled_seconds"]) / half["compute_seconds"]
    assert 3.6 <= ratio <= 4.4, half
    assert half["seconds"] >= half["compute_seconds"] + half["throttled_seconds"] * 0.95


def test_capacity_out_of_range_is_refused():
    import pytest
    from nodes.model import Throttle
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="capacity"):
            Throttle(bad)
