"""The ``openai`` backend of sample and label against an in-process OpenAI-compatible server.

The fake server (``http.server`` on 127.0.0.1, in a thread) answers ``/v1/models`` and
``/v1/completions`` with the REAL tiny nano model: token-id and text prompts, top
log-probabilities keyed ``token_id:<id>``, echo with prompt log-probabilities, seeded sampling
with stop strings, an API key, a ``--max-logprobs`` limit, and injected failures. It returns
choices in reverse order, so the client's re-ordering by index is exercised too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from servers import free_port

from salmon.cli import main
from salmon.core.errors import SalmonInputError
from salmon.core.io import read_jsonl, write_jsonl
from salmon.core.records import Judgement, ResponsePair
from salmon.core.templates import DROMEDARY_SYSTEM
from salmon.nano.world import make_pairs, make_prompts
from salmon.sampling.openai_client import (
    EndpointError,
    OpenAIClient,
    ServedModel,
    choose_model,
    normalize_endpoint,
)

torch = pytest.importorskip("torch")

KEY_ENV = "SALMON_SAMPLER_API_KEY"


class FakeOpenAI:
    """An OpenAI-compatible server over a local HF model, with knobs for the tests."""

    def __init__(self, model_dir: str, api_key: str | None = None, max_logprobs: int = 20,
                 loras: tuple[str, ...] = ()) -> None:
        from salmon.modeling import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(model_dir, device=torch.device("cpu"))
        self.tok = load_tokenizer(model_dir)
        self.api_key = api_key
        self.max_logprobs = max_logprobs
        self.models = [{"id": "nano", "object": "model", "root": model_dir, "parent": None, "max_model_len": 1024}]
        self.models += [{"id": name, "object": "model", "root": "/adapters/" + name, "parent": "nano",
                         "max_model_len": 1024} for name in loras]
        self.honours_token_ids = True  # False: ignore logprob_token_ids, as servers without it do
        self.fail: list[tuple[int, dict[str, str]]] = []  # (status, headers) answered before serving
        self.bodies: list[dict[str, Any]] = []  # completions requests that were served
        self.hits = 0  # completions requests received, failed ones included
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- the model ---------------------------------------------------------------------------

    def _key(self, body: dict[str, Any], token: int) -> str:
        return f"token_id:{token}" if body.get("return_tokens_as_token_ids") else self.tok.decode([token])

    def _tops(self, body: dict[str, Any], rows: Any, k: int) -> list[dict[str, float]]:
        values, indices = rows.topk(k, dim=-1)
        return [{self._key(body, t): v for t, v in zip(ts, vs, strict=True)}
                for ts, vs in zip(indices.tolist(), values.tolist(), strict=True)]

    def _scored(self, ids: list[int], body: dict[str, Any], index: int) -> dict[str, Any]:
        with self._lock, torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        k = int(body["logprobs"])
        nxt = int(lp[-1].argmax())
        if body.get("echo"):
            tokens = [*ids, nxt]
            picked = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
            values: list[float | None] = [None, *picked]
            tops: list[dict[str, float] | None] = [None, *self._tops(body, lp[:-1], k)]
        else:
            tokens, values, tops = [nxt], [], []
        values.append(float(lp[-1, nxt]))
        wanted = body.get("logprob_token_ids") if self.honours_token_ids else None
        if wanted:  # the sampled token and exactly the tokens asked for
            tops.append({self._key(body, t): float(lp[-1, t]) for t in [nxt, *wanted]})
        else:
            tops += self._tops(body, lp[-1:], k)
        return {"index": index, "text": self.tok.decode([nxt]), "finish_reason": "length",
                "logprobs": {"tokens": [self._key(body, t) for t in tokens], "token_logprobs": values,
                             "top_logprobs": tops, "text_offset": list(range(len(tokens)))}}

    def _sampled(self, ids: list[int], body: dict[str, Any], index: int) -> dict[str, Any]:
        with self._lock, torch.no_grad():
            torch.manual_seed(int(body.get("seed", 0)))  # per request and prompt, as vLLM's seeded requests
            out = self.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=True, temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                top_k=0, max_new_tokens=int(body.get("max_tokens", 16)), pad_token_id=self.tok.pad_token_id)
        text = self.tok.decode(out[0, len(ids):], skip_special_tokens=True)
        for stop in body.get("stop") or []:
            text = text.split(stop, 1)[0]
        return {"index": index, "text": text, "finish_reason": "stop", "logprobs": None}

    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("model") not in {m["id"] for m in self.models}:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                   "type": "NotFoundError", "code": 404}}
        if body.get("logprobs") is not None and int(body["logprobs"]) > self.max_logprobs:
            return 400, {"error": {"message": f"Requested sample logprobs of {body['logprobs']}, which is greater "
                                              f"than max allowed: {self.max_logprobs}", "type": "BadRequestError"}}
        wanted = body.get("logprob_token_ids") if self.honours_token_ids else None
        if wanted and body.get("logprobs") != len(wanted):
            return 400, {"error": {"message": "logprobs must equal len(logprob_token_ids)"}}
        prompts = body["prompt"]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        choices = []
        for i, p in enumerate(prompts):
            ids = list(self.tok(p)["input_ids"]) if isinstance(p, str) else list(p)
            scored = body.get("logprobs") is not None
            choices.append(self._scored(ids, body, i) if scored else self._sampled(ids, body, i))
        self.bodies.append(body)
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body["model"], "choices": choices[::-1]}

    # -- HTTP ------------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _authorized(self) -> bool:
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": fake.models})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self._authorized():
                    return
                if self.path != "/v1/completions":
                    self._send(404, {"detail": "Not Found"})
                    return
                with fake._lock:
                    fake.hits += 1
                    failure = fake.fail.pop(0) if fake.fail else None
                if failure:
                    self._send(failure[0], {"error": {"message": "busy, try again"}}, failure[1])
                    return
                self._send(*fake.completions(body))

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


@pytest.fixture()
def fake(tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAI(tiny_model, max_logprobs=4096, loras=("nano-sft",)) as server:
        yield server


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, make_pairs(make_prompts(6, seed=11), seed=12))  # different lengths
    return path


def _label(pairs: Path, out: Path, *extra: str) -> list[str]:
    return ["label", f"pairs={pairs}", f"output={out}", "principles=nano", "progress=false", *extra]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    return dict(json.loads(capsys.readouterr().out)["metrics"])


def _assert_same_deltas(got: list[Judgement], want: list[Judgement], tol: float) -> None:
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert (a.pair_id, a.principle_id) == (b.pair_id, b.principle_id)
        assert a.delta_12 == pytest.approx(b.delta_12, abs=tol)
        assert a.delta_21 == pytest.approx(b.delta_21, abs=tol)


def test_label_openai_deltas_equal_hf_deltas(tiny_model: str, fake: FakeOpenAI, pairs_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    hf_out, top_out, echo_out = tmp_path / "hf.jsonl", tmp_path / "top.jsonl", tmp_path / "echo.jsonl"
    _run(_label(pairs_file, hf_out, "backend=hf", f"model={tiny_model}", "device=cpu"), capsys)
    want = read_jsonl(hf_out, Judgement)
    assert len({round(j.delta_12, 4) for j in want}) > 10  # a judge that ignored its input would fail below

    # default: the letters' log-probabilities asked for by token id, four requests in flight
    top = _run(_label(pairs_file, top_out, "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}",
                      "concurrency=4", "batch_size=2"), capsys)
    got_top = read_jsonl(top_out, Judgement)
    _assert_same_deltas(got_top, want, 1e-4)
    assert all(j.backend == "openai" for j in got_top)
    assert top["echo_scored_prompts"] == 0
    assert top["requests"] == 6 * 2  # one request per pair and order, six principles each
    # the prompts are the hf judge's token ids: BOS first, one prompt per principle, as token lists
    first = fake.bodies[0]
    assert first["model"] == "nano" and len(first["prompt"]) == 6 and first["max_tokens"] == 1
    assert first["prompt"][0][0] == fake.tok.bos_token_id and all(isinstance(t, int) for t in first["prompt"][0])
    id_a, id_b = fake.tok.convert_tokens_to_ids(["a", "b"])
    assert first["logprob_token_ids"] == [id_a, id_b] and first["logprobs"] == 2
    assert first["return_tokens_as_token_ids"] is True

    # top K = 1 cannot hold both letters: every prompt falls back to echo, one request at a time
    echo = _run(_label(pairs_file, echo_out, "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}",
                       "letter_logprobs=top", "top_logprobs=1", "concurrency=1", "limit=2"), capsys)
    assert echo["echo_scored_prompts"] == 2 * 6 * 2 and echo["requests"] == 4 + 24
    got_echo = read_jsonl(echo_out, Judgement)
    _assert_same_deltas(got_echo, want[:12], 1e-4)
    _assert_same_deltas(got_echo, got_top[:12], 1e-5)

    # echo only; and a server that ignores logprob_token_ids (its top 2 rarely hold both letters)
    only = _run(_label(pairs_file, tmp_path / "only.jsonl", "backend=openai", f"endpoint={fake.url}",
                       f"model={tiny_model}", "letter_logprobs=echo", "limit=1"), capsys)
    assert only["echo_scored_prompts"] == only["requests"] == 12
    _assert_same_deltas(read_jsonl(tmp_path / "only.jsonl", Judgement), want[:6], 1e-4)
    fake.honours_token_ids = False
    _run(_label(pairs_file, tmp_path / "old.jsonl", "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}",
                "limit=1"), capsys)
    _assert_same_deltas(read_jsonl(tmp_path / "old.jsonl", Judgement), want[:6], 1e-4)


def test_label_openai_resumes(tiny_model: str, fake: FakeOpenAI, pairs_file: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "j.jsonl"
    args = _label(pairs_file, out, "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}", "batch_size=2")
    _run(args, capsys)
    full = read_jsonl(out, Judgement)
    partial = out.with_name(out.name + ".partial")
    out.unlink()
    lines = [j.model_dump_json() + "\n" for j in full[: 4 * 6 + 2]]  # 4 complete pairs, then a cut line
    partial.write_text("".join(lines) + lines[-1][:25])
    fake.bodies.clear()
    metrics = _run(args, capsys)
    assert metrics["pairs_judged_now"] == 2 and len(fake.bodies) == 2 * 2
    assert read_jsonl(out, Judgement) == full
    assert not partial.exists()


def test_sample_openai_is_seeded_and_batching_free(fake: FakeOpenAI, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, make_prompts(6, seed=4))

    def sample(out: str, *extra: str) -> list[ResponsePair]:
        _run(["sample", f"prompts={prompts}", f"output={tmp_path / out}", "backend=openai",
              f"endpoint={fake.url}", "max_new_tokens=20", "min_chars=0", *extra], capsys)
        return read_jsonl(tmp_path / out, ResponsePair)

    a = sample("a.jsonl", "batch_size=4", "concurrency=2")
    assert len(a) == 6 and all(p.output_1 != p.output_2 for p in a)
    assert all("###" not in p.output_1 + p.output_2 for p in a)
    bodies = list(fake.bodies)
    assert {b["seed"] for b in bodies} == {42, 43} and len(bodies) == 2 * 2
    assert all(b["temperature"] == 0.7 and b["max_tokens"] == 20 and b["stop"] == ["###"] for b in bodies)
    assert all(b["model"] == "nano" and "logprobs" not in b for b in bodies)
    query = bodies[0]["prompt"][0]
    assert query.startswith(DROMEDARY_SYSTEM + "\n") and query.endswith("\n\n### Dromedary")
    # the same seeds give the same pairs whatever the batching and concurrency
    assert sample("b.jsonl", "batch_size=1", "concurrency=1") == a
    # other seeds give other responses
    c = sample("c.jsonl", "seeds=[7, 8]")
    assert [p.output_1 for p in c] != [p.output_1 for p in a]
    # with an adapter configured, the server's one LoRA model is used
    fake.bodies.clear()
    sample("d.jsonl", f"adapter={tmp_path / 'adapter'}", "limit=1")
    assert {b["model"] for b in fake.bodies} == {"nano-sft"}


def test_retries_on_503_then_succeeds(fake: FakeOpenAI) -> None:
    sleeps: list[float] = []
    client = OpenAIClient(fake.url, max_retries=3, backoff_s=0.25, sleep=sleeps.append)
    fake.fail = [(503, {}), (503, {}), (429, {"Retry-After": "2"})]
    answer = client.complete({"model": "nano", "prompt": [[1, 5, 9]], "max_tokens": 1, "logprobs": 2})
    assert len(answer["choices"]) == 1 and fake.hits == 4
    assert sleeps == [0.25, 0.5, 2.0]  # doubling, then the server's Retry-After

    fake.fail = [(503, {})] * 3
    client = OpenAIClient(fake.url, max_retries=2, backoff_s=0.01, sleep=sleeps.append)
    with pytest.raises(EndpointError, match="failed 3 times, last with HTTP 503") as err:
        client.complete({"model": "nano", "prompt": [[1]], "max_tokens": 1, "logprobs": 1})
    assert err.value.status == 503


def test_label_stage_retries_a_503(tiny_model: str, fake: FakeOpenAI, pairs_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake.fail = [(503, {"Retry-After": "0"})]
    out = tmp_path / "j.jsonl"
    _run(_label(pairs_file, out, "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}", "limit=1",
                "concurrency=1"), capsys)
    assert len(read_jsonl(out, Judgement)) == 6 and fake.hits == 3  # 1 failed + 2 orders


def test_api_key_errors_exit_2(tiny_model: str, pairs_file: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAI(tiny_model, api_key="s3cret-key") as server:
        out = tmp_path / "j.jsonl"
        args = _label(pairs_file, out, "backend=openai", f"endpoint={server.url}", f"model={tiny_model}",
                      "ready_timeout_s=30")
        t0 = time.monotonic()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - t0 < 10  # a refused key is not waited on
        assert f"${KEY_ENV} is not set" in err and "HTTP 401" in err and "Traceback" not in err
        assert not out.exists()

        monkeypatch.setenv(KEY_ENV, "wrong")
        assert main(args) == 2
        assert "refused the API key" in capsys.readouterr().err

        monkeypatch.setenv("MY_VLLM_KEY", "s3cret-key")  # the variable's name is configurable
        _run([*args, "api_key_env=MY_VLLM_KEY", "limit=1"], capsys)
        assert len(read_jsonl(out, Judgement)) == 6

    # a config that holds a key instead of a variable name is rejected
    assert main([*args, "api_key_env=sk-live-123"]) == 2
    assert "api_key_env" in capsys.readouterr().err


def test_server_refusals_are_clear(tiny_model: str, fake: FakeOpenAI, pairs_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "j.jsonl"
    base = _label(pairs_file, out, "backend=openai", f"endpoint={fake.url}", f"model={tiny_model}")
    assert main([*base, "served_model=ghost"]) == 2
    assert "serves no model named 'ghost' (it serves nano, nano-sft)" in capsys.readouterr().err
    fake.max_logprobs = 5
    assert main([*base, "letter_logprobs=top", "top_logprobs=20"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "max allowed: 5" in err and "--max-logprobs" in err
    assert main(["label", f"pairs={pairs_file}", f"output={out}", "backend=openai", f"model={tiny_model}"]) == 2
    assert "needs endpoint=" in capsys.readouterr().err
    with pytest.raises(EndpointError, match="does not exist") as e:
        OpenAIClient(fake.url).complete({"model": "ghost", "prompt": "hi", "max_tokens": 1})
    assert e.value.status == 404
    assert not out.exists()


def test_wait_ready_times_out_on_a_dead_endpoint() -> None:
    client = OpenAIClient(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    assert client.endpoint.endswith("/v1")
    t0 = time.monotonic()
    with pytest.raises(EndpointError, match="not ready within 0.5 s"):
        client.wait_ready(0.5, poll_s=0.1)
    assert time.monotonic() - t0 < 5


def test_endpoint_and_model_choice() -> None:
    assert normalize_endpoint("http://vllm:8000") == "http://vllm:8000/v1"
    assert normalize_endpoint("http://vllm:8000/v1/") == "http://vllm:8000/v1"
    assert normalize_endpoint("https://gw.example/openai/v1") == "https://gw.example/openai/v1"
    with pytest.raises(SalmonInputError, match="not an http"):
        normalize_endpoint("vllm:8000")
    base, lora = ServedModel("base"), ServedModel("sft", parent="base")
    assert choose_model([base, lora], None, adapter=False) == "base"
    assert choose_model([base, lora], None, adapter=True) == "sft"
    assert choose_model([base, lora], "base", adapter=True) == "base"
    with pytest.raises(EndpointError, match="serves no LoRA adapter"):
        choose_model([base], None, adapter=True)
    with pytest.raises(EndpointError, match="several LoRA adapters"):
        choose_model([base, lora, ServedModel("sft2", parent="base")], None, adapter=True)
