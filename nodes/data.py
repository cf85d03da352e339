"""Digits data set loading and IID / Dirichlet non-IID partitioning into per-node shards."""

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

N_CLASSES = 10
MAX_DIRICHLET_ATTEMPTS = 1000


def load_digits_split(verification_fraction=0.25, seed=0):
    """Return (train_X, train_y, verif_X, verif_y); X is float32 in [0, 1], y is int64."""
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train_X, verif_X, train_y, verif_y = train_test_split(
        X, y, test_size=verification_fraction, stratify=y, random_state=seed
    )
    return train_X, train_y, verif_X, verif_y


def dirichlet_partition(labels, n_parts, alpha, seed, min_size=10):
    """Split indices so each class is spread over parts with proportions ~ Dir(alpha)."""
    labels = np.asarray(labels)
    if n_parts < 1 or alpha <= 0:
        raise ValueError(f"need n_parts >= 1 and alpha > 0, got n_parts={n_parts}, alpha={alpha}")
    if n_parts * min_size > len(labels):
        raise ValueError(
            f"cannot give {n_parts} parts at least {min_size} samples each from {len(labels)} samples"
        )
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts = [[] for _ in range(n_parts)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, alpha))) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) partition into {n_parts} parts with >= {min_size} samples each "
        f"after {MAX_DIRICHLET_ATTEMPTS} attempts; raise alpha or lower min_size"
    )


def iid_partition(n, n_parts, seed):
    """Split range(n) uniformly at random into n_parts near-equal index arrays."""
    if not 1 <= n_parts <= n:
        raise ValueError(f"need 1 <= n_parts <= n, got n_parts={n_parts}, n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, n_parts)]


def label_histogram(labels, n_classes=N_CLASSES):
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


@dataclass
class Shard:
    node: str
    X: np.ndarray
    y: np.ndarray


def make_shards(data_nodes, partition, seed):
    """Partition the training split over data_nodes; return (shards by node, verif_X, verif_y).

    partition: {"kind": "iid"} or {"kind": "dirichlet", "alpha": 0.3[, "min_size": 10]},
    optionally with "verification_fraction" (default 0.25).
    """
    train_X, train_y, verif_X, verif_y = load_digits_split(
        partition.get("verification_fraction", 0.25), seed
    )
    kind = partition.get("kind")
    if kind == "iid":
        parts = iid_partition(len(train_y), len(data_nodes), seed)
    elif kind == "dirichlet":
        parts = dirichlet_partition(
            train_y, len(data_nodes), partition["alpha"], seed, partition.get("min_size", 10)
        )
    else:
        raise ValueError(f"unknown partition kind {kind!r}; expected 'iid' or 'dirichlet'")
    shards = {node: Shard(node, train_X[idx], train_y[idx]) for node, idx in zip(data_nodes, parts)}
    return shards, verif_X, verif_y
