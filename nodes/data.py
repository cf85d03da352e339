"""Data sets of the terminal layer: load one, split it over the data nodes, cut the MPVU's verification set.

Everything takes the spec's ``data:`` section as a plain dict ``d`` (see
:data:`DEFAULTS`) and a ``seed``; the same ``(d, seed)`` gives byte-identical
results in every process, so each forked data node can call :func:`make_shards`
and keep only its own shard, and the MPVU can call :func:`verification_set`.
The node launcher calls :func:`preload` before it forks: :func:`load_dataset` and
:func:`make_shards` then return the parent's arrays, which the children share
copy-on-write instead of each loading the whole data set (and keeping its heap).

Data sets: ``digits`` and ``synthetic`` (scikit-learn, split into training pool
and verification set by ``verification_fraction``), and ``mnist``,
``fashion_mnist``, ``cifar10`` read from ``root`` in torchvision's on-disk
layout (their test split is the verification set; torchvision is not needed).

Partitions: ``iid``, ``dirichlet`` (label skew), ``k_labels`` (each node holds
exactly k labels) and ``quantity_skew`` (lognormal node sizes, IID labels).

Errors: :class:`DataError` (a ``ValueError``) for anything wrong with the spec
or the files; ``str()`` reads 'FIELD: what went wrong; what to do'.
"""
from __future__ import annotations

import gzip
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_CLASSES = 10
MAX_DIRICHLET_ATTEMPTS = 1000

DEFAULTS = {
    "dataset": "digits",
    "root": None,
    "max_samples": None,
    "synthetic": {"samples": 2000, "features": 32, "classes": 10, "class_sep": 1.5},
    "partition": "dirichlet",
    "alpha": 0.3,
    "labels_per_node": 2,
    "skew_sigma": 1.0,
    "verification_fraction": 0.25,
    "min_samples_per_node": 10,
    "verification": {"samples": None, "labels": None},
}
DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10")
PARTITIONS = ("iid", "dirichlet", "k_labels", "quantity_skew")

# Independent random streams per purpose, so e.g. capping the verification set
# does not change the partition. Partitions use the bare seed (as before).
_SUBSAMPLE, _VERIFY = 1, 2


class DataError(ValueError):
    """The data spec or the files it points at are unusable: 'FIELD: what went wrong; what to do'."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self):  # survive pickling across processes despite the two-argument __init__
        return type(self), (self.field, self.reason)


@dataclass(eq=False)
class Dataset:
    """A training pool and a verification set; X is float32, flattened N x D; y is int64."""
    name: str
    train_X: np.ndarray = field(repr=False)
    train_y: np.ndarray = field(repr=False)
    verif_X: np.ndarray = field(repr=False)
    verif_y: np.ndarray = field(repr=False)
    n_classes: int
    sample_shape: tuple

    @property
    def in_features(self) -> int:
        return math.prod(self.sample_shape)


@dataclass
class Shard:
    node: str
    X: np.ndarray
    y: np.ndarray


# ---------------------------------------------------------------- spec dict

def _resolved(d: dict) -> dict:
    """d over DEFAULTS (missing keys filled, nested ones too); unknown keys are errors."""
    out = {}
    for key, value in d.items():
        if key not in DEFAULTS:
            raise DataError(f"data.{key}", f"unknown key; expected one of {', '.join(DEFAULTS)}")
        if isinstance(DEFAULTS[key], dict):
            value = value or {}
            for sub in value:
                if sub not in DEFAULTS[key]:
                    raise DataError(f"data.{key}.{sub}",
                                    f"unknown key; expected one of {', '.join(DEFAULTS[key])}")
            value = {**DEFAULTS[key], **value}
        out[key] = value
    return {**DEFAULTS, **out}


def _stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of n samples keeping label proportions (largest remainder).

    Written here because scikit-learn's stratified splitters refuse n below the
    number of classes, which a small verification cap may well be.
    """
    if n >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(take - quota, kind="stable")[: n - take.sum()]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


# ---------------------------------------------------------------- loading

# (kind, spec as JSON, seed[, data nodes]) -> what preload() computed; read by the children it forks
_preloaded: dict[tuple, object] = {}


