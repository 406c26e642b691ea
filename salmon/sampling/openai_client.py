"""A small client for OpenAI-compatible model servers (vLLM's ``api_server`` and the like).

What it does:

- ``GET {endpoint}/models`` lists the served models (:meth:`OpenAIClient.models`);
  :meth:`OpenAIClient.wait_ready` polls it until the server answers with at least one model.
- ``POST {endpoint}/completions`` with retries (:meth:`OpenAIClient.complete`), and many
  such requests at once on a thread pool (:meth:`OpenAIClient.complete_many`). One request may
  carry a list of prompts, which vLLM batches (and whose shared prefixes its prefix cache reuses).
- Connection errors, timeouts, 408, 429 and 5xx answers are retried with exponential backoff
  (``backoff_s * 2**attempt``, capped, or the server's ``Retry-After`` when it sends one).
  Other 4xx answers are not retried: they become one :class:`EndpointError` that says what
  the server objected to (a bad API key, an unknown model, a limit such as ``--max-logprobs``).

The API key is read from the environment variable named by ``api_key_env`` and sent as
``Authorization: Bearer <key>``; no key is sent when the variable is unset. Configs hold the
variable's NAME, never the key.

Connections are kept alive and reused (HTTP/1.1): a pool holds the idle ones, so a stage's
thousands of requests open about ``concurrency`` connections instead of one each. A reused
connection that the server has closed meanwhile is replaced at once, without a retry delay.

Standard library only (http.client, threads): no torch, no tokenizer, no ``openai`` package.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from salmon.core.errors import SalmonInputError

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try: the server is busy, restarting or briefly unhealthy."""

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EndpointError(SalmonInputError):
    """The server refused a request (4xx), or a request kept failing through every retry.

    ``status`` is the last HTTP status, or ``None`` when the server could not be reached.
    """

    def __init__(self, source: str, message: str, fix: str | None = None, status: int | None = None) -> None:
        super().__init__(source, message, fix)
        self.status = status


