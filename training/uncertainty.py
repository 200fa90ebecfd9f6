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


def regression_outputs(head_gaussians: torch.Tensor, target_mean: torch.Tensor | None = None,
                       target_std: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """head_gaussians [B, M, 2, D] (mean, variance) -> mean, variance [B, D], uncertainties [B].

    With ``target_mean`` and ``target_std`` ([D]) the heads are in standardized target units
    (mean 0, std 1 on the training targets) and every output comes back in the target's units.
    The spread between heads is then taken before the target's offset is added: with targets
    around 10,000 and a std of 77, heads in target units would lose about 7 bits of their
    differences to float32 rounding before they are subtracted.
    """
    head_gaussians = head_gaussians.float()
    head_means = head_gaussians[:, :, 0]  # [B, M, D]
    head_vars = head_gaussians[:, :, 1]  # [B, M, D]
    scaled = target_std is not None and target_mean is not None
    num_heads = head_means.shape[1]

    def over_heads(t: torch.Tensor) -> torch.Tensor:  # [B, M, D] -> [B, D]
        # Scaled, no average is the graph's `mean` output itself, and the exporter would name an
        # aten.mean node like that output: sums keep the names apart.
        return t.sum(1) / num_heads if scaled else t.mean(1)

    mean = over_heads(head_means)  # [B, D]
    sq_dev = (head_means - mean.unsqueeze(1)) ** 2  # [B, M, D]
    data_var = over_heads(head_vars)  # [B, D]
    model_var = over_heads(sq_dev)  # [B, D]
    if scaled:
        unit = target_std.float() ** 2  # [D]
        mean = mean * target_std.float() + target_mean.float()
        sq_dev, data_var, model_var = sq_dev * unit, data_var * unit, model_var * unit
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


def to_target_units(heads_std: torch.Tensor, target_mean: torch.Tensor,
                    target_std: torch.Tensor) -> torch.Tensor:
    """Regression heads [B, M, 2, D] (mean, variance) from standardized to the target's units."""
    mean = heads_std[:, :, 0] * target_std + target_mean  # [B, M, D]
    var = heads_std[:, :, 1] * target_std**2  # [B, M, D]
    return torch.stack([mean, var], dim=2)  # [B, M, 2, D]


def derived_outputs(task: str, head_outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """From per-head outputs in the target's units (see ``network_outputs`` for a network)."""
    if task == "classification":
        return classification_outputs(head_outputs)
    return regression_outputs(head_outputs)


def network_outputs(net: torch.nn.Module, x: torch.Tensor, task: str,
                    normalized: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A network's per-head outputs (target units) and its derived outputs on raw inputs ``x``
    (or on normalized ones). A regression network that standardizes its targets
    (``standardized_heads``) gets its derived outputs computed in standardized units and
    mapped back, so they are as precise whatever the target's offset and scale."""
    standardized = getattr(net, "standardized_heads", None)
    if task == "regression" and standardized is not None:
        z = x if normalized else net.normalize(x)
        heads_std = standardized(z)  # [B, M, 2, D]
        mean, std = net.target_stats()
        return to_target_units(heads_std, mean, std), regression_outputs(heads_std, mean, std)
    heads = net.forward_normalized(x) if normalized else net(x)
    return heads, derived_outputs(task, heads)
