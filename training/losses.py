"""Distillation losses. All return a scalar averaged over the batch; all are 0 when the
student equals the teacher.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Phase 1 (classic KD): T^2 KL(mean_m softmax(z_m/T) || softmax(z_hat/T)).

    student_logits [B, C]; teacher_logits [B, M, C].
    """
    t = temperature
    num_heads = teacher_logits.shape[1]
    teacher_log_probs = torch.log_softmax(teacher_logits.float() / t, dim=-1)  # [B, M, C]
    target_log = torch.logsumexp(teacher_log_probs, dim=1) - math.log(num_heads)  # [B, C]
    student_log = torch.log_softmax(student_logits.float() / t, dim=-1)  # [B, C]
    kl = (target_log.exp() * (target_log - student_log)).sum(-1)  # [B]
    return t * t * kl.mean()


def hydra_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Phase 2: (1/M) sum_m T^2 KL(softmax(z_m/T) || softmax(z_hat_m/T)). Both [B, M, C]."""
    t = temperature
    teacher_log = torch.log_softmax(teacher_logits.float() / t, dim=-1)  # [B, M, C]
    student_log = torch.log_softmax(student_logits.float() / t, dim=-1)  # [B, M, C]
    kl = (teacher_log.exp() * (teacher_log - student_log)).sum(-1)  # [B, M]
    return t * t * kl.mean()


def gaussian_kl(mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_p, var_p) || N(mu_q, var_q)) elementwise."""
    return 0.5 * (torch.log(var_q) - torch.log(var_p)) + (var_p + (mu_p - mu_q) ** 2) / (2 * var_q) - 0.5


def moment_match(head_gaussians: torch.Tensor) -> torch.Tensor:
    """[B, M, 2, D] -> the mixture's moment-matched Gaussian [B, 1, 2, D]."""
    means, variances = head_gaussians[:, :, 0], head_gaussians[:, :, 1]  # [B, M, D]
    mean = means.mean(1)  # [B, D]
    # The spread about the mean, not E[x^2] - mean^2: that cancels to noise (or below 0) when
    # the targets sit far from 0 relative to their spread (prices around 10,000, std 77).
    var = variances.mean(1) + ((means - mean.unsqueeze(1)) ** 2).mean(1)  # [B, D]
    return torch.stack([mean, var], dim=1).unsqueeze(1)


def gaussian_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over batch, heads and outputs of KL(teacher_m || student_m); both [B, M, 2, D].

    A one-head student against an M-head teacher matches the moment-matched Gaussian
    (phase 1); M heads against M members match head by head (phase 2).
    """
    if student.shape[1] == 1 and teacher.shape[1] > 1:
        teacher = moment_match(teacher)
    teacher, student = teacher.float(), student.float()
    return gaussian_kl(teacher[:, :, 0], teacher[:, :, 1], student[:, :, 0], student[:, :, 1]).mean()


def distill_loss(task: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if task == "regression":
        return gaussian_distill_loss(student, teacher)
    if student.shape[1] == 1:
        return kd_loss(student[:, 0], teacher, temperature)
    return hydra_loss(student, teacher, temperature)


def ground_truth_loss(task: str, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (outputs [B, M, C], y [B]) or Gaussian NLL ([B, M, 2, D], y [B, D]), head mean."""
    if task == "classification":
        b, m, c = outputs.shape
        return F.cross_entropy(outputs.float().reshape(b * m, c), y.repeat_interleave(m))
    mean, var = outputs[:, :, 0].float(), outputs[:, :, 1].float()  # [B, M, D]
    # Written out rather than F.gaussian_nll_loss, which clamps variances below 1e-6 in the
    # target's units: a target measured in millionths would have every variance clamped.
    # The networks' variances are positive by construction (a floor relative to the target's
    # scale), so nothing needs clamping.
    err = y.unsqueeze(1).float() - mean  # [B, M, D]
    return 0.5 * (torch.log(2 * math.pi * var) + err**2 / var).mean()
