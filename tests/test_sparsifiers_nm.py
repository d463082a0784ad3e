"""N:M sparsity: the shared N:M top-k (NHWC groups along the input dimension) and SR-STE training."""

import pytest
import torch
from torch import nn

from hook_loop import random_batches, run_epochs, sgd_for
from sparsifiers import ConfigError, TrainingContext, build_sparsifier
from sparsifiers.base import sparsity_report
from sparsifiers.masks import nm_topk_mask, nm_valid
from sparsifiers.nm import SRSTE


def model_8ch(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10))


def groups_by_loops(weight, m):
    """Every group of m consecutive input entries, NHWC order, by explicit loops (independent of nm_groups)."""
    out = []
    if weight.dim() == 2:
        for o in range(weight.shape[0]):
            for i in range(0, weight.shape[1], m):
                out.append(weight[o, i:i + m])
    else:
        for o in range(weight.shape[0]):
            for h in range(weight.shape[2]):
                for w in range(weight.shape[3]):
                    for i in range(0, weight.shape[1], m):
                        out.append(weight[o, i:i + m, h, w])
    return out


def expected_mask(weight, n, m):
    """The n largest |w| of every group (ties: lower index), by loops over (O, kh, kw) rows of the input dim."""
    values = weight.abs().permute(0, 2, 3, 1) if weight.dim() == 4 else weight.abs()
    rows = values.reshape(-1, values.shape[-1])
    kept = torch.zeros(rows.shape, dtype=torch.bool)
    for row in range(rows.shape[0]):
        for start in range(0, rows.shape[1], m):
            group = rows[row, start:start + m].tolist()
            for j in sorted(range(m), key=lambda j: (-group[j], j))[:n]:
                kept[row, start + j] = True
    kept = kept.view(values.shape)
    return kept.permute(0, 3, 1, 2) if weight.dim() == 4 else kept


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_nm_top_k_keeps_exactly_n_of_every_m_input_entries_nhwc(n, m):
    generator = torch.Generator().manual_seed(0)
    for shape in [(6, 16), (5, 8, 3, 3)]:
        weight = torch.randn(shape, generator=generator)
        weight.view(-1)[:3] = 0.5  # ties: the lower index wins
        mask = nm_topk_mask(weight.abs(), n, m)
        assert torch.equal(mask, expected_mask(weight, n, m))
        for group in groups_by_loops(weight * mask, m):
            assert int(group.count_nonzero()) == n
        assert bool(nm_valid(weight * mask, n, m)) and not bool(nm_valid(weight, n, m))


def test_srste_backward_adds_decay_times_w_on_pruned_entries_only():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 8, generator=generator, requires_grad=True)
    x = torch.randn(5, 8, generator=generator)
    out = SRSTE.apply(weight, 2, 4, 0.3)
    (out @ x.T).pow(2).sum().backward()
    mask = nm_topk_mask(weight.abs(), 2, 4)
    sparse = (weight * mask).detach().requires_grad_()  # the STE gradient: dL/dW_tilde
    (sparse @ x.T).pow(2).sum().backward()
    assert torch.allclose(weight.grad[mask], sparse.grad[mask])
    assert torch.allclose(weight.grad[~mask], sparse.grad[~mask] + 0.3 * weight.detach()[~mask])


def test_nm_sparsifier_trains_dense_w_and_reports_the_recomputed_masks():
    model = model_8ch()
    sparsifier = build_sparsifier({"name": "nm", "n": 2, "m": 4})
    sparsifier.attach(model, TrainingContext(epochs=2, steps_per_epoch=4))
    assert sparsifier.masked_keys == ["2.weight", "5.weight"]  # stem (I = 3) and classifier dense
    optimizer = sgd_for(model, sparsifier, lr=0.1)
    flips = []
    previous = sparsifier.masks()

    def on_step(step, record):
        nonlocal previous
        dense = sparsifier.dense_weights()
        masks = sparsifier.masks()
        for key, w in dense.items():
            assert torch.equal(masks[key], expected_mask(w.detach(), 2, 4))  # from the updated dense W
            assert int(w[~masks[key]].count_nonzero()) > 0  # after_step zeroed nothing
            effective = sparsifier.effective_weights()[key]
            assert torch.equal(effective, w.detach() * masks[key])
            for group in groups_by_loops(effective, 4):
                assert int(group.count_nonzero()) == 2
        flips.append(sum(int((masks[k] ^ previous[k]).sum()) for k in masks))
        previous = masks

    run_epochs(model, sparsifier, optimizer, random_batches(4, 16, (3, 8, 8), 10), 2, on_step=on_step)
    assert sum(flips) > 0  # SR-STE masks change while the dense weights train
    report = sparsity_report(sparsifier)
    assert report["target_sparsity"] == report["achieved_sparsity"] == 0.5
    assert sparsifier.extra_metrics() == {"nm_valid": {"2.weight": True, "5.weight": True}}


def test_nm_settings_are_checked():
    with pytest.raises(ConfigError, match=r"^sparsifier.sparsity is fixed by n:m \(2:4 is 0.5\), got 0.8"):
        build_sparsifier({"name": "nm", "sparsity": 0.8})
    with pytest.raises(ConfigError, match=r"^sparsifier.n must be an integer in \[1, 3\]"):
        build_sparsifier({"name": "nm", "n": 4, "m": 4})
    four_eight = build_sparsifier({"name": "nm", "n": 4, "m": 8, "skip_indivisible": False, "dense_last": False})
    four_eight.attach(model_8ch(), TrainingContext(epochs=1, steps_per_epoch=1))
    # every layer whose size divides by 8: the stem's groups straddle kernel positions (216 = 27 x 8)
    assert four_eight.masked_keys == ["0.weight", "2.weight", "5.weight", "7.weight"]
    stem = four_eight.effective_weights()["0.weight"]
    assert int(stem.count_nonzero()) == stem.numel() // 2 and bool(nm_valid(stem, 4, 8))
