import torch

from ham_bench.metrics.sign_flips import SignFlipCounter
from ham_bench.optim.bookkeeping import sign_flips, signs


def test_counts_flips_between_consecutive_steps_and_ignores_zeros():
    states = [torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0]),
              # +->-, -->+ flip; 3 -> 0 is pruning (no flip); 0.5 stays; 0 -> -1 is regrowth (no flip)
              torch.tensor([-1.0, 2.0, 0.0, 0.4, -1.0]),
              # 0 -> +1 regrowth (no flip); -1 -> +1 flips again
              torch.tensor([-1.0, 2.0, 1.0, 0.4, 1.0])]
    assert [int(sign_flips(signs(a), b)) for a, b in zip(states, states[1:])] == [2, 1]
    counter = SignFlipCounter({"a": states[0]})
    for a, b in zip(states, states[1:]):
        counter.add(sign_flips(signs(a), b).reshape(1))
    report = counter.epoch_report({"a": states[-1]})
    assert report["sign_flips"] == 3
    assert report["sign_flips_per_layer"] == {"a": 3}
    # differs from init: first two weights (+->-, -->+); the third is back to +, the last started at 0
    # and is not counted in the denominator (only weights nonzero at init can differ)
    assert report["sign_differs_from_init"] == 2 / 4
    assert report["sign_differs_from_init_count"] == 2
    assert counter.epoch_report({"a": states[-1]})["sign_flips"] == 0


def test_one_byte_per_weight_and_state_round_trip():
    torch.manual_seed(0)
    weights = {"a": torch.randn(64, 32), "b": torch.randn(10, 3, 3, 3)}
    counter = SignFlipCounter(weights)
    assert all(s.dtype == torch.int8 and s.shape == weights[k].shape for k, s in counter.initial.items())
    moved = {k: v + 0.5 * torch.randn_like(v) for k, v in weights.items()}
    counter.add(torch.stack([sign_flips(signs(weights[k]), moved[k]) for k in counter.names]))
    expected = sum(int(((torch.sign(weights[k]) * torch.sign(moved[k])) < 0).sum()) for k in weights)
    clone = SignFlipCounter({k: torch.ones_like(v) for k, v in weights.items()})
    clone.load_state_dict(counter.state_dict())
    assert counter.epoch_report(moved) == clone.epoch_report(moved)
    assert clone.total_flips.sum() == expected


def test_loads_checkpoints_of_the_packed_previous_sign_counter():
    """Checkpoints written before the engine counted flips packed 3 * (initial + 1) + (previous + 1) per byte."""
    initial = torch.tensor([1.0, -1.0, 0.0, 2.0])
    previous = torch.tensor([-1.0, -1.0, 1.0, 0.0])
    packed = (3 * (signs(initial) + 1) + (signs(previous) + 1)).to(torch.uint8)
    counter = SignFlipCounter({"a": torch.zeros(4)})
    counter.load_state_dict({"packed": {"a": packed}, "epoch_flips": torch.tensor([2]), "total_flips": torch.tensor([5])})
    assert torch.equal(counter.initial_signs("a"), signs(initial))
    report = counter.epoch_report({"a": previous})
    assert report["sign_flips"] == 2 and report["sign_flips_cumulative"] == 7
    assert report["sign_differs_from_init_count"] == 1  # the first weight: + at init, - now


def test_sign_differs_from_init_is_over_weights_nonzero_at_init():
    """Regression: masked (zero at init) weights diluted the fraction of a 90 % sparse layer tenfold."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(1000, generator=generator).abs() + 0.1
    sparse = dense.clone()
    sparse[100:] = 0.0  # 90 % of the layer masked from the start
    moved_dense, moved_sparse = dense.clone(), sparse.clone()
    moved_dense[:23] *= -1  # 23 of the first 100 weights change sign in both runs
    moved_sparse[:23] *= -1
    dense_report = SignFlipCounter({"w": dense}).epoch_report({"w": moved_dense})
    sparse_report = SignFlipCounter({"w": sparse}).epoch_report({"w": moved_sparse})
    assert dense_report["sign_differs_from_init_count"] == sparse_report["sign_differs_from_init_count"] == 23
    assert dense_report["sign_differs_from_init"] == 23 / 1000
    assert sparse_report["sign_differs_from_init"] == 23 / 100
    assert sparse_report["sign_differs_from_init_per_layer"] == {"w": 23 / 100}