def _key(kind: str, d: dict, seed: int, *rest) -> tuple:
    return (kind, json.dumps(_resolved(d), sort_keys=True, default=str), seed, *rest)


def preload(d: dict, seed: int, data_nodes: list[str] = ()) -> Dataset:
    """Load the data set (and cut every data node's shard) once, in a parent about to fork.

    Later calls of :func:`load_dataset` / :func:`make_shards` with the same arguments, in
    this process or a child forked from it, return these arrays: the children share
    their pages copy-on-write (nothing writes to them) instead of each holding a copy.
    The cached arrays must not be modified in place; everything here makes new ones."""
    ds = load_dataset(d, seed)
    _preloaded[_key("dataset", d, seed)] = ds
    if data_nodes:
        shards, _ = make_shards(list(data_nodes), d, seed)
        _preloaded[_key("shards", d, seed, tuple(data_nodes))] = shards
    return ds


def load_dataset(d: dict, seed: int) -> Dataset:
    """Load the data set named by d["dataset"], with the training pool capped at d["max_samples"]."""
    hit = _preloaded.get(_key("dataset", d, seed)) if _preloaded else None
    if hit is not None:
        return hit
    d = _resolved(d)
    name = d["dataset"]
    loader = {"digits": _load_digits, "synthetic": _load_synthetic, "mnist": _load_mnist,
              "fashion_mnist": _load_fashion_mnist, "cifar10": _load_cifar10}.get(name)
    if loader is None:
        raise DataError("data.dataset", f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    # Loaders return X in its stored dtype and the divisor to [0, 1], so the
    # cap is applied before an (up to 4x larger) float32 copy is made.
    tx, ty, vx, vy, n_classes, shape, scale = loader(d, seed)
    cap = d["max_samples"]
    if cap is not None:
        if cap < 1:
            raise DataError("data.max_samples", f"must be a positive number of samples or null, got {cap}")
        keep = _stratified_take(ty, cap, np.random.default_rng([seed, _SUBSAMPLE]))
        tx, ty = tx[keep], ty[keep]

    def floats(X):
        return (np.asarray(X, dtype=np.float32) / np.float32(scale)).reshape(len(X), -1)

    return Dataset(name, floats(tx), np.asarray(ty, dtype=np.int64), floats(vx),
                   np.asarray(vy, dtype=np.int64), n_classes, tuple(int(s) for s in shape))


def _split(X, y, d, seed):
    from sklearn.model_selection import train_test_split
    f = d["verification_fraction"]
    if not 0 < f < 1:
        raise DataError("data.verification_fraction", f"must lie strictly between 0 and 1, got {f}")
    try:
        tx, vx, ty, vy = train_test_split(X, y, test_size=f, stratify=y, random_state=seed)
    except ValueError as e:
        raise DataError("data.verification_fraction",
                        f"cannot hold out a stratified {f:.0%} of {len(y)} samples ({e}); "
                        "use more samples or a different fraction") from None
    return tx, ty, vx, vy


def _load_digits(d, seed):
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (*_split(digits.data, digits.target, d, seed), N_CLASSES, (8, 8), 16.0)


def _load_synthetic(d, seed):
    from sklearn.datasets import make_classification
    s = d["synthetic"]
    n, feats, classes = s["samples"], s["features"], s["classes"]
    if classes < 2 or feats < 1 or n < 2 * classes:
        raise DataError("data.synthetic", f"need classes >= 2, features >= 1 and samples >= 2 x classes; "
                                          f"got samples={n}, features={feats}, classes={classes}")
    # Half the features carry the signal (at least enough to place one cluster
    # per class on a hypercube vertex), a quarter are linear mixes of those,
    # the rest are noise.
    informative = max(math.ceil(math.log2(classes)), feats // 2)
    if informative > feats:
        raise DataError("data.synthetic.features",
                        f"{classes} classes need at least {informative} features, got {feats}; "
                        "raise data.synthetic.features or lower data.synthetic.classes")
    X, y = make_classification(n_samples=n, n_features=feats, n_informative=informative,
                               n_redundant=(feats - informative) // 2, n_classes=classes,
                               n_clusters_per_class=1, class_sep=s["class_sep"], random_state=seed)
    return (*_split(X.astype(np.float32), y, d, seed), classes, (feats,), 1.0)


def _dataset_dir(d, folder: str, probe: str) -> Path:
    """Where folder's files are: ROOT/<folder>[/raw], or ROOT itself if it is that folder."""
    root = d["root"]
    if root is None:
        raise DataError("data.root", f"data set {d['dataset']!r} is read from a local directory; set data.root "
                                     f"to the directory holding {folder} (torchvision's layout)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError("data.root", f"{root} is not a directory; point data.root at the directory "
                                     f"holding {folder}")
    sub = folder.split("/")
    candidates = [root.joinpath(*sub)]
    for depth in range(1, len(sub) + 1):  # root names the tail of the layout itself
        if root.parts[-depth:] == tuple(sub[:depth]):
            candidates.append(root.joinpath(*sub[depth:]))
    for c in candidates:
        if any(c.glob(probe + "*")):
            return c
    raise DataError("data.root", f"no {probe} under {root} (looked in {', '.join(map(str, candidates))}); "
                                 f"point data.root at the directory holding {folder}")


def _read_idx(directory: Path, name: str, ndim: int) -> np.ndarray:
    """One uint8 IDX file (name or name.gz), header checked against the data."""
    path = directory / name
    if not path.exists() and (directory / (name + ".gz")).exists():
        path = directory / (name + ".gz")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError("data.root", f"{path} is missing; restore it (torchvision's download writes it)") from None
    except (OSError, EOFError) as e:
        raise DataError("data.root", f"{path} cannot be read ({e}); download it again") from None
    bad = f"{path} is not a valid IDX file"
    if len(raw) < 4 + 4 * ndim or raw[:2] != b"\0\0":
        raise DataError("data.root", f"{bad} (bad magic number {raw[:4].hex()}); download it again")
    if raw[2] != 0x08 or raw[3] != ndim:
        raise DataError("data.root", f"{bad}: magic {raw[:4].hex()} says type 0x{raw[2]:02x} with {raw[3]} "
                                     f"dimensions, expected unsigned bytes (0x08) with {ndim}; download it again")
    dims = tuple(int(x) for x in np.frombuffer(raw, ">u4", ndim, offset=4))
    start = 4 + 4 * ndim
    if len(raw) - start != math.prod(dims):
        raise DataError("data.root", f"{bad}: header promises {dims} = {math.prod(dims)} bytes of data, "
                                     f"file holds {len(raw) - start}; it is truncated or corrupt, download it again")
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def _idx_pair(directory: Path, prefix: str):
    X = _read_idx(directory, f"{prefix}-images-idx3-ubyte", 3)
    y = _read_idx(directory, f"{prefix}-labels-idx1-ubyte", 1)
    if len(X) != len(y):
        raise DataError("data.root", f"{directory}: {prefix} has {len(X)} images but {len(y)} labels; "
                                     "the files do not belong together, download them again")
    if y.size and y.max() >= N_CLASSES:
        raise DataError("data.root", f"{directory / (prefix + '-labels-idx1-ubyte')}: label {y.max()} is "
                                     f"outside 0..{N_CLASSES - 1}; download it again")
    return X, y


def _load_idx_dataset(d, folder):
    directory = _dataset_dir(d, f"{folder}/raw", "train-images-idx3-ubyte")
    tx, ty = _idx_pair(directory, "train")
    vx, vy = _idx_pair(directory, "t10k")
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError("data.root", f"{directory}: train images are {tx.shape[1:]} but test images "
                                     f"{vx.shape[1:]}; the files do not belong together")
    return tx, ty, vx, vy, N_CLASSES, (1, *tx.shape[1:]), 255.0


def _load_mnist(d, seed):
    return _load_idx_dataset(d, "MNIST")


def _load_fashion_mnist(d, seed):
    return _load_idx_dataset(d, "FashionMNIST")


def _read_cifar_batch(path: Path):
    # A pickle, as torchvision reads it too: only point data.root at files you trust.
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError("data.root", f"{path} is missing; restore it (torchvision's download writes it)") from None
    except Exception as e:  # unpickling raises anything from EOFError to UnpicklingError
        raise DataError("data.root", f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                                     "download it again") from None
    X = batch.get(b"data") if isinstance(batch, dict) else None
    y = batch.get(b"labels") if isinstance(batch, dict) else None
    if X is None or y is None:
        raise DataError("data.root", f"{path} lacks b'data' or b'labels'; it is not a CIFAR-10 python batch")
    X, y = np.asarray(X), np.asarray(y, dtype=np.int64)
    if X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != 3 * 32 * 32 or len(X) != len(y):
        raise DataError("data.root", f"{path}: data is {X.dtype} {X.shape} with {len(y)} labels, expected "
                                     "uint8 N x 3072 with N labels; download it again")
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise DataError("data.root", f"{path}: labels outside 0..{N_CLASSES - 1}; download it again")
    return X, y


def _load_cifar10(d, seed):
    directory = _dataset_dir(d, "cifar-10-batches-py", "data_batch_1")
    train = [_read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    vx, vy = _read_cifar_batch(directory / "test_batch")
    tx, ty = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    return tx, ty, vx, vy, N_CLASSES, (3, 32, 32), 255.0


# ---------------------------------------------------------------- partitioning

def partition_indices(labels, n_parts: int, d: dict, seed: int) -> list[np.ndarray]:
    """Split the pool's indices over n_parts nodes as d["partition"] says; sorted, disjoint int64 arrays."""
    d = _resolved(d)
    labels = np.asarray(labels, dtype=np.int64)
    n, least, kind = len(labels), d["min_samples_per_node"], d["partition"]
    if n_parts < 1:
        raise DataError("nodes", f"need at least one data node, got {n_parts}")
    if n_parts * least > n:
        more = ", raise data.max_samples" if d["max_samples"] is not None else ""
        raise DataError("data.min_samples_per_node",
                        f"{n_parts} data nodes x {least} samples needs {n_parts * least} but the training pool "
                        f"holds {n}; use fewer data nodes{more} or lower data.min_samples_per_node")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), n_parts)
    elif kind == "dirichlet":
        parts = _dirichlet(labels, n_parts, d["alpha"], least, rng)
    elif kind == "k_labels":
        parts = _k_labels(labels, n_parts, d["labels_per_node"], least, rng)
    elif kind == "quantity_skew":
        parts = _quantity_skew(n, n_parts, d["skew_sigma"], least, rng)
    else:
        raise DataError("data.partition", f"unknown partition kind {kind!r}; expected one of {', '.join(PARTITIONS)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels, n_parts, alpha, least, rng):
    """Each class spread over the nodes with proportions ~ Dir(alpha); redrawn until every node has enough."""
    if alpha <= 0:
        raise DataError("data.alpha", f"must be > 0, got {alpha}")
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        chunks = [[] for _ in range(n_parts)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, alpha))) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(chunks, np.split(idx, cuts)):
                part.append(chunk)
        parts = [np.concatenate(p) for p in chunks]
        if min(len(p) for p in parts) >= least:
            return parts
    raise DataError("data.alpha", f"no Dirichlet(alpha={alpha}) partition of {len(labels)} samples gave each of "
                                  f"{n_parts} nodes >= {least} samples in {MAX_DIRICHLET_ATTEMPTS} attempts; raise "
                                  "data.alpha, use fewer data nodes or lower data.min_samples_per_node")


