"""Rollout tensors on the tiny model: layout, temperature-scaled log-probs, values (method §4.3)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def lm(tiny_model: str):  # type: ignore[no-untyped-def]
    from salmon.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_model, device=torch.device("cpu")), load_tokenizer(tiny_model)


def test_layout() -> None:
    from salmon.ppo.rollout import make_batch

    b = make_batch([[5, 6], [7]], [[8], [9, 10, 11]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 8, 0, 0], [0, 7, 9, 10, 11]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert b.response_mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 2, 2], [0, 0, 1, 2, 3]]
    with pytest.raises(ValueError):
        make_batch([[]], [[1]], pad_id=0)


def test_logprobs_match_a_manual_computation_and_ignore_padding(lm) -> None:  # type: ignore[no-untyped-def]
    from salmon.ppo.rollout import make_batch, response_logprobs

    model, tok = lm
    q1, r1 = tok("### User\nAdd 2 and 3.")["input_ids"], tok(" 2 + 3 = 5.", add_special_tokens=False)["input_ids"]
    q2, r2 = tok("Hi")["input_ids"], tok(" Hello there, friend.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        batched = response_logprobs(model, make_batch([q1, q2], [r1, r2], tok.pad_token_id), temperature=0.7)
        alone = response_logprobs(model, make_batch([q1], [r1], tok.pad_token_id), temperature=0.7)
        full = torch.tensor([q1 + r1])
        logits = model(input_ids=full).logits[0].float() / 0.7
        manual = [torch.log_softmax(logits[len(q1) - 1 + t], -1)[r1[t]].item() for t in range(len(r1))]
    assert batched.shape == (2, max(len(r1), len(r2)))
    assert torch.allclose(alone[0, :len(r1)], torch.tensor(manual), atol=1e-4)
    assert torch.allclose(batched[0, :len(r1)], alone[0, :len(r1)], atol=1e-4)
    assert float(batched[0, len(r1):].abs().sum()) == 0.0
    with torch.no_grad():
        hot = response_logprobs(model, make_batch([q1], [r1], tok.pad_token_id), temperature=1.0)
    assert not torch.allclose(hot, alone)  # the temperature is applied


def test_value_head_starts_at_zero(lm) -> None:  # type: ignore[no-untyped-def]
    from salmon.ppo.rollout import make_batch, response_values, zero_value_head

    model, tok = lm
    batch = make_batch([tok("Hi")["input_ids"]], [[5, 6, 7]], tok.pad_token_id)
    with torch.no_grad():
        v = response_values(model.model, zero_value_head(model.config.hidden_size), batch)
    assert v.shape == (1, 3) and float(v.abs().sum()) == 0.0
