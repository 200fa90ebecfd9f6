"""The uncertainty formulas of docs/design.md, one implementation in torch.

It is used by evaluation and traced into every exported graph, so the service (which reads
the graph's outputs) and the report compute exactly the same numbers.
Entropies in nats; axis order (B, M, C).
"""

from __future__ import annotations

import math

import torch


def classification_outputs(head_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """head_logits [B, M, C] -> mean_probs [B, C], uncertainties [B], head_disagreement [B, M]."""
    head_logits = head_logits.float()
    num_heads = head_logits.shape[1]
    head_log_probs = torch.log_softmax(head_logits, dim=-1)  # [B, M, C]
    head_probs = head_log_probs.exp()  # [B, M, C]
    mean_log_probs = torch.logsumexp(head_log_probs, dim=1) - math.log(num_heads)  # [B, C]
    mean_probs = mean_log_probs.exp()  # [B, C]
    total = -(mean_probs * mean_log_probs).sum(-1)  # [B]
    data = -(head_probs * head_log_probs).sum(-1).mean(1)  # [B]
    # KL(p_m || p_bar) per head: the per-head disagreement; its mean is the model uncertainty.
    head_kl = (head_probs * (head_log_probs - mean_log_probs.unsqueeze(1))).sum(-1)  # [B, M]
    head_kl = head_kl.clamp_min(0.0)
    model = head_kl.mean(1)  # [B]
    mean_class = mean_probs.argmax(-1, keepdim=True)  # [B, 1]
    rate = (head_logits.argmax(-1) != mean_class).float().mean(1)  # [B]
    return {
        "mean_probs": mean_probs,
        "total_uncertainty": total,
        "data_uncertainty": data,
        "model_uncertainty": model,
        "head_disagreement": head_kl,
        "disagreement_rate": rate,
    }


def regression_outputs(head_gaussians: torch.Tensor) -> dict[str, torch.Tensor]:
    """head_gaussians [B, M, 2, D] (mean, variance) -> mean, variance [B, D], uncertainties [B]."""
    head_gaussians = head_gaussians.float()
    head_means = head_gaussians[:, :, 0]  # [B, M, D]
    head_vars = head_gaussians[:, :, 1]  # [B, M, D]
    mean = head_means.mean(1)  # [B, D]
    sq_dev = (head_means - mean.unsqueeze(1)) ** 2  # [B, M, D]
    data_var = head_vars.mean(1)  # [B, D]
    model_var = sq_dev.mean(1)  # [B, D]
    data = data_var.sum(-1)  # [B]
    model = model_var.sum(-1)  # [B]
    return {
        "mean": mean,
        "variance": data_var + model_var,
        "total_uncertainty": data + model,
        "data_uncertainty": data,
        "model_uncertainty": model,
        "head_disagreement": sq_dev.sum(-1),  # [B, M]
    }


def derived_outputs(task: str, head_outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    if task == "classification":
        return classification_outputs(head_outputs)
    return regression_outputs(head_outputs)
