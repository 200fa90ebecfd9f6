"""Distillation losses: zero at the teacher, equal to independent computations elsewhere."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from training.losses import gaussian_distill_loss, gaussian_kl, hydra_loss, kd_loss, moment_match


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_losses_are_zero_when_student_equals_teacher(temperature: float) -> None:
    teacher = torch.randn(8, 5, 10)
    assert hydra_loss(teacher.clone(), teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)
    # The KD student matching the ensemble mean exactly: logits = log of the mean probabilities.
    mean_probs = torch.softmax(teacher / temperature, -1).mean(1)
    student = temperature * torch.log(mean_probs)
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(0.0, abs=1e-5)
    gauss = torch.stack([torch.randn(8, 5, 2), torch.rand(8, 5, 2) + 0.1], dim=2)
    assert gaussian_distill_loss(gauss.clone(), gauss).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    teacher, student, t = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 5)), 2.0
    soft = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)  # noqa: E731
    target = soft(teacher / t).mean(1)
    q = soft(student / t)
    want = t * t * (target * (np.log(target) - np.log(q))).sum(-1).mean()
    got = kd_loss(torch.as_tensor(student, dtype=torch.float32), torch.as_tensor(teacher, dtype=torch.float32), t)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_hydra_loss_is_mean_over_heads_of_kd() -> None:
    teacher, student = torch.randn(6, 4, 7), torch.randn(6, 4, 7)
    per_head = [kd_loss(student[:, m], teacher[:, m : m + 1], 1.5) for m in range(4)]
    assert hydra_loss(student, teacher, 1.5).item() == pytest.approx(torch.stack(per_head).mean().item(), rel=1e-5)


def test_gaussian_kl_matches_torch_distributions() -> None:
    mu_p, mu_q = torch.randn(100), torch.randn(100)
    var_p, var_q = torch.rand(100) + 0.05, torch.rand(100) + 0.05
    want = kl_divergence(Normal(mu_p, var_p.sqrt()), Normal(mu_q, var_q.sqrt()))
    torch.testing.assert_close(gaussian_kl(mu_p, var_p, mu_q, var_q), want, rtol=1e-4, atol=1e-5)


def test_moment_match_gives_mixture_mean_and_variance() -> None:
    heads = torch.tensor([[[[1.0], [0.5]], [[3.0], [1.5]]]])  # N(1, .5), N(3, 1.5)
    matched = moment_match(heads)
    assert matched.shape == (1, 1, 2, 1)
    assert matched[0, 0, 0, 0].item() == pytest.approx(2.0)
    assert matched[0, 0, 1, 0].item() == pytest.approx(2.0)  # mean var 1 + spread 1
