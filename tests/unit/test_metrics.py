"""The /metrics route over a stand-in stats source: each app scrapes its own engine."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lmdeploy.adapters.http.app import create_app
from lmdeploy.adapters.http.services import ServerServices
from lmdeploy.application.engine import EngineStats
from lmdeploy.application.latency import LatencyHistogram


def stats(**overrides) -> EngineStats:
    values = dict.fromkeys(
        [
            "num_blocks",
            "num_free_blocks",
            "num_running",
            "num_waiting",
            "num_preemptions",
            "num_prefill_tokens",
            "num_decode_tokens",
            "num_prefix_hit_tokens",
            "num_session_evictions",
            "num_steps",
        ],
        0,
    )
    return EngineStats(**{**values, **overrides})


def app_over(engine_stats: EngineStats, api_keys: tuple[str, ...] = (), ttft=None) -> TestClient:
    svc = ServerServices(None, None, lambda: engine_stats, "m", api_keys, ttft)
    return TestClient(create_app(svc))


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_apps_in_one_process_expose_their_own_numbers():
    one = app_over(stats(num_blocks=10, num_cpu_blocks=4, num_swapped_out_seqs=3, num_steps=7))
    two = app_over(stats(num_blocks=20, num_preemptions=5, num_recompute_preemptions=5))
    a, b = samples(one.get("/metrics").text), samples(two.get("/metrics").text)
    assert a[("lmdeploy_kv_cache_blocks", (("pool", "device"),))] == 10
    assert a[("lmdeploy_kv_cache_blocks", (("pool", "host"),))] == 4
    assert a[("lmdeploy_preemptions_total", (("mode", "swap"),))] == 3
    assert a[("lmdeploy_engine_steps_total", ())] == 7
    assert b[("lmdeploy_kv_cache_blocks", (("pool", "device"),))] == 20
    assert b[("lmdeploy_preemptions_total", (("mode", "recompute"),))] == 5


def test_metrics_sit_behind_the_api_key_and_health_does_not():
    client = app_over(stats(), api_keys=("k",))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_time_to_first_token_is_a_histogram_with_cumulative_buckets():
    hist = LatencyHistogram(buckets=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        hist.observe(seconds)
    got = samples(app_over(stats(), ttft=hist.snapshot).get("/metrics").text)
    name = "lmdeploy_time_to_first_token_seconds"
    assert got[(f"{name}_bucket", (("le", "0.1"),))] == 2  # a bound counts as inside
    assert got[(f"{name}_bucket", (("le", "1.0"),))] == 3
    assert got[(f"{name}_bucket", (("le", "+Inf"),))] == 4
    assert got[(f"{name}_count", ())] == 4 and abs(got[(f"{name}_sum", ())] - 3.65) < 1e-9


def test_step_failures_and_error_finishes_are_counted():
    a = samples(app_over(stats(num_step_failures=2, num_finished_error=3)).get("/metrics").text)
    assert a[("lmdeploy_step_failures_total", ())] == 2
    assert a[("lmdeploy_sequences_finished_total", (("finish_reason", "error"),))] == 3
