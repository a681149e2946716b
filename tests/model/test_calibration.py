"""Temperature scaling: fitted on held-out logits, it makes an overconfident model honest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greenr.evaluation.metrics import expected_calibration_error
from greenr.model.calibration import fit_temperature


def overconfident(n: int = 2000, accuracy: float = 0.8, scale: float = 8.0, seed: int = 0):
    """Logits that are right `accuracy` of the time but claim ~99.9% confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, labels, 1 - labels)
    logits = np.zeros((n, 2))
    logits[np.arange(n), predicted] = scale * rng.uniform(0.8, 1.2, n)
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)


def test_temperature_scaling_lowers_ece_and_keeps_labels() -> None:
    logits, labels = overconfident()
    temperature = fit_temperature(logits[:1000], labels[:1000])
    assert temperature > 2  # overconfident: the logits must shrink
    held_out, truth = logits[1000:], labels[1000:].numpy()
    before = expected_calibration_error(truth, held_out.softmax(1).numpy())
    after = expected_calibration_error(truth, (held_out / temperature).softmax(1).numpy())
    assert before > 0.15 and after < 0.05, (before, after)
    assert torch.equal((held_out / temperature).argmax(1), held_out.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(0, 2, (4000, 2)), dtype=torch.float32)
    labels = torch.multinomial(logits.softmax(1), 1, generator=torch.Generator().manual_seed(0)).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_no_logits_means_no_scaling() -> None:
    assert fit_temperature(torch.empty(0, 2), torch.empty(0, dtype=torch.long)) == 1.0


def test_a_perfectly_separated_validation_split_keeps_a_finite_temperature() -> None:
    """No finite NLL optimum exists here (T -> 0); the prior keeps confidences below certainty."""
    labels = torch.tensor([0, 1] * 27)
    margin = torch.linspace(2.0, 6.0, len(labels))
    logits = torch.stack([margin, -margin], 1) * (1 - 2 * labels[:, None])
    temperature = fit_temperature(logits, labels)
    assert 0.2 < temperature < 1.0, temperature
    assert (logits / temperature).softmax(1).max() < 1 - 1e-9