class _Retryable(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, detail: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class ServedModel:
    """One entry of ``/v1/models``.

    ``parent`` is set (by vLLM) when the entry is a LoRA adapter served under its own name on
    top of the base model ``parent``; it is ``None`` for a base model.
    """

    id: str
    parent: str | None = None
    max_model_len: int | None = None


def normalize_endpoint(url: str) -> str:
    """The base URL without a trailing slash; a bare ``http://host:port`` gets ``/v1`` appended.

    Raises:
        SalmonInputError: if ``url`` is not an http(s) URL with a host.
    """
    url = url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SalmonInputError(f"endpoint {url!r}", "is not an http(s) URL",
                               "give the server's base URL, e.g. endpoint=http://vllm:8000/v1")
    return url + "/v1" if parts.path == "" else url


def check_env_name(name: str) -> str:
    """``name`` must look like an environment variable name (so that a pasted key is caught)."""
    if not ENV_NAME.match(name):
        raise SalmonInputError(f"api_key_env {name[:4]}...", "is not an environment variable name",
                               "give the NAME of the variable that holds the key, e.g. SALMON_SAMPLER_API_KEY")
    return name


def choose_model(models: Sequence[ServedModel], served_model: str | None, adapter: bool,
                 endpoint: str = "the endpoint") -> str:
    """The model name to send in requests.

    - ``served_model`` given: it must be among ``models``.
    - otherwise, with ``adapter`` false: the first model listed (vLLM lists the base model first).
    - otherwise: the one LoRA adapter the server lists (an entry with a ``parent``). vLLM serves
      an adapter under its own name when started with ``--enable-lora --lora-modules name=path``.

    Raises:
        EndpointError: when the choice is impossible or ambiguous, listing what is served.
    """
    names = ", ".join(m.id for m in models) or "nothing"
    if served_model:
        if not any(m.id == served_model for m in models):
            raise EndpointError(f"endpoint {endpoint}", f"serves no model named '{served_model}' (it serves {names})",
                                "set served_model to one of the served names")
        return served_model
    if not models:
        raise EndpointError(f"endpoint {endpoint}", "lists no models at /models",
                            "wait until the server has loaded its model")
    if not adapter:
        return models[0].id
    loras = [m.id for m in models if m.parent and m.parent != m.id]
    if len(loras) == 1:
        return loras[0]
    if not loras:
        raise EndpointError(
            f"endpoint {endpoint}",
            f"an adapter is configured but the server serves no LoRA adapter (it serves {names})",
            "serve the adapter with --enable-lora --lora-modules <name>=<adapter folder>, or set served_model "
            "to a model with the adapter merged in")
    raise EndpointError(f"endpoint {endpoint}", f"serves several LoRA adapters ({', '.join(loras)})",
                        "set served_model to the adapter to use")


def _error_text(raw: bytes) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, vLLM's or FastAPI's forms."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)[:500]
        elif isinstance(err, str):
            return err[:500]
        if "detail" in data:
            return str(data["detail"])[:500]
    return json.dumps(data)[:300]


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIClient:
    """HTTP client of one OpenAI-compatible endpoint.

    Args:
        endpoint: base URL, e.g. ``http://vllm:8000/v1`` (see :func:`normalize_endpoint`).
        api_key_env: NAME of the environment variable holding the API key; read once, here.
        concurrency: requests in flight at once in :meth:`complete_many`.
        timeout_s: per-request timeout (connect and each read).
        max_retries: retries after the first attempt of a request.
        backoff_s: first retry delay; it doubles each retry, up to ``max_backoff_s``.
        sleep: the sleep function (tests pass a recorder).
        keep_alive: reuse connections (False: one connection per request, for a proxy that
            mishandles kept-alive connections).
    """

    def __init__(self, endpoint: str, *, api_key_env: str = "SALMON_SAMPLER_API_KEY", concurrency: int = 8,
                 timeout_s: float = 300.0, max_retries: int = 5, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, sleep: Callable[[float], None] = time.sleep,
                 keep_alive: bool = True) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.api_key_env = check_env_name(api_key_env)
        self.api_key = os.environ.get(api_key_env) or None
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        self.keep_alive = keep_alive
        self.attempts = 0  # HTTP requests sent, retries included
        self.connections = 0  # connections opened
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []  # open connections no request is using
        parts = urllib.parse.urlsplit(self.endpoint)
        self._scheme, self._host, self._port = parts.scheme, parts.hostname or "", parts.port
        self._base_path = parts.path.rstrip("/")

    @classmethod
    def from_config(cls, cfg: Any) -> OpenAIClient:
        """The client of a stage config's server fields (``endpoint``, ``api_key_env``,
        ``concurrency``, ``request_timeout_s``, ``max_retries``: the configs' ``_ServerConnection``);
        ``endpoint`` must be set."""
        return cls(cfg.endpoint, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                   timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries)

    # -- connections ---------------------------------------------------------------------------

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused: True), or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
            self.connections += 1
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout_s), False

    def _release(self, conn: http.client.HTTPConnection, keep: bool) -> None:
        if keep:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _exchange(self, method: str, path: str, data: bytes | None,
                  headers: dict[str, str]) -> tuple[int, bytes, Any]:
        """(status, body, headers) of one HTTP exchange on a pooled connection. A reused connection
        that fails before any answer (the server closed it while idle) is replaced once, at once."""
        while True:
            conn, reused = self._acquire()
            try:
                conn.request(method, self._base_path + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused:
                    continue
                raise
            self._release(conn, keep=self.keep_alive and not resp.will_close)
            return resp.status, raw, resp.headers

    # -- one HTTP exchange ---------------------------------------------------------------------

    def _once(self, method: str, path: str, body: dict[str, Any] | None, as_text: bool = False) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        with self._lock:
            self.attempts += 1
        try:
            status, raw, answer_headers = self._exchange(method, path, data, headers)
        except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        if status >= 400:
            text = _error_text(raw)
            if status in RETRY_STATUSES:
                raise _Retryable(f"HTTP {status}: {text}", status, _retry_after(answer_headers)) from None
            raise self._refusal(status, text, path) from None
        if as_text:
            return raw.decode("utf-8", errors="replace")
        try:
            return json.loads(raw)
        except ValueError:
            raise _Retryable(f"the answer to {path} is not JSON: {raw[:120]!r}") from None

    def _refusal(self, status: int, text: str, path: str) -> EndpointError:
        source = f"endpoint {self.endpoint}"
        if status in (401, 403):
            if self.api_key is None:
                return EndpointError(source, f"needs an API key (HTTP {status}: {text}) and ${self.api_key_env} "
                                             "is not set", f"put the server's key in ${self.api_key_env}", status)
            return EndpointError(source, f"refused the API key from ${self.api_key_env} (HTTP {status}: {text})",
                                 f"put the key the server was started with in ${self.api_key_env}", status)
        if status == 404:
            return EndpointError(source, f"HTTP 404 on {path}: {text}",
                                 "check that the endpoint ends in /v1 and that served_model is a served name",
                                 status)
        return EndpointError(source, f"rejected the request to {path} (HTTP {status}: {text})",
                             "check the settings against the server's limits (--max-model-len, --max-logprobs)",
                             status)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, as_text: bool = False) -> Any:
        """One API call with retries; returns the decoded JSON answer (``as_text``: the answer's
        text, for vLLM's admin endpoints that answer in plain text).

        Raises:
            EndpointError: on a 4xx other than 408/429, or when every attempt failed.
        """
        last: _Retryable | None = None
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(method, path, body, as_text)
            except _Retryable as e:
                last = e
                if attempt == self.max_retries:
                    break
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                if e.retry_after is not None:
                    delay = min(self.max_backoff_s, max(delay, e.retry_after))
                self.sleep(delay)
        assert last is not None
        raise EndpointError(f"endpoint {self.endpoint}",
                            f"{method} {path} failed {self.max_retries + 1} times, last with {last}",
                            "check that the server is up (its /v1/models answers) and reachable from here",
                            last.status)

    # -- the API -------------------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        """The served models, in the server's order."""
        data = self.request("GET", "/models")
        return self._parse_models(data)

    @staticmethod
    def _parse_models(data: Any) -> list[ServedModel]:
        out = []
        for m in data.get("data", []) if isinstance(data, dict) else []:
            if isinstance(m, dict) and m.get("id"):
                out.append(ServedModel(id=str(m["id"]), parent=m.get("parent"),
                                       max_model_len=m.get("max_model_len")))
        return out

    def wait_ready(self, timeout_s: float, poll_s: float = 2.0) -> list[ServedModel]:
        """Poll ``/models`` until it lists a model; returns the list.

        A refused API key fails at once; anything else (connection refused, 5xx, an empty
        list while the model loads) is polled again until ``timeout_s`` has passed.

        Raises:
            EndpointError: on a 401/403, or when the server is not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                models = self._parse_models(self._once("GET", "/models", None))
                if models:
                    return models
                last = "it lists no models yet"
            except _Retryable as e:
                last = str(e)
            except EndpointError as e:
                if e.status in (401, 403):
                    raise
                last = str(e)
            if time.monotonic() >= deadline:
                raise EndpointError(f"endpoint {self.endpoint}",
                                    f"was not ready within {timeout_s:g} s ({last})",
                                    "check that the server is running and has loaded its model, or raise "
                                    "ready_timeout_s")
            self.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or 0.01)

    def load_lora(self, name: str, path: str, in_place: bool = False) -> None:
        """Load the LoRA adapter folder ``path`` (as the server sees it) under the served name
        ``name`` (vLLM's runtime LoRA API: the server runs with ``--enable-lora`` and
        ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). ``in_place``: replace the weights of an
        adapter already served under ``name``. Without it, a retry whose first attempt went
        through finds the name loaded, which counts as loaded."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if in_place:
            body["load_inplace"] = True
        try:
            self.request("POST", "/load_lora_adapter", body, as_text=True)
        except EndpointError as e:
            if in_place or not (e.status == 400 and "already been loaded" in str(e)):
                raise

    def unload_lora(self, name: str) -> None:
        """Unload the LoRA adapter served as ``name``; one the server does not have is not an error."""
        try:
            self.request("POST", "/unload_lora_adapter", {"lora_name": name}, as_text=True)
        except EndpointError as e:
            if e.status not in (400, 404):
                raise

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One ``/completions`` call (with retries); the answer's ``choices`` are sorted by index."""
        answer = self.request("POST", "/completions", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise EndpointError(f"endpoint {self.endpoint}", "answered /completions without a choices list",
                                "point endpoint at an OpenAI-compatible server")
        answer["choices"].sort(key=lambda c: c.get("index", 0))
        return answer

    def complete_many(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`complete` for every body, ``concurrency`` at a time; answers in input order.

        The first error stops the rest (requests not yet started are cancelled) and is raised.
        """
        if self.concurrency == 1 or len(bodies) <= 1:
            return [self.complete(b) for b in bodies]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies)))
        try:
            futures = [pool.submit(self.complete, b) for b in bodies]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def choice_texts(answer: dict[str, Any], expected: int) -> list[str]:
    """The generated texts of one ``/completions`` answer, one per prompt.

    Raises:
        EndpointError: if the answer has a different number of choices.
    """
    choices = answer.get("choices", [])
    if len(choices) != expected:
        raise EndpointError("completions answer", f"has {len(choices)} choices for {expected} prompts",
                            "use a server that accepts a list of prompts (n=1)")
    return [str(c.get("text", "")) for c in choices]
