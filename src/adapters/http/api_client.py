"""APIClient: a small synchronous client of the api_server, as documented for lmdeploy."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx

logger = logging.getLogger(__name__)


def get_model_list(api_url: str, headers: dict[str, str] | None = None) -> list[str] | None:
    """The model ids that `GET api_url` (a server's /v1/models) lists; None if it fails."""
    try:
        response = httpx.get(api_url, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        logger.error("could not get the model list from %s: %s", api_url, exc)
        return None
    if response.status_code >= 400:
        logger.error("%s answered %d: %s", api_url, response.status_code, response.text[:200])
        return None
    return [card["id"] for card in response.json().get("data", [])]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"object": "error", "message": text}


class APIClient:
    """As 0.6.5's: each method yields the server's JSON, an error body included (it does not
    raise on an HTTP error; look for `"object": "error"`)."""

    def __init__(
        self, api_server_url: str, api_key: str | None = None, timeout: float = 600.0, **kwargs: Any
    ) -> None:
        self.api_server_url = api_server_url.rstrip("/")
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.api_server_url, headers=self.headers, timeout=timeout
        )
        self.chat_completions_v1_url = f"{self.api_server_url}/v1/chat/completions"
        self.completions_v1_url = f"{self.api_server_url}/v1/completions"
        self.chat_intractive_v1_url = f"{self.api_server_url}/v1/chat/interactive"
        self.models_v1_url = f"{self.api_server_url}/v1/models"
        self.encode_v1_url = f"{self.api_server_url}/v1/encode"

    @property
    def available_models(self) -> list[str] | None:
        return get_model_list(self.models_v1_url, self.headers)

    def encode(
        self, input: str | list[str], do_preprocess: bool = False, add_bos: bool = True
    ) -> tuple[Any, Any]:
        """(input_ids, length) of a prompt or of each of a list of prompts."""
        body = {"input": input, "do_preprocess": do_preprocess, "add_bos": add_bos}
        output = _json(self._http.post("/v1/encode", json=body).text)
        return output.get("input_ids"), output.get("length")

    def _post(self, path: str, body: dict[str, Any], lines: str | None) -> Iterator[dict[str, Any]]:
        """POST body; yield the JSON reply, or each streamed item ('sse' or 'ndjson')."""
        if lines is None:
            yield _json(self._http.post(path, json=body).text)
            return
        with self._http.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                yield _json(response.read().decode())
                return
            for line in response.iter_lines():
                if lines == "sse":
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    line = line[len("data: ") :]
                if line.strip():
                    yield json.loads(line)

    def chat_completions_v1(
        self,
        model: str,
        messages: str | list[dict[str, Any]],
        temperature: float = 0.7,
        top_p: float = 1.0,
        n: int = 1,
        max_tokens: int | None = None,
        stop: str | list[str] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Iterator[dict]:
        body = {
            "model": model,
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
            "n": n,
            "max_tokens": max_tokens,
            "stop": stop,
            "stream": stream,
            **kwargs,
        }
        yield from self._post("/v1/chat/completions", body, "sse" if stream else None)

    def completions_v1(
        self,
        model: str,
        prompt: str | list[Any],
        temperature: float = 0.7,
        n: int = 1,
        max_tokens: int | None = 16,
        stream: bool = False,
        stop: str | list[str] | None = None,
        top_p: float = 1.0,
        top_k: int = 40,
        **kwargs: Any,
    ) -> Iterator[dict]:
        body = {
            "model": model,
            "prompt": prompt,
            "temperature": temperature,
            "n": n,
            "max_tokens": max_tokens,
            "stream": stream,
            "stop": stop,
            "top_p": top_p,
            "top_k": top_k,
            **kwargs,
        }
        yield from self._post("/v1/completions", body, "sse" if stream else None)

    def chat_interactive_v1(
        self,
        prompt: str | list[dict[str, Any]],
        session_id: int = -1,
        interactive_mode: bool = False,
        stream: bool = False,
        stop: str | list[str] | None = None,
        request_output_len: int | None = None,
        top_p: float = 0.8,
        top_k: int = 40,
        temperature: float = 0.8,
        repetition_penalty: float = 1.0,
        ignore_eos: bool = False,
        skip_special_tokens: bool = True,
        **kwargs: Any,
    ) -> Iterator[dict]:
        body = {
            "prompt": prompt,
            "session_id": session_id,
            "interactive_mode": interactive_mode,
            "stream": stream,
            "stop": stop,
            "request_output_len": request_output_len,
            "top_p": top_p,
            "top_k": top_k,
            "temperature": temperature,
            "repetition_penalty": repetition_penalty,
            "ignore_eos": ignore_eos,
            "skip_special_tokens": skip_special_tokens,
            **kwargs,
        }
        yield from self._post("/v1/chat/interactive", body, "ndjson" if stream else None)

    def chat(
        self,
        prompt: str,
        session_id: int,
        request_output_len: int = 512,
        stream: bool = False,
        **kwargs: Any,
    ) -> Iterator[tuple[str, int, str | None]]:
        """One turn of an interactive session: yields (text, tokens, finish_reason)."""
        for item in self.chat_interactive_v1(
            prompt,
            session_id=session_id,
            interactive_mode=True,
            stream=stream,
            request_output_len=request_output_len,
            **kwargs,
        ):
            yield item["text"], item["tokens"], item["finish_reason"]

    def end_session(self, session_id: int) -> None:
        for _ in self.chat_interactive_v1("", session_id=session_id, interactive_mode=False):
            pass

    def close(self) -> None:
        self._http.close()
