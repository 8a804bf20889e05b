from __future__ import annotations

import pytest
import torch

from vtok.training.losses import (
    IGNORE_INDEX,
    answer_cross_entropy,
    choice_log_likelihood,
    shifted_answer_positions,
    visual_regression,
)
from vtok.training.split import heldout_score, is_heldout


def test_split_is_stable_salted_and_close_to_the_fraction() -> None:
    keys = [f"key-{i}" for i in range(4000)]
    held = [k for k in keys if is_heldout(k, 0.2, "a")]
    assert 0.17 < len(held) / len(keys) < 0.23
    assert held != [k for k in keys if is_heldout(k, 0.2, "b")]
    assert not any(is_heldout(k, 0.0, "a") for k in keys[:50]) and all(
        is_heldout(k, 1.0, "a") for k in keys[:50]
    )
    # A larger fraction only adds keys.
    assert set(held) <= {k for k in keys if is_heldout(k, 0.3, "a")}
    # A fixed value: the same on every machine and process (Python's hash() would not be).
    assert heldout_score("key-7", "a") == 0.09723089809342142
    with pytest.raises(ValueError, match="fraction"):
        is_heldout("k", 1.5)


def test_losses() -> None:
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3:] = torch.tensor([4, 2])
    labels[1, 4] = 1
    rows, pos, targets = shifted_answer_positions(labels)
    assert rows.tolist() == [0, 0, 1] and pos.tolist() == [2, 3, 3] and targets.tolist() == [4, 2, 1]
    logits = torch.zeros(3, 6)
    assert torch.isclose(answer_cross_entropy(logits, targets), torch.log(torch.tensor(6.0)))
    assert answer_cross_entropy(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)) == 0
    ll = choice_log_likelihood(logits, targets, rows, 2)
    assert torch.allclose(ll, -torch.log(torch.tensor(6.0)) * torch.tensor([2.0, 1.0]))
    x = torch.randn(4, 8)
    assert visual_regression(x, x, 1.0).abs() < 1e-6
    assert torch.isclose(visual_regression(x, -x, 0.0), (4 * x.pow(2)).mean())
    assert torch.isclose(visual_regression(x, -x, 0.5) - visual_regression(x, -x, 0.0), torch.tensor(1.0))
    assert visual_regression(torch.zeros(0, 8), torch.zeros(0, 8), 1.0) == 0
