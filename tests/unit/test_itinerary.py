"""Unit tests for the walking-skeleton itinerary policy (controllers/itinerary.py)."""
import pytest

from controllers.itinerary import ItineraryAnswer, plan_itinerary

# Hosts on a line: h1 - h2 - h3 - ... at position = host number; hop distance = |i - j|.
POS = {f"h{i}": i for i in range(1, 10)}


def line_distance(unreachable=()):
    calls = []

    def d(a, b):
        calls.append((a, b))
        if a in unreachable or b in unreachable:
            return None
        return abs(POS[a] - POS[b])
    d.calls = calls
    return d


def k(samples, hist):
    return {"samples": samples, "label_hist": hist}


def test_nearest_first_order_from_client_in_the_middle():
    # client h5; data at h3 (2 hops), h6 (1), h9 (4 from h5), h1 (4 from h5)
    know = {"h1": k(5, [1]), "h3": k(5, [1]), "h6": k(5, [1]), "h9": k(5, [1])}
    ans = plan_itinerary("h5", know, line_distance())
    assert isinstance(ans, ItineraryAnswer)
    assert ans.feasible is True
    # h5 -> h6 (1) -> h3 (3; h9 would be 3 too, h3 wins by name) -> h1 (2) -> h9 (8)
    assert ans.itinerary == ["h6", "h3", "h1", "h9"]
    assert ans.policy == "cover-then-nearest"


def test_greedy_moves_from_the_current_stop_not_the_client():
    # from h1 both h7 (6) and h8 (7) are far; after h3, h7 (4) is nearer than h8 (5)
    know = {"h3": k(1, [1]), "h7": k(1, [1]), "h8": k(1, [1])}
    ans = plan_itinerary("h1", know, line_distance())
    assert ans.itinerary == ["h3", "h7", "h8"]
    # and the reasons give each leg's distance from the previous stop
    legs = [r for r in ans.reasons if "hops from" in r]
    assert legs == ["h3: 2 hops from h1, adds labels [0]",
                    "h7: 4 hops from h3, adds labels []",
                    "h8: 1 hops from h7, adds labels []"]


def test_tie_prefers_node_adding_more_new_labels():
    # h4 and h6 are both 1 hop from client h5; h6 adds 3 labels, h4 adds 1
    know = {"h4": k(10, [5, 0, 0, 0]), "h6": k(10, [0, 2, 3, 4])}
    ans = plan_itinerary("h5", know, line_distance())
    assert ans.itinerary == ["h6", "h4"]
    assert ans.labels_covered == [0, 1, 2, 3]


def test_tie_on_labels_breaks_by_name():
    know = {"h6": k(10, [1, 1]), "h4": k(10, [1, 1])}
    assert plan_itinerary("h5", know, line_distance()).itinerary == ["h4", "h6"]


def test_labels_covered_is_union_of_nonzero_bins():
    know = {"h2": k(3, [1, 0, 2]), "h3": k(4, [0, 0, 0, 0, 4]), "h4": k(1, [0, 1])}
    ans = plan_itinerary("h1", know, line_distance())
    assert ans.labels_covered == [0, 1, 2, 4]
    assert ans.feasible
    assert "h2: 1 hops from h1, adds labels [0, 2]" in ans.reasons
    assert "h3: 1 hops from h2, adds labels [4]" in ans.reasons
    assert "h4: 1 hops from h3, adds labels [1]" in ans.reasons


def test_nodes_without_samples_are_skipped_with_reason():
    know = {"h2": k(0, [0, 0]), "h3": k(5, [1, 1]), "h4": {"label_hist": [3]}, "h6": k(-1, [])}
    ans = plan_itinerary("h1", know, line_distance())
    assert ans.itinerary == ["h3"]
    assert "h2 skipped: reports no samples" in ans.reasons
    assert "h4 skipped: reports no samples" in ans.reasons  # samples missing entirely
    assert "h6 skipped: reports no samples" in ans.reasons
    assert ans.feasible


