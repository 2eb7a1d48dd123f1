"""The optimiser update is skipped when a gradient is not finite, and repeated skips stop the run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gvsl.train.finite_update import FiniteUpdate, NonFiniteGradientError


def make_update(limit: int = 3) -> tuple[nn.Linear, FiniteUpdate]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    return model, FiniteUpdate(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), limit=limit)


def nan_gradient_loss(model: nn.Linear) -> torch.Tensor:
    """A finite loss (0) whose weight gradient is NaN: d sqrt(u)/du at u = 0 times du/dw = 0."""
    u = (model.weight - model.weight.detach()).sum()
    return torch.sqrt(u) + 0 * model.bias.sum()


def test_a_nan_gradient_leaves_the_weights_and_a_finite_one_updates_them():
    model, update = make_update()
    before = [p.detach().clone() for p in model.parameters()]
    loss = nan_gradient_loss(model)
    assert torch.isfinite(loss)
    assert update(loss) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert update(model(torch.ones(1, 3)).sum()) is True
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert update.skipped_in_a_row == 0


def test_skips_in_a_row_up_to_the_limit_raise_with_a_clear_message():
    model, update = make_update(limit=2)
    assert update(nan_gradient_loss(model)) is False
    with pytest.raises(NonFiniteGradientError, match="2 updates in a row had NaN or infinite gradients"):
        update(nan_gradient_loss(model))
    assert all(torch.isfinite(p).all() for p in model.parameters())
