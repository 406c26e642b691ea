"""PPO math with hand-computed values (method §4.3, §4.5, §10 item 8)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from salmon.ppo.math import (  # noqa: E402
    ShapingParams,
    gae,
    grpo_advantages,
    length_bonus,
    per_token_kl,
    policy_loss,
    rloo_advantages,
    shaped_rewards,
    value_loss,
    whiten,
)


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> bool:  # type: ignore[type-arg]
    return torch.allclose(actual.float(), torch.tensor(expected), atol=atol)


def test_length_bonus_caps_only_the_top() -> None:
    p = ShapingParams.method_defaults()
    got = length_bonus(torch.tensor([512, 1000, 1024]), torch.tensor([1.0, 1.0, -0.4]), p)
    # 5 * min(0.5, .8) = 2.5; 5 * min(0.977, .8) = 4.0; 5 * min(-0.4, .8) = -2.0
    assert got.tolist() == pytest.approx([2.5, 4.0, -2.0])


def test_kl_is_clamped_at_zero_and_masked() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert close(per_token_kl(logp, ref, mask), [[0.5, 0.0, 0.0]])


def test_shaped_rewards_hand_computed() -> None:
    """§10.8: RM + (-6 if no stop) + 5 min(mL/1024, .8) at the last token, -0.01 kl per token, x10."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    logp = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-2.0, -0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.2, -0.8, -1.0, 0.0], [-2.5, -0.5, 0.0, 0.0]])
    rewards, terminal = shaped_rewards(
        scores=torch.tensor([1.5, -0.5]), has_stop=torch.tensor([True, False]),
        lengths=torch.tensor([3, 2]), multipliers=torch.tensor([1.0, -0.4]),
        logp=logp, logp_ref=ref, mask=mask)
    t0 = 1.5 + 5 * 3 / 1024
    t1 = -0.5 - 6.0 + 5 * (-0.4 * 2 / 1024)
    assert terminal.tolist() == pytest.approx([10 * t0, 10 * t1])
    expected = [[10 * (-0.01 * 0.2), 0.0, 10 * t0, 0.0],
                [10 * (-0.01 * 0.5), 10 * t1, 0.0, 0.0]]
    assert close(rewards, expected, atol=1e-5)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])  # the padded value must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask)
    assert close(adv, [[6.0 - 0.5, 5.0 - 1.0, 3.0 - 1.5, 0.0]])
    assert close(ret, [[6.0, 5.0, 3.0, 0.0]])


def test_terminal_reward_on_the_last_real_token_gives_the_original_advantages() -> None:
    """The original puts the terminal reward on the last slot of the padded window and runs GAE
    over every slot (pads unmasked, V = 0 after the window). With gamma = lambda = 1 the real
    tokens' advantages equal ours, where it sits on the last real token."""
    kl_part = torch.tensor([[-0.1, -0.2, -0.3, 0.0, 0.0]])
    terminal, values = 4.0, torch.tensor([[0.5, -1.0, 2.0, 0.7, 0.3]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    ours = kl_part.clone()
    ours[0, 2] += terminal
    original = kl_part.clone()
    original[0, -1] += terminal
    adv_ours, _ = gae(ours, values, mask)
    # the original: every slot is "real", values on pads included
    adv_orig, _ = gae(original, values, torch.ones_like(mask))
    assert torch.allclose(adv_ours[0, :3], adv_orig[0, :3])
    # with gamma = lambda = 1 the sum telescopes: A_t = sum_{k>=t} r_k - V_t in both layouts
    assert close(adv_ours[0, :3], [4.0 - 0.6 - 0.5, 4.0 - 0.5 + 1.0, 4.0 - 0.3 - 2.0])


def test_gae_discounted_hand_computed() -> None:
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25]])
    mask = torch.ones(1, 2)
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    d1 = 1.0 - 0.25
    d0 = 0.0 + 0.5 * 0.25 - 0.5
    assert close(adv, [[d0 + 0.25 * d1, d1]])


def test_whiten_uses_the_whole_batch() -> None:
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert float(real.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(real.std()) == pytest.approx(1.0, abs=1e-5)
    assert float(w[0, 2]) == 0.0
    # 1..5: mean 3, unbiased std sqrt(2.5)
    assert float(w[0, 0]) == pytest.approx((1 - 3) / math.sqrt(2.5), abs=1e-5)


def test_whiten_over_all_slots_is_the_original_codes_whitening() -> None:
    """all_slots: every rollout counts its whole response window, the slots after its end as 0,
    population variance: the original's ``whiten`` over the zero-padded (B, response_len) tensor."""
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = whiten(x, mask, slots=4)
    # 1, 2, 0, 0, 3, 4, 5, 0: mean 15/8, population variance (sum of squares 55)/8 - mean^2
    mean = 15 / 8
    std = math.sqrt(55 / 8 - mean ** 2)
    assert float(w[0, 0]) == pytest.approx((1 - mean) / std, abs=1e-5)
    assert float(w[1, 2]) == pytest.approx((5 - mean) / std, abs=1e-5)
    assert float(w[0, 2]) == 0.0
    window = torch.zeros(2, 4)
    window[:, :3] = x * mask
    original = (window - window.mean()) / torch.sqrt(window.var(unbiased=False) + 1e-8)
    assert torch.allclose(w[mask.bool()], original[:, :3][mask.bool()], atol=1e-6)
    # the two choices differ after whitening: long responses weigh more over real tokens only
    assert not torch.allclose(whiten(x, mask), w)


def test_policy_loss_clipping() -> None:
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, clipfrac = policy_loss(logp, logp_old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped);
    # token 2: max(-2.2, -2.2) = -2.2
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert float(clipfrac) == pytest.approx(2 / 3)
    # at ratio 1 the gradient is -A
    lp = torch.zeros(1, 3, requires_grad=True)
    policy_loss(lp, logp_old, adv, mask)[0].backward()
    assert lp.grad is not None and close(lp.grad, [[-1 / 3, 1 / 3, -2 / 3]])


def test_value_loss_clipping() -> None:
    v = torch.tensor([[1.0, 0.0]])
    v_old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    # token 0: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: max(1, 1) = 1
    assert float(value_loss(v, v_old, ret, mask)) == pytest.approx(0.1 * 0.5 * (1.69 + 1.0) / 2)


def test_critic_free_advantages() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0]])
    assert close(rloo_advantages(s), [[1 - 2.5, 2 - 2.0, 3 - 1.5]])
    assert close(grpo_advantages(s), [[-1.0, 0.0, 1.0]], atol=1e-5)
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0]]))
