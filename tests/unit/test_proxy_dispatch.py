"""The proxy's node table, strategies and health state, without any network."""

import random
from collections import Counter

import pytest

from lmdeploy.application.proxy import (
    Dispatcher,
    NodeStatus,
    NodeTable,
    NoHealthyNode,
    UnknownModel,
    pick_node,
)

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def table_of(*urls: str, model: str = "m", **fields) -> NodeTable:
    table = NodeTable()
    for url in urls:
        table.add(url, [model])
        for key, value in fields.get(url, {}).items():
            setattr(table.get(url), key, value)
    return table


def counts(strategy: str, table: NodeTable, n: int = 3000) -> Counter:
    dispatcher = Dispatcher(table, strategy, random.Random(0))
    return Counter(dispatcher.choose("m") for _ in range(n))


def test_random_spreads_evenly_without_speeds():
    got = counts("random", table_of(A, B, C))
    assert set(got) == {A, B, C}
    assert all(900 < c < 1100 for c in got.values())


def test_random_weights_by_speed_and_gives_unknown_speed_the_average():
    table = table_of(A, B, C)
    table.get(A).speed, table.get(B).speed = 3.0, 1.0  # C counts as 2.0
    got = counts("random", table, 6000)
    assert 2800 < got[A] < 3200 and 900 < got[B] < 1100 and 1850 < got[C] < 2150


def test_min_expected_latency_picks_the_shortest_queue_over_speed():
    table = table_of(A, B, C)
    table.get(A).unfinished, table.get(B).unfinished, table.get(C).unfinished = 4, 1, 2
    assert Dispatcher(table, "min_expected_latency").choose("m") == B
    table.get(C).speed, table.get(B).speed = 10.0, 1.0  # C: 3/10 beats B: 2/1
    assert Dispatcher(table, "min_expected_latency").choose("m") == C


def test_min_expected_latency_balances_in_flight_requests():
    table = table_of(A, B, C)
    dispatcher = Dispatcher(table, "min_expected_latency", random.Random(1))
    for _ in range(9):
        table.begin(dispatcher.choose("m"))
    assert [s.unfinished for _, s in table.items()] == [3, 3, 3]


def test_min_observed_latency_prefers_the_fastest_and_measures_unmeasured_nodes_first():
    table = table_of(A, B, C)
    table.get(A).latency.extend([0.5, 0.7])
    table.get(B).latency.extend([0.2, 0.2])
    assert Dispatcher(table, "min_observed_latency").choose("m") == C  # never measured
    table.get(C).latency.append(0.9)
    assert counts("min_observed_latency", table, 50) == Counter({B: 50})


def test_ties_break_at_random():
    assert set(counts("min_observed_latency", table_of(A, B, C), 100)) == {A, B, C}


def test_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="min_observed_latency"):
        Dispatcher(NodeTable(), "round_robin")
    with pytest.raises(ValueError, match="random"):
        pick_node("fastest", [(A, NodeStatus())], random.Random())


def test_unknown_model_names_the_model_and_what_is_served():
    with pytest.raises(UnknownModel, match="`other`.*m"):
        Dispatcher(table_of(A), "random").choose("other")


def test_only_healthy_untried_nodes_are_candidates():
    table = table_of(A, B, C)
    table.mark_failed(A)
    dispatcher = Dispatcher(table, "random", random.Random(0))
    assert {dispatcher.choose("m", exclude=[B]) for _ in range(20)} == {C}
    with pytest.raises(NoHealthyNode, match="`m`"):
        dispatcher.choose("m", exclude=[B, C])


def test_a_node_leaves_after_two_failed_probes_and_returns_with_one_success():
    table = table_of(A)
    assert table.record_probe(A, ok=False) is False and table.get(A).healthy
    table.record_probe(A, ok=False)
    assert not table.get(A).healthy
    assert table.record_probe(A, ok=True) is True
    assert table.get(A).healthy and table.get(A).failures == 0


def test_begin_and_finish_keep_in_flight_counts_and_a_latency_window():
    now = [10.0]
    table = NodeTable(clock=lambda: now[0])
    table.add(A, ["m"])
    starts = [table.begin(A) for _ in range(20)]
    assert table.get(A).unfinished == 20
    now[0] = 12.0
    for start in starts:
        table.finish(A, start, ok=True)
    table.finish(A, table.begin(A), ok=False)  # a failed request counts no latency
    status = table.get(A)
    assert status.unfinished == 0 and list(status.latency) == [2.0] * 15


def test_models_are_the_union_of_the_nodes_and_re_adding_keeps_counters():
    table = NodeTable()
    table.add(A + "/", ["m1", "m2"])
    table.add(B, ["m2", "m3"], speed=-1)
    table.get(A).unfinished = 2
    table.add(A, [], speed=5)
    assert table.model_names() == ["m1", "m2", "m3"]
    assert table.get(A).unfinished == 2 and table.get(A).models == ["m1", "m2"]
    assert table.get(A).speed == 5 and table.get(B).speed is None
    assert table.remove(A) and not table.remove(A)
