"""Walking-skeleton MTRCE policy: which data nodes a model visits, in what order.

Policy "cover-then-nearest": every data node that reported data is visited;
the tour is built greedily, always moving to the nearest (fewest switch hops)
unvisited node, preferring at equal distance the node that adds most labels
not yet covered. Label coverage is checked and any label held by nobody is a
reason in the answer. Pure function of (request, knowledge, distances); the
DCC issue replaces it with real route compute engines.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ItineraryAnswer:
    feasible: bool
    itinerary: list[str]
    reasons: list[str] = field(default_factory=list)
    policy: str = "cover-then-nearest"
    labels_covered: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"feasible": self.feasible, "itinerary": self.itinerary,
                "reasons": self.reasons, "policy": self.policy,
                "labels_covered": self.labels_covered}


def plan_itinerary(client: str, knowledge: dict[str, dict], distance,
                   required_labels: list[int] | None = None) -> ItineraryAnswer:
    """``knowledge``: node -> {"samples": int, "label_hist": [counts], "capacity":
    relative compute speed (0: no compute; absent: 1)};
    ``distance(a, b)`` -> hop count between hosts (None if unreachable)."""
    reasons: list[str] = []
    candidates = []
    for node in sorted(knowledge):
        k = knowledge[node]
        if k.get("samples", 0) <= 0:
            reasons.append(f"{node} skipped: reports no samples")
        elif k.get("capacity", 1.0) <= 0:
            reasons.append(f"{node} skipped: holds data but has no compute to train a visiting model")
        elif distance(client, node) is None:
            reasons.append(f"{node} skipped: not reachable from {client}")
        else:
            candidates.append(node)
    if not candidates:
        return ItineraryAnswer(False, [], reasons + ["no reachable data node has reported data"])

    def labels(node):
        return {i for i, c in enumerate(knowledge[node].get("label_hist", [])) if c > 0}

    covered: set[int] = set()
    tour: list[str] = []
    here = client
    left = set(candidates)
    while left:
        nxt = min(left, key=lambda n: (distance(here, n), -len(labels(n) - covered), n))
        reasons.append(f"{nxt}: {distance(here, nxt)} hops from {here}, "
                       f"adds labels {sorted(labels(nxt) - covered)}")
        covered |= labels(nxt)
        tour.append(nxt)
        left.discard(nxt)
        here = nxt
    feasible = True
    if required_labels:
        missing = sorted(set(required_labels) - covered)
        if missing:
            feasible = False
            reasons.append(f"labels {missing} are held by no reachable data node")
    return ItineraryAnswer(feasible, tour, reasons, labels_covered=sorted(covered))
