"""MLP model, state (de)serialisation, local SGD training and evaluation for travelling models."""

import hashlib
import io
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Tuned on sequential visits to 4 Dirichlet(0.3) shards (0.85 reached within 4 laps for 50/50 seeds):
# a one-epoch stop on ~340 samples needs many small steps to learn, while momentum 0.9 amplifies
# the drift toward each shard's skewed labels and loses what earlier stops taught.
DEFAULT_LR = 0.1
DEFAULT_BATCH_SIZE = 4
DEFAULT_MOMENTUM = 0.5


def build_mlp(in_features=64, n_classes=10, hidden=(64,), seed=0):
    # fork_rng keeps initialisation seeded without disturbing the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)


def param_bytes(model):
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def state_to_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def bytes_to_state(model, data):
    # weights_only: the bytes arrive over the network, so never unpickle arbitrary objects.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model


def state_digest(data):
    return hashlib.sha256(data).hexdigest()


def _tensors(X, y):
    return torch.as_tensor(np.asarray(X, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))


class Throttle:
    """Enforces a compute node's declared capacity (relative speed, 0 < c <= 1):
    after work that took ``t`` seconds, the node idles ``t * (1/c - 1)`` so it
    progresses at c times its real speed. Idling is paid in slices of at least
    2 ms (sleep granularity); ``busy`` and ``idle`` add up what was done."""

    def __init__(self, capacity: float = 1.0):
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity must be within (0, 1], got {capacity}")
        self.capacity = capacity
        self.busy = self.idle = self._debt = 0.0

    def worked(self, seconds: float):
        self.busy += seconds
        if self.capacity >= 1:
            return
        self._debt += seconds * (1 / self.capacity - 1)
        if self._debt >= 0.002:
            t = time.perf_counter()
            time.sleep(self._debt)
            slept = time.perf_counter() - t
            self.idle += slept
            self._debt -= slept


def train_local(model, X, y, epochs=1, batch_size=DEFAULT_BATCH_SIZE, lr=DEFAULT_LR, seed=0,
                momentum=DEFAULT_MOMENTUM, capacity=1.0):
    """Train in place with SGD at ``capacity`` (see Throttle); returns {"epochs",
    "samples", "loss" (mean of last epoch), "seconds", "compute_seconds", "throttled_seconds"}."""
    throttle = Throttle(capacity)
    X, y = _tensors(X, y)
    # A fresh optimiser per stop: only the weights travel between nodes, not momentum buffers.
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start, loss_sum = time.perf_counter(), float("nan")
    for _ in range(epochs):
        loss_sum = 0.0
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            t = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(X[batch]), y[batch])
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(batch)
            throttle.worked(time.perf_counter() - t)
    return {
        "epochs": epochs,
        "samples": len(y),
        "loss": loss_sum / max(len(y), 1),
        "seconds": time.perf_counter() - start,
        "compute_seconds": throttle.busy,
        "throttled_seconds": throttle.idle,
    }


@torch.no_grad()
def evaluate(model, X, y):
    """Return {"accuracy", "loss", "per_class_accuracy" (None for absent classes), "samples"}."""
    X, y = _tensors(X, y)
    was_training = model.training
    model.eval()
    logits = model(X)
    model.train(was_training)
    correct = logits.argmax(dim=1) == y
    per_class = []
    for c in range(logits.shape[1]):
        mask = y == c
        per_class.append(correct[mask].float().mean().item() if mask.any() else None)
    return {
        "accuracy": correct.float().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "per_class_accuracy": per_class,
        "samples": len(y),
    }
