"""Temperature scaling: one number T so that softmax(logits / T) gives honest probabilities.

Fitted on held-out logits (the validation split) by minimising their negative log-likelihood;
the argmax, and so every label, stays the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Far outside anything a sane model needs; a fit that lands here is clipped, not trusted.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T minimising the NLL of softmax(logits / T) (L-BFGS on log T, so T stays positive)."""
    if len(labels) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().double(), labels.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return round(float(log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)), 6)
