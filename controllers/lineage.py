"""Model lineage (OAM model tracking): every version of a task's model, its parent and its verdicts.

Pure policy, no os_ken import. A version is named by the SHA-256 of its state
bytes; each records the hash it was trained from, so a task's versions form a
chain from the initial model (version 0, no parent) to the latest. The record
answers: is the chain whole, did the model fork, was every version verified,
and which verified version to roll back to (:meth:`Lineage.latest_good`).

Hashes are unique per task, not per run: every task of a run starts from the
same seeded initial model, so version 0 of two tasks has the same hash.

``from_events`` rebuilds the record from a run's ``events.jsonl``; what the
events do not carry is listed in its docstring and left ``None``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["ModelVersion", "Lineage"]

_VERDICT_KEYS = ("by", "accuracy", "loss", "samples", "t")


@dataclass
class ModelVersion:
    """One version of a task's model, named by the SHA-256 of its state bytes."""

    task: int
    model_id: int
    version: int
    sha256: str
    parent_sha256: str | None = None
    trained_at: str | None = None      # node that trained it (None: the initial model)
    epochs: int | None = None
    samples: int | None = None         # samples it was trained on at that stop
    label_hist: list[int] | None = None  # that stop's published (possibly noisy) label histogram
    t: float = 0.0
    verdicts: list[dict] = field(default_factory=list)  # {by, accuracy, loss, samples, per_class?, t}

    @property
    def is_initial(self) -> bool:
        return self.parent_sha256 is None and self.version == 0

    def describe(self) -> str:
        return f"task {self.task} version {self.version} ({self.sha256[:12]})"

    def _identity(self) -> dict:
        """The fields that must agree when a hash is recorded twice (verdicts accumulate)."""
        d = dataclasses.asdict(self)
        d.pop("verdicts")
        return d


_FIELDS = {f.name for f in dataclasses.fields(ModelVersion)}


