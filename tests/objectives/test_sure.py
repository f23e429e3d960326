import numpy as np
import pytest
import torch
from torch import nn

from lit_unlearn.objectives import (
    GradAscent,
    apply_row_masks_,
    percentile_threshold,
    row_grad_norms,
    sure_row_masks,
)


def rows_with_norms(norms, width=3):
    # Each row points along the first axis with the given L2 norm.
    grad = torch.zeros(len(norms), width)
    grad[:, 0] = torch.as_tensor(norms, dtype=torch.float32)
    return grad


def test_percentile_90_selects_top_10_percent_of_rows():
    norms = torch.randperm(100).float() + 1.0
    masks = sure_row_masks({"w": rows_with_norms(norms)}, percentile=90.0)
    assert masks["w"].dtype == torch.bool and masks["w"].shape == (100,)
    assert masks["w"].sum().item() == 10
    assert set(norms[masks["w"]].tolist()) == set(range(91, 101))


def test_global_scope_pools_rows_across_matrices():
    # All of the large norms sit in `big`: P2's global threshold gives `small` no row at all.
    grads = {"big": rows_with_norms(torch.arange(50.0) + 100.0), "small": rows_with_norms(torch.arange(50.0))}
    masks = sure_row_masks(grads, percentile=90.0)
    assert masks["big"].sum().item() == 10 and masks["small"].sum().item() == 0
    assert masks["big"][-10:].all()
    per_matrix = sure_row_masks(grads, percentile=90.0, scope="per_matrix")
    assert per_matrix["big"].sum().item() == 5 and per_matrix["small"].sum().item() == 5


def test_one_dimensional_parameters_score_each_element():
    grads = {"w": rows_with_norms([1.0, 2.0, 3.0, 4.0]), "bias": torch.tensor([-10.0, 0.5, 0.0, 9.0])}
    torch.testing.assert_close(row_grad_norms(grads["bias"]), torch.tensor([10.0, 0.5, 0.0, 9.0]))
    masks = sure_row_masks(grads, percentile=75.0)
    # Pooled norms [1, 2, 3, 4, 10, 0.5, 0, 9]: the 75th percentile is 4.75, so 10 and 9 are kept.
    assert masks["bias"].tolist() == [True, False, False, True]
    assert not masks["w"].any()


def test_row_norm_covers_all_trailing_dimensions():
    grad = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(row_grad_norms(grad), torch.tensor([5.0, 1.0]))


@pytest.mark.parametrize("q", [0.0, 12.5, 50.0, 90.0, 99.0, 100.0])
def test_percentile_threshold_matches_numpy(q):
    values = torch.randn(1001)
    torch.testing.assert_close(
        percentile_threshold(values, q), torch.tensor(np.percentile(values.numpy(), q), dtype=torch.float32)
    )


def test_apply_row_masks_zeros_unselected_rows_in_place():
    weight = nn.Parameter(torch.zeros(4, 3))
    bias = nn.Parameter(torch.zeros(4))
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    weight.grad = torch.arange(12.0).reshape(4, 3)
    bias.grad = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    masks = {
        "weight": torch.tensor([False, True, False, True]),
        "bias": torch.tensor([True, False, True, False]),
    }

    apply_row_masks_({"weight": weight, "bias": bias, "frozen": frozen}, masks)

    expected = torch.arange(12.0).reshape(4, 3)
    expected[[0, 2]] = 0.0
    assert torch.equal(weight.grad, expected)
    # An unselected non-finite gradient becomes 0, not NaN.
    assert torch.equal(bias.grad, torch.tensor([1.0, 0.0, 3.0, 0.0]))
    assert frozen.grad is None


def test_apply_row_masks_accepts_plain_gradients():
    grad = torch.ones(3, 2)
    apply_row_masks_({"w": grad}, {"w": torch.tensor([True, False, True])})
    assert grad.sum(dim=1).tolist() == [2.0, 0.0, 2.0]


def test_apply_row_masks_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"No mask for 'w', which has a gradient"):
        apply_row_masks_({"w": torch.ones(3, 2)}, {})
    message = r"mask for 'w' has shape \(2,\), but its gradient has shape \(3, 2\)"
    with pytest.raises(ValueError, match=message):
        apply_row_masks_({"w": torch.ones(3, 2)}, {"w": torch.ones(2, dtype=torch.bool)})


def test_sure_row_masks_rejects_bad_input():
    with pytest.raises(ValueError, match=r"`grads` is empty"):
        sure_row_masks({})
    with pytest.raises(ValueError, match=r"`percentile` must be a number in \[0, 100\], got 110"):
        sure_row_masks({"w": torch.ones(2, 2)}, percentile=110)
    message = r"`scope`='layer' is not supported; choose one of 'global', 'per_matrix'"
    with pytest.raises(ValueError, match=message):
        sure_row_masks({"w": torch.ones(2, 2)}, scope="layer")
    with pytest.raises(TypeError, match=r"`grads\['w'\]` must be a tensor, got NoneType"):
        sure_row_masks({"w": None})


def test_sure_step_updates_only_salient_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(8, 16), nn.Linear(16, 8))
    ids = torch.randint(0, 8, (4, 6))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    named = list(model.named_parameters())

    loss = GradAscent()(model(ids), ids).loss
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
    masks = sure_row_masks({name: g for (name, _), g in zip(named, grads)}, percentile=90.0)
    loss.backward()
    apply_row_masks_(dict(named), masks)
    torch.optim.SGD(model.parameters(), lr=0.1).step()

    for name, param in model.named_parameters():
        changed = (param.detach() != before[name]).reshape(param.shape[0], -1).any(dim=1)
        assert not (changed & ~masks[name]).any(), name
    selected = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert 0 < selected <= 0.1 * total + 1
