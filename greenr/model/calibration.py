"""Temperature scaling: one number T so that softmax(logits / T) gives honest probabilities.

Fitted on held-out logits (the validation split) by maximising the posterior of T: their
negative log-likelihood plus a weak log-normal prior centred on T = 1. Without the prior, a
validation split the model separates perfectly (common with a few dozen images) has no finite
optimum: T runs to 0 and every later confidence becomes 1.0. The argmax, and so every label, stays
the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Far outside anything a sane model needs; a fit that lands here is clipped, not trusted.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Prior log T ~ N(0, 1): T in [0.14, 7.4] at 95%; a few hundred images outweigh it.
LOG_T_PRIOR_SD = 1.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The MAP T of softmax(logits / T) under the prior (L-BFGS on log T, so T stays positive)."""
    if len(labels) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().double(), labels.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        nll = F.cross_entropy(logits / log_t.exp(), labels, reduction="sum")
        loss = (nll + log_t.square().sum() / (2 * LOG_T_PRIOR_SD**2)) / len(labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return round(float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)), 6)