def _k_labels(labels, n_parts, k, least, rng):
    """Node i holds k consecutive labels of a seeded label order (round-robin), so every
    label is held once n_parts * k >= classes; a label's samples are split evenly among its holders."""
    classes = np.unique(labels)
    if not 1 <= k <= len(classes):
        raise DataError("data.labels_per_node", f"must lie in 1..{len(classes)} (the labels in the pool), got {k}")
    order = rng.permutation(classes)
    holders = {int(c): [] for c in classes}
    for i in range(n_parts):
        for j in range(k):
            holders[int(order[(i * k + j) % len(classes)])].append(i)
    chunks = [[] for _ in range(n_parts)]
    for c in classes:  # labels nobody holds (n_parts * k < classes) stay unused
        nodes = holders[int(c)]
        idx = rng.permutation(np.flatnonzero(labels == c))
        if nodes and len(idx) < len(nodes):
            raise DataError("data.labels_per_node", f"label {c} has {len(idx)} samples for {len(nodes)} nodes "
                                                    "holding it; lower data.labels_per_node or use fewer data nodes")
        for i, chunk in zip(nodes, np.array_split(idx, len(nodes)) if nodes else []):
            chunks[i].append(chunk)
    parts = [np.concatenate(p) for p in chunks]
    small = min(range(n_parts), key=lambda i: len(parts[i]))
    if len(parts[small]) < least:
        raise DataError("data.min_samples_per_node",
                        f"k_labels gave node {small} only {len(parts[small])} samples (< {least}); raise "
                        "data.labels_per_node, use fewer data nodes or lower data.min_samples_per_node")
    return parts


