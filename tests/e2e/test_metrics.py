"""GET /metrics on a real server: Prometheus text that the official parser reads, counters that
move with traffic, and the API key like every route but /health."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "SmolLM2-135M-Instruct"


def scrape(server, headers=None) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{server.url}/metrics", headers=headers or server.headers, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_parse_and_count_a_request(server, openai_client):
    server.wait_idle()
    before = scrape(server)
    completion = openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    after = server.wait_idle() and scrape(server)
    stats = server.stats()
    generated = completion.usage.completion_tokens

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before[key]

    assert moved("lmdeploy_decode_tokens_total") == generated - 1  # the first comes from prefill
    assert moved("lmdeploy_prefill_tokens_total") == completion.usage.prompt_tokens
    assert moved("lmdeploy_engine_steps_total") >= generated
    reason = completion.choices[0].finish_reason
    assert moved("lmdeploy_sequences_finished_total", finish_reason=reason) == 1
    device = ("lmdeploy_kv_cache_blocks", (("pool", "device"),))
    assert after[device] == stats["num_blocks"] > 0
    free = ("lmdeploy_kv_cache_free_blocks", (("pool", "device"),))
    assert after[free] == stats["num_free_blocks"]
    assert after[("lmdeploy_sequences", (("state", "running"),))] == 0
    assert ("lmdeploy_preemptions_total", (("mode", "swap"),)) in after
    assert moved("lmdeploy_time_to_first_token_seconds_count") == 1
    assert 0 < moved("lmdeploy_time_to_first_token_seconds_sum") < 60


def test_metrics_need_the_api_key(server):
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
