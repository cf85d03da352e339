"""Unit tests for nodes.data: data sets (torchvision layouts written here), partitions, verification set, noisy histograms."""

import gzip
import hashlib
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nodes.data import (
    DataError,
    label_histogram,
    load_dataset,
    make_shards,
    noisy_histogram,
    partition_indices,
    verification_set,
)

REPO = Path(__file__).resolve().parents[2]
KINDS = ["iid", "dirichlet", "k_labels", "quantity_skew"]
# 5000 labels, 500 of each class, in a seeded shuffled order.
POOL = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 500))


def _entropy(labels):
    p = np.array(label_histogram(labels), dtype=float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def _mean_entropy(labels, parts):
    return float(np.mean([_entropy(labels[idx]) for idx in parts]))


# ---------------------------------------------------------------- partitions

@pytest.mark.parametrize("kind", KINDS)
def test_partition_is_disjoint_sorted_covers_the_pool_and_respects_min(kind):
    parts = partition_indices(POOL, 5, {"partition": kind, "min_samples_per_node": 50}, seed=1)
    assert len(parts) == 5
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(POOL)))  # disjoint and complete
    assert min(len(p) for p in parts) >= 50


@pytest.mark.parametrize("kind", KINDS)
def test_partition_is_deterministic_and_depends_on_seed(kind):
    d = {"partition": kind}
    a, b, c = (partition_indices(POOL, 4, d, s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_near_equal_and_labels_balanced():
    parts = partition_indices(POOL, 7, {"partition": "iid"}, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _mean_entropy(POOL, parts) > np.log(10) - 0.02


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    for seed in range(3):
        skewed = _mean_entropy(POOL, partition_indices(POOL, 6, {"alpha": 0.1}, seed))
        mild = _mean_entropy(POOL, partition_indices(POOL, 6, {"alpha": 100.0}, seed))
        assert mild > np.log(10) - 0.05
        assert skewed < mild - 0.7


@pytest.mark.parametrize("n_parts,k", [(5, 2), (4, 3), (10, 1), (3, 4), (7, 10)])
def test_k_labels_gives_exactly_k_labels_and_every_label_is_held(n_parts, k):
    parts = partition_indices(POOL, n_parts, {"partition": "k_labels", "labels_per_node": k}, seed=2)
    held = [set(np.unique(POOL[p]).tolist()) for p in parts]
    assert [len(h) for h in held] == [k] * n_parts
    assert set().union(*held) == set(range(10))


def test_k_labels_with_too_few_slots_holds_only_some_labels():
    parts = partition_indices(POOL, 3, {"partition": "k_labels", "labels_per_node": 2}, seed=0)
    held = set().union(*(np.unique(POOL[p]).tolist() for p in parts))
    assert len(held) == 6  # 3 nodes x 2 labels; the other labels' samples stay unused
    assert sum(len(p) for p in parts) == 6 * 500


def test_k_labels_rejects_more_labels_than_the_pool_has():
    with pytest.raises(DataError, match=r"data\.labels_per_node: must lie in 1\.\.10"):
        partition_indices(POOL, 2, {"partition": "k_labels", "labels_per_node": 11}, seed=0)


def test_quantity_skew_sizes_spread_with_sigma_while_labels_stay_iid():
    def spread(sigma):  # mean coefficient of variation of node sizes over seeds
        cvs = []
        for seed in range(10):
            sizes = [len(p) for p in partition_indices(POOL, 8, {"partition": "quantity_skew",
                                                                 "skew_sigma": sigma}, seed)]
            cvs.append(np.std(sizes) / np.mean(sizes))
        return float(np.mean(cvs))

    flat, mild, wild = spread(0.0), spread(0.5), spread(2.0)
    assert flat < 0.01 and flat < mild - 0.2 and mild < wild - 0.3
    parts = partition_indices(POOL, 8, {"partition": "quantity_skew", "skew_sigma": 2.0}, seed=0)
    big = [p for p in parts if len(p) >= 300]
    assert big and _mean_entropy(POOL, big) > np.log(10) - 0.05


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_nodes_for_the_min_size_is_a_clear_error(kind):
    with pytest.raises(DataError) as e:
        partition_indices(POOL, 11, {"partition": kind, "min_samples_per_node": 500}, seed=0)
    assert e.value.field == "data.min_samples_per_node"
    assert "needs 5500" in str(e.value) and "fewer data nodes" in str(e.value)


def test_min_size_enforced_for_hopeless_dirichlet_and_k_labels():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match=r"data\.alpha: .* 1000 attempts; raise data\.alpha"):
        # Tiny alpha puts each 5-sample class whole on one node, so 4 nodes of >= 12 would need 60.
        partition_indices(labels, 4, {"alpha": 0.001, "min_samples_per_node": 12}, seed=0)
    rare = np.concatenate([np.zeros(100, np.int64), np.ones(5, np.int64)])
    with pytest.raises(DataError, match=r"data\.min_samples_per_node: k_labels gave node \d only 5"):
        partition_indices(rare, 2, {"partition": "k_labels", "labels_per_node": 1}, seed=0)


def test_quantity_skew_never_goes_below_min_size():
    for seed in range(20):
        parts = partition_indices(POOL, 10, {"partition": "quantity_skew", "skew_sigma": 3.0,
                                             "min_samples_per_node": 400}, seed)
        assert min(len(p) for p in parts) >= 400


def test_bad_spec_keys_and_names_are_errors_naming_the_field():
    with pytest.raises(DataError, match=r"data\.partitions: unknown key"):
        partition_indices(POOL, 2, {"partitions": "iid"}, seed=0)
    with pytest.raises(DataError, match=r"data\.verification\.label: unknown key"):
        verification_set(load_dataset({}, 0), {"verification": {"label": [1]}}, seed=0)
    with pytest.raises(DataError, match=r"data\.partition: unknown partition kind 'zipf'"):
        partition_indices(POOL, 2, {"partition": "zipf"}, seed=0)
    with pytest.raises(DataError, match=r"data\.dataset: unknown data set 'imagenet'"):
        load_dataset({"dataset": "imagenet"}, seed=0)


# ---------------------------------------------------------------- scikit-learn data sets

def test_digits_is_scaled_split_and_shaped():
    ds = load_dataset({}, seed=0)
    assert (ds.name, ds.n_classes, ds.sample_shape, ds.in_features) == ("digits", 10, (8, 8), 64)
    assert len(ds.train_y) + len(ds.verif_y) == 1797 and abs(len(ds.verif_y) / 1797 - 0.25) < 0.01
    assert ds.train_X.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert ds.train_X.min() == 0.0 and ds.train_X.max() == 1.0


def test_synthetic_honours_samples_features_classes():
    d = {"dataset": "synthetic", "verification_fraction": 0.2,
         "synthetic": {"samples": 300, "features": 12, "classes": 4}}
    ds = load_dataset(d, seed=5)
    assert (ds.n_classes, ds.sample_shape, ds.in_features) == (4, (12,), 12)
    assert ds.train_X.shape == (240, 12) and ds.verif_X.shape == (60, 12)
    assert ds.train_X.dtype == np.float32
    assert set(ds.train_y.tolist()) == set(ds.verif_y.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(ds.train_X, load_dataset(d, seed=5).train_X)
    assert not np.array_equal(ds.train_X, load_dataset(d, seed=6).train_X)


def test_synthetic_with_too_few_features_for_the_classes_is_an_error():
    with pytest.raises(DataError, match=r"data\.synthetic\.features: 10 classes need at least 4"):
        load_dataset({"dataset": "synthetic", "synthetic": {"features": 3}}, seed=0)


def test_max_samples_caps_the_training_pool_stratified():
    full = load_dataset({}, seed=0)
    ds = load_dataset({"max_samples": 200}, seed=0)
    assert len(ds.train_y) == 200 and np.array_equal(ds.verif_y, full.verif_y)
    expected = np.array(label_histogram(full.train_y)) * 200 / len(full.train_y)
    assert np.all(np.abs(np.array(label_histogram(ds.train_y)) - expected) < 1)
    assert not np.array_equal(ds.train_y, load_dataset({"max_samples": 200}, seed=1).train_y)


def test_make_shards_keys_by_node_and_returns_the_data_set():
    nodes = ["d1", "d2", "d3"]
    shards, ds = make_shards(nodes, {"dataset": "synthetic", "partition": "iid"}, seed=0)
    assert list(shards) == nodes and all(shards[n].node == n for n in nodes)
    assert sum(len(s.y) for s in shards.values()) == len(ds.train_y)
    assert all(s.X.shape[1] == ds.in_features for s in shards.values())
    with pytest.raises(DataError, match="repeat"):
        make_shards(["d1", "d1"], {}, seed=0)


def _digest(shards, verif):
    h = hashlib.sha256()
    for s in shards.values():
        h.update(s.node.encode() + s.X.tobytes() + s.y.tobytes())
    for a in verif:
        h.update(a.tobytes())
    return h.hexdigest()


DETERMINISM_SPEC = {"dataset": "synthetic", "partition": "k_labels", "labels_per_node": 3,
                    "max_samples": 1200, "verification": {"samples": 101, "labels": [0, 2, 4, 6]}}


def test_shards_and_verification_set_are_byte_identical_in_another_process():
    shards, ds = make_shards(["a", "b", "c", "d"], DETERMINISM_SPEC, seed=9)
    here = _digest(shards, verification_set(ds, DETERMINISM_SPEC, seed=9))
    code = ("import sys; sys.path.insert(0, 'tests/unit'); import test_data as t;"
            "s, ds = t.make_shards(['a', 'b', 'c', 'd'], t.DETERMINISM_SPEC, seed=9);"
            "print(t._digest(s, t.verification_set(ds, t.DETERMINISM_SPEC, seed=9)))")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other == here


# ---------------------------------------------------------------- torchvision layouts, written here

def _idx_bytes(array):
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.astype(np.uint8).tobytes()


def _write_idx_dataset(raw: Path, seed: int, n_train=30, n_test=12, gzip_train_images=True):
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10}
    for name, a in arrays.items():
        if name == "train-images-idx3-ubyte" and gzip_train_images:
            (raw / (name + ".gz")).write_bytes(gzip.compress(_idx_bytes(a)))
        else:
            (raw / name).write_bytes(_idx_bytes(a))
    return arrays


@pytest.fixture
def mnist_root(tmp_path):
    return tmp_path, _write_idx_dataset(tmp_path / "MNIST" / "raw", seed=1)


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_dataset_loads_with_shapes_labels_and_values(tmp_path, dataset, folder):
    arrays = _write_idx_dataset(tmp_path / folder / "raw", seed=len(folder))
    ds = load_dataset({"dataset": dataset, "root": str(tmp_path)}, seed=0)
    assert (ds.name, ds.n_classes, ds.sample_shape, ds.in_features) == (dataset, 10, (1, 28, 28), 784)
    assert ds.train_X.shape == (30, 784) and ds.verif_X.shape == (12, 784)  # the test split verifies
    assert ds.train_X.dtype == np.float32 and ds.train_y.dtype == np.int64
    assert np.array_equal(ds.train_X, (arrays["train-images-idx3-ubyte"].reshape(30, -1) / 255).astype(np.float32))
    assert np.array_equal(ds.verif_X * 255, arrays["t10k-images-idx3-ubyte"].reshape(12, -1).astype(np.float32))
    assert np.array_equal(ds.train_y, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.verif_y, arrays["t10k-labels-idx1-ubyte"])


def test_root_may_name_the_dataset_folder_itself(mnist_root):
    root, arrays = mnist_root
    for where in (root / "MNIST", root / "MNIST" / "raw"):
        ds = load_dataset({"dataset": "mnist", "root": str(where)}, seed=0)
        assert np.array_equal(ds.train_y, arrays["train-labels-idx1-ubyte"])
    with pytest.raises(DataError, match="no train-images-idx3-ubyte under"):  # MNIST files are not FashionMNIST
        load_dataset({"dataset": "fashion_mnist", "root": str(root / "MNIST")}, seed=0)


def test_idx_dataset_needs_a_root_that_exists(tmp_path):
    with pytest.raises(DataError, match=r"data\.root: .*set data\.root"):
        load_dataset({"dataset": "mnist"}, seed=0)
    with pytest.raises(DataError, match=r"data\.root: .*nowhere is not a directory"):
        load_dataset({"dataset": "mnist", "root": str(tmp_path / "nowhere")}, seed=0)


def _truncate(p):
    p.write_bytes(p.read_bytes()[:-7])


def _bad_magic(p):
    p.write_bytes(b"\x08\x03\x00\x00" + p.read_bytes()[4:])


def _bad_gzip(p):
    p.write_bytes(b"\x1f\x8b" + b"not really gzip" * 3)


def _more_labels(p):
    p.write_bytes(_idx_bytes(np.arange(31) % 10))


@pytest.mark.parametrize("name,damage,says", [
    ("t10k-labels-idx1-ubyte", Path.unlink, "is missing"),
    ("train-labels-idx1-ubyte", _truncate, "truncated or corrupt"),
    ("t10k-images-idx3-ubyte", _bad_magic, "bad magic number"),
    ("train-images-idx3-ubyte.gz", _bad_gzip, "cannot be read"),
    ("train-labels-idx1-ubyte", _more_labels, "30 images but 31 labels"),
])
def test_damaged_idx_files_are_errors_naming_the_file(mnist_root, name, damage, says):
    root, _ = mnist_root
    damage(root / "MNIST" / "raw" / name)
    with pytest.raises(DataError) as e:
        load_dataset({"dataset": "mnist", "root": str(root)}, seed=0)
    stem = name.removesuffix(".gz") if says != "30 images but 31 labels" else "MNIST/raw"
    assert e.value.field == "data.root" and stem in str(e.value) and says in str(e.value)


def _write_cifar(folder: Path, per_batch=4, n_test=6):
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    return batches


def test_cifar10_loads_with_shapes_labels_and_values(tmp_path):
    b = _write_cifar(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset({"dataset": "cifar10", "root": str(root)}, seed=0)
        assert (ds.n_classes, ds.sample_shape, ds.in_features) == (10, (3, 32, 32), 3072)
        assert ds.train_X.shape == (20, 3072) and ds.verif_X.shape == (6, 3072)
        train = np.concatenate([b[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
        assert np.array_equal(ds.train_X, (train / 255).astype(np.float32))
        assert ds.train_y.tolist() == sum((b[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
        assert ds.verif_y.tolist() == b["test_batch"][b"labels"]


@pytest.mark.parametrize("name,damage,says", [
    ("data_batch_3", Path.unlink, "is missing"),
    ("test_batch", lambda p: p.write_bytes(b"garbage"), "not a readable CIFAR-10 batch"),
    ("data_batch_5", lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})),
     "lacks b'data' or b'labels'"),
    ("data_batch_1", lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                           b"labels": [0, 1]})), "expected uint8 N x 3072"),
])
def test_damaged_cifar_batches_are_errors_naming_the_file(tmp_path, name, damage, says):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    damage(tmp_path / "cifar-10-batches-py" / name)
    with pytest.raises(DataError) as e:
        load_dataset({"dataset": "cifar10", "root": str(tmp_path)}, seed=0)
    assert e.value.field == "data.root" and name in str(e.value) and says in str(e.value)


# ---------------------------------------------------------------- verification set

def test_verification_set_defaults_to_the_whole_held_out_split():
    ds = load_dataset({}, seed=0)
    X, y = verification_set(ds, {}, seed=0)
    assert X is ds.verif_X and y is ds.verif_y


def test_verification_set_honours_label_subset_and_stratified_sample_cap():
    ds = load_dataset({}, seed=0)
    X, y = verification_set(ds, {"verification": {"labels": [1, 3]}}, seed=0)
    assert set(y.tolist()) == {1, 3} and len(y) == int(np.isin(ds.verif_y, [1, 3]).sum())
    X, y = verification_set(ds, {"verification": {"samples": 50}}, seed=0)
    assert X.shape == (50, 64) and all(4 <= h <= 6 for h in label_histogram(y))
    X, y = verification_set(ds, {"verification": {"samples": 7, "labels": [2, 5, 8]}}, seed=0)
    assert len(y) == 7 and set(y.tolist()) == {2, 5, 8}
    again = verification_set(ds, {"verification": {"samples": 7, "labels": [2, 5, 8]}}, seed=0)
    assert np.array_equal(X, again[0])
    with pytest.raises(DataError, match=r"data\.verification\.labels: .*0\.\.9"):
        verification_set(ds, {"verification": {"labels": [3, 10]}}, seed=0)


# ---------------------------------------------------------------- noisy histograms

def test_noisy_histogram_without_epsilon_is_exact():
    rng = np.random.default_rng(0)
    assert noisy_histogram([3, 0, 7], None, rng) == [3, 0, 7]
    assert noisy_histogram([3, 0, 7], 0, rng) == [3, 0, 7]


def test_noisy_histogram_error_is_about_one_over_epsilon_and_never_negative():
    rng = np.random.default_rng(0)
    exact = [1000] * 10
    mae = {}
    for eps in (0.1, 1.0):
        draws = np.array([noisy_histogram(exact, eps, rng) for _ in range(2000)])
        mae[eps] = float(np.abs(draws - 1000).mean())
    # Rounding shaves E|round(L)| below 1/eps a little: about 0.96 at scale 1.
    assert mae[0.1] == pytest.approx(10.0, rel=0.05)
    assert mae[1.0] == pytest.approx(1.0, rel=0.08)
    zeros = np.array([noisy_histogram([0, 1, 2], 0.05, rng) for _ in range(500)])
    assert zeros.min() == 0 and zeros.dtype == np.int64 and zeros.max() > 5


def test_noisy_histogram_is_reproducible_from_the_generator():
    a = noisy_histogram([50] * 10, 0.5, np.random.default_rng(7))
    b = noisy_histogram([50] * 10, 0.5, np.random.default_rng(7))
    assert a == b and a != [50] * 10