def _quantity_skew(n, n_parts, sigma, least, rng):
    """Node sizes: each gets `least`, the rest in lognormal(0, sigma) proportions; labels IID."""
    if sigma < 0:
        raise DataError("data.skew_sigma", f"must be >= 0, got {sigma}")
    share = rng.lognormal(0.0, sigma, n_parts)
    quota = (n - n_parts * least) * share / share.sum()
    sizes = np.floor(quota).astype(np.int64)
    sizes[np.argsort(sizes - quota, kind="stable")[: n - n_parts * least - sizes.sum()]] += 1
    return np.split(rng.permutation(n), np.cumsum(sizes + least)[:-1])


def make_shards(data_nodes: list[str], d: dict, seed: int) -> tuple[dict[str, Shard], Dataset]:
    """Load the data set and give data_nodes[i] partition i; return (shards by node, data set).

    A data node keeps only its own shard and drops the rest (and the data set)."""
    if len(set(data_nodes)) != len(data_nodes):
        raise DataError("nodes", f"data node names repeat in {data_nodes}; each needs its own shard")
    hit = _preloaded.get(_key("shards", d, seed, tuple(data_nodes))) if _preloaded else None
    if hit is not None:
        return dict(hit), load_dataset(d, seed)
    ds = load_dataset(d, seed)
    parts = partition_indices(ds.train_y, len(data_nodes), d, seed)
    return {node: Shard(node, ds.train_X[idx], ds.train_y[idx]) for node, idx in zip(data_nodes, parts)}, ds