class Lineage:
    """The versions of every task's model, linked by parent hash, with their MPVU verdicts."""

    def __init__(self, allow_forks: bool = False):
        # a fork (two children of one parent) is a bug for a model that travels
        # alone; a planner that splits a task on purpose says so here
        self.allow_forks = allow_forks
        self._versions: dict[tuple[int, str], ModelVersion] = {}
        self._orphans: list[dict] = []      # verdicts whose hash is not (yet) recorded
        self._mismatches: list[str] = []    # verdicts naming another version than the record
        self.notes: list[str] = []          # what from_events had to infer or could not use
        # versions the task left behind on purpose: rolled back (a poisoned model) or lost
        # with the node that held it (the task resumed from an earlier verified version)
        self._abandoned: dict[tuple[int, str], str] = {}

    # ---- recording -----------------------------------------------------------
    def add_version(self, **fields) -> list[dict]:
        """Record a version; returns events (``model_version`` and any problem it shows at once).

        Recording the same hash again with the same fields is a no-op (returns []);
        with different fields it is refused (ValueError): a hash names one model.
        """
        unknown = sorted(set(fields) - (_FIELDS - {"verdicts"}))
        if unknown:
            hint = " (add verdicts with add_verdict)" if "verdicts" in unknown else ""
            raise TypeError(f"ModelVersion has no field {', '.join(map(repr, unknown))}{hint}; "
                            f"fields: {', '.join(sorted(_FIELDS - {'verdicts'}))}")
        v = ModelVersion(**fields)
        key = (v.task, v.sha256)
        old = self._versions.get(key)
        if old is not None:
            if old._identity() == v._identity():
                return []
            diff = {k: (a, v._identity()[k]) for k, a in old._identity().items() if a != v._identity()[k]}
            raise ValueError(f"{v.describe()} is already recorded with other fields "
                             f"(recorded, new): {diff}; a hash names one model")
        self._versions[key] = v
        events = [{"kind": "model_version", "t": v.t, "task": v.task, "version": v.version,
                   "sha256": v.sha256, "parent_sha256": v.parent_sha256, "trained_at": v.trained_at}]
        if v.parent_sha256 is not None:
            parent = self._versions.get((v.task, v.parent_sha256))
            if parent is None:
                events.append({"kind": "model_parent_unknown", "t": v.t, "task": v.task,
                               "version": v.version, "sha256": v.sha256, "parent_sha256": v.parent_sha256})
            else:
                if v.version <= parent.version:
                    events.append({"kind": "model_version_not_increasing", "t": v.t, "task": v.task,
                                   "version": v.version, "parent_version": parent.version,
                                   "sha256": v.sha256})
                siblings = [c for c in self._children(v.task, v.parent_sha256) if c is not v]
                if siblings and not self.allow_forks:
                    events.append({"kind": "model_fork", "t": v.t, "task": v.task,
                                   "parent_sha256": v.parent_sha256,
                                   "children": [c.sha256 for c in siblings] + [v.sha256]})
        # verdicts that came before the version (e.g. a late train record) join it now
        for o in [o for o in self._orphans if (o["task"], o["sha256"]) == key]:
            self._orphans.remove(o)
            events += self._attach(v, o)
        return events

    def add_verdict(self, task, version, sha256, by, accuracy, loss, samples, t,
                    per_class=None) -> list[dict]:
        """Record an MPVU verdict on the model with hash ``sha256``; returns events.

        A verdict on a hash not recorded is kept (and reported by :meth:`problems`)
        until that version is recorded. The same verdict twice is a no-op.
        """
        o = {"task": task, "version": version, "sha256": sha256, "by": by, "accuracy": accuracy,
             "loss": loss, "samples": samples, "t": t}
        if per_class is not None:
            o["per_class"] = list(per_class)
        v = self._versions.get((task, sha256))
        if v is None:
            if o in self._orphans:
                return []
            self._orphans.append(o)
            return [{"kind": "verdict_unknown_model", **o}]
        return self._attach(v, o)

    def _attach(self, v: ModelVersion, o: dict) -> list[dict]:
        verdict = {k: o[k] for k in _VERDICT_KEYS + ("per_class",) if k in o}
        if verdict in v.verdicts:
            return []
        v.verdicts.append(verdict)
        events = [{"kind": "model_verdict", "task": v.task, "version": v.version, "sha256": v.sha256,
                   **verdict}]
        if o["version"] != v.version:
            msg = (f"verdict by {o['by']} names version {o['version']} for {v.describe()}")
            self._mismatches.append(msg)
            events.append({"kind": "verdict_version_mismatch", "task": v.task, "sha256": v.sha256,
                           "version": v.version, "verdict_version": o["version"], "by": o["by"]})
        return events

    # ---- reading ---------------------------------------------------------------
    def abandon(self, task: int, sha256: str, reason: str) -> list[dict]:
        """Mark a version the task left behind (rolled back, or lost with its node): it may
        lack a verdict and its parent may fork into it and the branch the task went on with."""
        if (task, sha256) in self._abandoned:
            return []
        self._abandoned[(task, sha256)] = reason
        return [{"kind": "model_abandoned", "task": task, "sha256": sha256, "reason": reason}]

    def abandoned(self, task: int, sha256: str) -> str | None:
        return self._abandoned.get((task, sha256))

    def versions(self, task: int | None = None) -> list[ModelVersion]:
        """Recorded versions (of ``task``), in the order recorded."""
        return [v for v in self._versions.values() if task is None or v.task == task]

    def tasks(self) -> list[int]:
        return sorted({v.task for v in self._versions.values()})

    def get(self, task: int, sha256: str) -> ModelVersion | None:
        return self._versions.get((task, sha256))

    def _children(self, task: int, sha256: str) -> list[ModelVersion]:
        return [c for c in self._versions.values() if c.task == task and c.parent_sha256 == sha256]

    def chain(self, task: int) -> list[ModelVersion]:
        """The task's versions from the initial model to the latest, following parent hashes.

        The latest is the highest version (then the latest recorded); on a fork
        the chain is the branch that leads to it. If a parent was never recorded
        the chain starts at the oldest version that was (see :meth:`problems`).
        """
        vs = [v for v in self.versions(task) if (task, v.sha256) not in self._abandoned]
        if not vs:
            return []
        v = max(vs, key=lambda x: (x.version, x.t))
        out, seen = [], set()
        while v is not None and v.sha256 not in seen:  # a parent loop cannot hang us
            seen.add(v.sha256)
            out.append(v)
            v = None if v.parent_sha256 is None else self._versions.get((task, v.parent_sha256))
        return out[::-1]

    def latest_good(self, task: int, min_accuracy: float | None = None) -> ModelVersion | None:
        """The recovery/rollback point: the last version on the task's chain with a verdict
        (every verdict on it >= ``min_accuracy`` if given: all verifiers must agree)."""
        for v in reversed(self.chain(task)):
            if v.verdicts and (min_accuracy is None
                               or min(d["accuracy"] for d in v.verdicts) >= min_accuracy):
                return v
        return None

    def problems(self) -> list[str]:
        """What is wrong with the record, one sentence each (empty: a whole, verified lineage).

        Broken chains, forks (unless allowed), more than one initial model, version
        numbers that do not increase from parent to child, versions without a
        verdict (the initial model, never trained, needs none), verdicts on hashes
        never recorded and verdicts naming another version than the record.
        """
        out = []
        for task in self.tasks():
            vs = self.versions(task)
            roots = [v for v in vs if v.parent_sha256 is None]
            initial = [v for v in roots if v.version == 0]
            if not initial:
                out.append(f"task {task}: no initial model (version 0 without parent) recorded")
            if len(roots) > 1:
                out.append(f"task {task}: {len(roots)} versions without a parent: "
                           + ", ".join(v.describe() for v in roots))
            for v in vs:
                if v.parent_sha256 is None:
                    if v.version != 0:
                        out.append(f"{v.describe()} has no parent hash but is not the initial model")
                    continue
                parent = self._versions.get((task, v.parent_sha256))
                if parent is None:
                    out.append(f"{v.describe()}: parent {v.parent_sha256[:12]} was never recorded "
                               f"(broken chain)")
                elif v.version <= parent.version:
                    out.append(f"{v.describe()}: version does not increase from its parent "
                               f"(version {parent.version})")
            if not self.allow_forks:
                for p in vs:
                    kids = [k for k in self._children(task, p.sha256) if (task, k.sha256) not in self._abandoned]
                    if len(kids) > 1:
                        out.append(f"task {task}: fork: {p.describe()} has {len(kids)} children: "
                                   + ", ".join(k.describe() for k in kids))
            for v in vs:
                if not v.verdicts and not v.is_initial and (task, v.sha256) not in self._abandoned:
                    out.append(f"{v.describe()} has no verdict")
        for o in self._orphans:
            out.append(f"verdict by {o['by']} for task {o['task']} version {o['version']} on hash "
                       f"{o['sha256'][:12] if o['sha256'] else o['sha256']} that was never recorded")
        out += self._mismatches
        return out

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"allow_forks": self.allow_forks,
                "versions": [dataclasses.asdict(v) for v in self._versions.values()],
                "abandoned": [{"task": t, "sha256": h, "reason": r} for (t, h), r in self._abandoned.items()],
                "orphan_verdicts": [dict(o) for o in self._orphans],
                "verdict_mismatches": list(self._mismatches),
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Lineage":
        known = {"allow_forks", "versions", "orphan_verdicts", "verdict_mismatches", "notes", "abandoned"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"lineage dict has unknown key(s) {unknown}; known: {sorted(known)}")
        lin = cls(allow_forks=bool(d.get("allow_forks", False)))
        for vd in d.get("versions", []):
            vd = dict(vd)
            verdicts = vd.pop("verdicts", [])
            lin.add_version(**vd)
            lin._versions[(vd["task"], vd["sha256"])].verdicts = [dict(x) for x in verdicts]
        lin._orphans = [dict(o) for o in d.get("orphan_verdicts", [])]
        lin._mismatches = list(d.get("verdict_mismatches", []))
        lin.notes = list(d.get("notes", []))
        for a in d.get("abandoned", []):
            lin._abandoned[(a["task"], a["sha256"])] = a["reason"]
        return lin

    @classmethod
    def from_events(cls, events: list[dict], *, epochs: int | None = None,
                    allow_forks: bool = False) -> "Lineage":
        """Rebuild the record from a run's merged events (``events.jsonl``).

        Uses: ``train`` (nodes: version, sha256, parent_sha256, samples, src = where);
        ``verdict`` (MPVU, src = by; per_class), else ``verdict_recorded`` (DCC) or
        ``evaluation`` (data node) for a verifier whose own event is missing;
        version 0 from the client's version-0 MODEL_CHUNK ``transfer`` (it carries the
        sent state's hash), else the first training's ``parent_sha256``, timed by
        ``task_submitted``; the published label histogram of each stop from the DCC's
        ``knowledge_report``/``knowledge_changed`` or the node's ``data_loaded``.

        Not in the events: ``epochs`` (the spec's training.local_epochs; pass it),
        ``model_id`` (taken equal to the task id, as the client sets it).
        What had to be inferred or was refused is listed in ``notes``.
        """
        lin = cls(allow_forks=allow_forks)
        evs = sorted(events, key=lambda e: e.get("t", 0.0))
        hist: dict[str, list[int]] = {}          # node -> last published histogram seen
        submitted: dict[int, dict] = {}          # task -> task_submitted
        initial: dict[int, tuple[str, float]] = {}  # task -> (hash, t) of the version-0 transfer
        trains: list[tuple[dict, list | None]] = []
        for e in evs:
            k = e.get("kind")
            if k == "task_submitted":
                submitted.setdefault(e["task"], e)
            elif k == "transfer" and e.get("version") == 0 and e.get("sha256") \
                    and e.get("msg") in ("MODEL_CHUNK", "MODEL") and e.get("task") not in initial:
                client = submitted.get(e.get("task"), {}).get("src")
                if client is None or e.get("src") == client:
                    initial[e["task"]] = (e["sha256"], e["t"])
            elif k == "data_loaded":
                h = e.get("published_label_hist")
                if h is None and not e.get("noise_epsilon"):
                    h = e.get("label_hist")  # older runs: no noise, so published == true
                if h is not None:
                    hist.setdefault(e["src"], list(h))
            elif k == "knowledge_report" and e.get("label_hist") is not None and e.get("node"):
                hist[e["node"]] = list(e["label_hist"])
            elif k == "knowledge_changed" and "label_hist" in (e.get("changes") or {}):
                hist[e["node"]] = list(e["changes"]["label_hist"][1])
            elif k == "train":
                trains.append((e, list(hist[e["src"]]) if e.get("src") in hist else None))

        first_parent: dict[int, str] = {}
        for e, _ in trains:
            if e.get("parent_sha256"):
                first_parent.setdefault(e["task"], e["parent_sha256"])
        for task in sorted(set(initial) | set(first_parent) | {e["task"] for e, _ in trains}):
            sha, t = initial.get(task, (None, None))
            if sha is None:
                sha = first_parent.get(task)
                if sha is None:
                    lin.notes.append(f"task {task}: initial model hash unknown (no version-0 transfer, "
                                     f"no parent_sha256 in its train events)")
                    continue
                lin.notes.append(f"task {task}: initial model hash taken from the first training's "
                                 f"parent_sha256 (no version-0 transfer event)")
            elif task in first_parent and first_parent[task] != sha:
                lin.notes.append(f"task {task}: the client sent {sha[:12]} but the first training "
                                 f"started from {first_parent[task][:12]}")
            sub = submitted.get(task)
            lin._record(version=0, task=task, model_id=task, sha256=sha, parent_sha256=None,
                        t=sub["t"] if sub else t, epochs=None)

        last: dict[tuple[int, int], str] = {(v.task, 0): v.sha256 for v in lin.versions()}
        for e, h in trains:
            parent = e.get("parent_sha256")
            if parent is None:
                parent = last.get((e["task"], e["version"] - 1))
                lin.notes.append(f"task {e['task']} version {e['version']}: no parent_sha256 in the train "
                                 f"event; taken as the hash of version {e['version'] - 1}"
                                 + ("" if parent else " (unknown)"))
            lin._record(task=e["task"], model_id=e["task"], version=e["version"], sha256=e["sha256"],
                        parent_sha256=parent, trained_at=e.get("src"), epochs=e.get("epochs", epochs),
                        samples=e.get("samples"), label_hist=h, t=e["t"])
            last[(e["task"], e["version"])] = e["sha256"]

        # versions left behind: rolled back by the DCC (hash known), or trained by a node
        # that was lost while holding the model (the DCC resumed from an earlier version)
        for e in evs:
            if e.get("kind") == "model_abandoned" and e.get("sha256"):
                lin.abandon(e["task"], e["sha256"], e.get("reason", "abandoned"))
            elif e.get("kind") == "recovery" and e.get("lost_node") and e.get("from_sha256"):
                for v in lin.versions(e["task"]):
                    if v.trained_at == e["lost_node"] and v.parent_sha256 == e["from_sha256"]:
                        lin.abandon(v.task, v.sha256, f"lost with {e['lost_node']}")

        by_version = {(v.task, v.version): v.sha256 for v in lin.versions()}
        seen: set[tuple] = set()
        for kinds in (("verdict",), ("verdict_recorded", "evaluation")):
            for e in evs:
                if e.get("kind") not in kinds:
                    continue
                by = e["src"] if e["kind"] == "verdict" else e.get("by")
                sha = e.get("sha256") or by_version.get((e.get("task"), e.get("version")))
                key = (e.get("task"), sha, by)
                if key in seen:
                    continue  # the same verdict as seen by the MPVU, the DCC and the data node
                seen.add(key)
                lin.add_verdict(e.get("task"), e.get("version"), sha, by, e.get("accuracy"), e.get("loss"),
                                e.get("samples"), e.get("t"), per_class=e.get("per_class"))
        return lin

    def _record(self, **fields):
        try:
            self.add_version(**fields)
        except ValueError as e:  # a run's record is read, not refused: say what was skipped
            self.notes.append(f"skipped: {e}")