def test_unreachable_nodes_are_skipped_with_reason():
    know = {"h2": k(5, [1]), "h3": k(5, [0, 1]), "h4": k(5, [1])}
    ans = plan_itinerary("h1", know, line_distance(unreachable={"h3"}))
    assert ans.itinerary == ["h2", "h4"]
    assert "h3 skipped: not reachable from h1" in ans.reasons
    assert ans.labels_covered == [0]
    assert ans.feasible  # nothing was required


def test_required_labels_missing_is_infeasible_and_names_labels():
    know = {"h2": k(5, [1, 1, 0, 0]), "h3": k(5, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])}
    ans = plan_itinerary("h1", know, line_distance(), required_labels=[9, 0, 3, 1])
    assert ans.feasible is False
    assert ans.itinerary == ["h2", "h3"]  # the tour is still reported
    assert ans.reasons[-1] == "labels [3, 9] are held by no reachable data node"


def test_required_label_held_only_by_unreachable_node():
    know = {"h2": k(5, [1, 0]), "h7": k(5, [0, 1])}
    ans = plan_itinerary("h1", know, line_distance(unreachable={"h7"}), required_labels=[0, 1])
    assert not ans.feasible
    assert any("[1]" in r and "no reachable" in r for r in ans.reasons)


def test_required_labels_all_present_is_feasible():
    know = {"h2": k(5, [1, 1, 0]), "h3": k(5, [0, 0, 7])}
    ans = plan_itinerary("h1", know, line_distance(), required_labels=[0, 1, 2])
    assert ans.feasible is True
    assert not any("held by no" in r for r in ans.reasons)


def test_no_knowledge_is_infeasible():
    ans = plan_itinerary("h1", {}, line_distance())
    assert ans.feasible is False
    assert ans.itinerary == []
    assert ans.reasons == ["no reachable data node has reported data"]


def test_all_candidates_skipped_is_infeasible_with_all_reasons():
    know = {"h2": k(0, [1]), "h3": k(5, [1])}
    ans = plan_itinerary("h1", know, line_distance(unreachable={"h3"}), required_labels=[0])
    assert ans.feasible is False
    assert ans.itinerary == []
    assert ans.reasons == ["h2 skipped: reports no samples", "h3 skipped: not reachable from h1",
                           "no reachable data node has reported data"]
    assert ans.labels_covered == []


def test_client_that_is_also_a_data_node_is_visited_first():
    know = {"h1": k(5, [1]), "h2": k(5, [1])}
    ans = plan_itinerary("h1", know, line_distance())
    assert ans.itinerary == ["h1", "h2"]


def test_every_candidate_visited_exactly_once_and_result_deterministic():
    know = {h: k(i + 1, [i % 3, 1]) for i, h in enumerate(["h9", "h2", "h7", "h4", "h5"])}
    a = plan_itinerary("h1", know, line_distance())
    b = plan_itinerary("h1", dict(reversed(list(know.items()))), line_distance())
    assert sorted(a.itinerary) == sorted(know)
    assert a.to_dict() == b.to_dict()


def test_to_dict():
    ans = plan_itinerary("h1", {"h2": k(3, [0, 1])}, line_distance(), required_labels=[1])
    assert ans.to_dict() == {"feasible": True, "itinerary": ["h2"],
                             "reasons": ["h2: 1 hops from h1, adds labels [1]"],
                             "policy": "cover-then-nearest", "labels_covered": [1]}


@pytest.mark.parametrize("client", ["h1", "h9"])
def test_line_from_an_end_visits_in_position_order(client):
    know = {h: k(1, [1]) for h in ["h2", "h4", "h6", "h8"]}
    ans = plan_itinerary(client, know, line_distance())
    expected = ["h2", "h4", "h6", "h8"]
    assert ans.itinerary == (expected if client == "h1" else expected[::-1])


def test_data_node_without_compute_is_skipped_with_its_reason():
    from controllers.itinerary import plan_itinerary
    k = {"h2": {"samples": 50, "label_hist": [25, 25], "capacity": 1.0},
         "h3": {"samples": 50, "label_hist": [0, 50], "capacity": 0.0}}
    ans = plan_itinerary("h1", k, lambda a, b: 1)
    assert ans.itinerary == ["h2"]
    assert any("h3 skipped" in r and "no compute" in r for r in ans.reasons)