def verification_set(ds: Dataset, d: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The MPVU's (X, y): ds's verification set, restricted to d["verification"]["labels"] and
    capped (stratified, seeded) at d["verification"]["samples"]."""
    v = _resolved(d)["verification"]
    X, y = ds.verif_X, ds.verif_y
    if v["labels"] is not None:
        wanted = [int(c) for c in v["labels"]]
        if not wanted or any(not 0 <= c < ds.n_classes for c in wanted):
            raise DataError("data.verification.labels",
                            f"must be a non-empty list of labels in 0..{ds.n_classes - 1}, got {v['labels']}")
        keep = np.isin(y, wanted)
        if not keep.any():
            raise DataError("data.verification.labels", f"no verification sample has a label in {wanted}")
        X, y = X[keep], y[keep]
    if v["samples"] is not None:
        if v["samples"] < 1:
            raise DataError("data.verification.samples", f"must be a positive number or null, got {v['samples']}")
        keep = _stratified_take(y, v["samples"], np.random.default_rng([seed, _VERIFY]))
        X, y = X[keep], y[keep]
    return X, y


# ---------------------------------------------------------------- label statistics

def label_histogram(labels, n_classes=N_CLASSES) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


def noisy_histogram(hist: list[int], epsilon: float | None, rng: np.random.Generator) -> list[int]:
    """The histogram with Laplace(1/epsilon) noise per bin, rounded and clipped at 0.

    Adding or removing one sample changes one count by 1 (sensitivity 1), so the
    published histogram is epsilon-differentially private for the samples: it
    barely changes whether any single sample is in the shard. Smaller epsilon is
    more private and noisier (mean absolute error about 1/epsilon per bin);
    rounding and clipping are post-processing and keep the guarantee.
    epsilon None or 0 publishes the exact counts.
    """
    if not epsilon:
        return [int(h) for h in hist]
    if epsilon < 0:
        raise ValueError(f"epsilon must be > 0 (or None/0 for exact counts), got {epsilon}")
    noisy = np.asarray(hist, dtype=np.float64) + rng.laplace(0.0, 1.0 / epsilon, len(hist))
    return np.clip(np.rint(noisy), 0, None).astype(np.int64).tolist()
