"""PPO rollouts from a server (salmon.ppo.served): the request, the answer's ids, the health
figure, and the served adapter's life cycle (with a recording client; the real vLLM server is in
tests/test_vllm_server.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from salmon.ppo.served import (
    ServedPolicy,
    logprob_gap,
    parse_rollout,
    rollout_body,
    rollout_seed,
    server_stop_strings,
)


def test_the_turns_own_stop_string_is_sent_first_and_at_most_four() -> None:
    assert server_stop_strings("### User", ["x", "y", "z", "w", "### User"]) == ["### User", "x", "y", "z"]
    assert server_stop_strings(None, ["x", "x", ""]) == ["x"]
    assert server_stop_strings(None, []) == []


def test_every_rollout_has_its_own_seed_and_a_rerun_the_same() -> None:
    seeds = [rollout_seed(3, 2, i) for i in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [rollout_seed(3, 2, i) for i in range(64)]
    assert rollout_seed(3, 2, 0) != rollout_seed(3, 3, 0) != rollout_seed(4, 2, 0)


def test_the_request_asks_for_ids_logprobs_and_the_stop_string_kept() -> None:
    body = rollout_body("p-step-1", [5, 6, 7], max_tokens=12, temperature=0.7, top_p=0.9, seed=11,
                        stop=["### User"], end_ids=[2])
    assert body == {"model": "p-step-1", "prompt": [[5, 6, 7]], "max_tokens": 12, "temperature": 0.7, "top_p": 0.9,
                    "seed": 11, "n": 1, "stop": ["### User"], "include_stop_str_in_output": True,
                    "stop_token_ids": [2], "logprobs": 0, "return_tokens_as_token_ids": True}


def test_the_answer_gives_ids_and_logprobs_or_a_clear_error() -> None:
    answer = {"choices": [{"logprobs": {"tokens": ["token_id:7", "token_id:2"], "token_logprobs": [-0.5, None]}}]}
    assert parse_rollout(answer) == ([7, 2], [-0.5, 0.0])
    with pytest.raises(ValueError, match="is not 'token_id:N'"):
        parse_rollout({"choices": [{"logprobs": {"tokens": ["hello"], "token_logprobs": [-1.0]}}]})
    with pytest.raises(ValueError, match="expected one choice"):
        parse_rollout({"choices": []})


def test_the_logprob_gap_is_the_mean_absolute_difference_over_shared_tokens() -> None:
    # |(-1) - (-1.5)| = 0.5, |(-2) - (-2)| = 0, |(-0.5) - (-0.25)| = 0.25: mean 0.25
    assert logprob_gap([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0, -9.0], [-0.25]]) == pytest.approx(0.25)
    assert logprob_gap([[]], [[]]) is None


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.paths: list[str] = []

    def load_lora(self, name: str, path: str, in_place: bool = False) -> None:
        if not path.startswith("/mnt/"):
            assert (Path(path) / "adapter_config.json").is_file(), "the folder is complete before the server reads it"
        self.calls.append(("load", name, in_place))
        self.paths.append(path)

    def unload_lora(self, name: str) -> None:
        self.calls.append(("unload", name, False))


def _save(folder: Path) -> None:
    (folder / "adapter_config.json").write_text("{}")


def test_each_step_loads_its_own_adapter_and_drops_the_previous(tmp_path: Path) -> None:
    client = _Recorder()
    served = ServedPolicy(client, tmp_path / "served", None, run_key="run-a")
    names = [served.publish(step, _save) for step in (0, 1, 2)]
    assert len(set(names)) == 3 and all(n.startswith("salmon-policy-") for n in names)
    assert names[0] != ServedPolicy(client, tmp_path, None, run_key="run-b").name(0), "runs do not collide"
    assert client.calls == [("load", names[0], True), ("load", names[1], True), ("unload", names[0], False),
                            ("load", names[2], True), ("unload", names[1], False)]
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == [names[2]]
    served.close()
    assert client.calls[-1] == ("unload", names[2], False)


def test_a_resumed_run_replaces_what_the_killed_one_left_on_the_server(tmp_path: Path) -> None:
    client = _Recorder()
    name = ServedPolicy(client, tmp_path / "s", "/mnt/shared/s", run_key="r").publish(5, _save)
    # in place (the killed run may have loaded step 5 already), and step 4's adapter is unloaded
    assert client.calls == [("load", name, True), ("unload", name.replace("step-5", "step-4"), False)]
    assert client.paths == [f"/mnt/shared/s/{name}"], "the folder as the server sees it"
    assert (tmp_path / "s" / name / "adapter_config.json").is_file()


def test_server_rollouts_need_an_endpoint(tmp_path: Path) -> None:
    from salmon.core.config import PPOConfig, build_config
    from salmon.core.errors import SalmonInputError

    values: dict[str, Any] = dict(prompts="p.jsonl", policy_model="m", reward_model="rm", output_dir=str(tmp_path),
                                  rollout_backend="openai")
    with pytest.raises(SalmonInputError, match="set endpoint=<base URL>"):
        build_config(PPOConfig, stage="ppo", values=values)
    cfg = build_config(PPOConfig, stage="ppo", values={**values, "endpoint": "http://vllm:8000/v1"})
    assert cfg.rollout_backend == "openai" and cfg.served_adapter_dir is None


def test_the_pipeline_points_ppo_and_eval_policy_at_the_runs_server() -> None:
    import json

    from salmon.tasks.infra import rollout_values

    server = json.dumps({"endpoint": "http://vllm-x.ns.svc:8000/v1", "served_model": "sft",
                         "adapter_dir": "/mnt/models/salmon-serve/vllm-x/served"})
    assert rollout_values("hf", server) == {}
    assert rollout_values("openai", server) == {"rollout_backend": "openai", "endpoint": "http://vllm-x.ns.svc:8000/v1",
                                                "served_adapter_dir": "/mnt/models/salmon-serve/vllm-x/served"}
    # sampler=endpoint: the server reads the adapters where the task writes them (a shared volume)
    assert rollout_values("openai", json.dumps({"endpoint": "http://e/v1"})) == {
        "rollout_backend": "openai", "endpoint": "http://e/v1"}
