import torch

from ham_bench.sign_flips import SignFlipCounter


def test_counts_flips_between_consecutive_steps_and_ignores_zeros():
    w = {"a": torch.tensor([1.0, -2.0, 3.0, 0.5, 0.0])}
    counter = SignFlipCounter(w)
    # +->-, -->+ flip; 3 -> 0 is pruning (no flip); 0.5 stays; 0 -> -1 is regrowth (no flip)
    counter.update({"a": torch.tensor([-1.0, 2.0, 0.0, 0.4, -1.0])})
    # 0 -> +1 regrowth (no flip); -1 -> +1 flips again
    counter.update({"a": torch.tensor([-1.0, 2.0, 1.0, 0.4, 1.0])})
    report = counter.epoch_report({"a": torch.tensor([-1.0, 2.0, 1.0, 0.4, 1.0])})
    assert report["sign_flips"] == 3
    assert report["sign_flips_per_layer"] == {"a": 3}
    # differs from init: first two weights (+->-, -->+); the third is back to +, the last started at 0
    assert report["sign_differs_from_init"] == 2 / 5
    assert counter.epoch_report({"a": torch.tensor([-1.0, 2.0, 1.0, 0.4, 1.0])})["sign_flips"] == 0


def test_one_byte_per_weight_and_state_round_trip():
    torch.manual_seed(0)
    weights = {"a": torch.randn(64, 32), "b": torch.randn(10, 3, 3, 3)}
    counter = SignFlipCounter(weights)
    assert all(p.dtype == torch.uint8 and p.shape == weights[k].shape for k, p in counter.packed.items())
    moved = {k: v + 0.5 * torch.randn_like(v) for k, v in weights.items()}
    counter.update(moved)
    expected = sum(int(((torch.sign(weights[k]) * torch.sign(moved[k])) < 0).sum()) for k in weights)
    clone = SignFlipCounter(weights)
    clone.load_state_dict(counter.state_dict())
    assert counter.epoch_report(moved)["sign_flips"] == expected
    assert clone.epoch_report(moved)["sign_flips"] == expected
