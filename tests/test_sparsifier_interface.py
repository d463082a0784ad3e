"""The interface additions every method may use: data at attach, LR-schedule positions, weight rewinds, seeded draws."""

import pytest
import torch
from torch import nn

from ham_bench.data import InMemoryImageDataset, seeded_batches
from ham_bench.engine.step import train_step
from ham_bench.metrics.sign_flips import SignFlipMeter
from ham_bench.optim import HAM
from ham_bench.schedule import build_scheduler, lr_factor
from sparsifiers import TrainingContext, build_sparsifier
from sparsifiers.base import Sparsifier


def images(n=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=generator)
    return InMemoryImageDataset(data, torch.arange(n) % 10, (0.5,), (0.25,), crop_padding=2, flip=True)


def test_seeded_batches_repeat_per_seed_and_leave_the_global_rng_alone():
    dataset = images()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = seeded_batches(dataset, 8, seed=5)
    a1, a2 = first(), first()
    assert torch.equal(torch.rand(3), expected_next)  # augmentation and order drew from their own streams
    second = seeded_batches(dataset, 8, seed=5)
    b1, b2 = second(), second()
    assert torch.equal(a1[0], b1[0]) and torch.equal(a1[1], b1[1]) and torch.equal(a2[0], b2[0])
    assert a1[0].shape == (8, 1, 6, 6) and a1[1].dtype == torch.long
    assert not torch.equal(a1[1], a2[1])  # the next call is the next batch of the permutation
    other = seeded_batches(dataset, 8, seed=6)()
    assert not torch.equal(other[1], a1[1])


def test_schedule_follows_the_sparsifiers_position():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    cfg = {"name": "cosine", "warmup_epochs": 0}
    restart = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2, 6: 3}  # e.g. a round boundary after step 2
    sched = build_scheduler(opt, cfg, 3, 6, position=restart.__getitem__)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [lr_factor(restart[t], cfg, 3, 6) for t in range(6)]
    assert lrs[3] == lrs[0] == 1.0
    assert Sparsifier().schedule_position(17) == 17 and Sparsifier().rewinds_weights(3) is False


@pytest.mark.parametrize("implementation", ["foreach", "compiled"])
def test_a_rewinding_step_counts_no_flips_and_the_next_counts_from_the_restored_weights(implementation):
    class Rewinder(Sparsifier):
        """Restores the weights of step 0's start in after_step(2), as IMP does at a round end."""

        def attach(self, model, context):
            super().attach(model, context)
            self.start = {key: w.clone() for key, w in self.effective_weights().items()}

        def rewinds_weights(self, step):
            return step == 2

        def after_step(self, step):
            if step == 2:
                with torch.no_grad():
                    for key, layer in self.layers.items():
                        layer.weight.copy_(self.start[f"{key}.weight"])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    sparsifier = Rewinder()
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=5))
    optimizer = HAM(torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9), alpha=1.0,
                    implementation=implementation)
    meter = SignFlipMeter(sparsifier)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    previous = {key: torch.sign(w) for key, w in sparsifier.effective_weights().items()}
    counts = []
    for step in range(5):
        record = train_step(model, optimizer, sparsifier, x, y, step)
        meter.on_step(record)
        now = {key: torch.sign(w) for key, w in sparsifier.effective_weights().items()}
        changed = sum(int(((previous[k] * now[k]) < 0).sum()) for k in now)
        counts.append(int(record.sign_flips.sum()))
        assert counts[-1] == (0 if step == 2 else changed), f"step {step}"
        restored = changed if step == 2 else restored if step > 2 else 0
        previous = now
    assert restored > 0 and sum(counts) > 0  # the rewind did turn signs back, and was not counted
    assert meter.epoch_report(0, sparsifier.effective_weights())["sign_flips"] == sum(counts)


def test_step_generator_depends_on_seed_step_and_salt_only():
    sparsifier = build_sparsifier({"name": "random", "sparsity": 0.5, "seed": 4})
    draw = lambda step, salt: torch.rand(5, generator=sparsifier.step_generator(step, "cpu", salt))  # noqa: E731
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert torch.equal(draw(3, 1), draw(3, 1))
    assert not torch.equal(draw(3, 1), draw(4, 1)) and not torch.equal(draw(3, 1), draw(3, 2))
    assert torch.equal(torch.get_rng_state(), before)


def test_every_new_method_describes_itself_in_one_line_naming_its_paper():
    import re

    from sparsifiers import sparsifier_class

    for name in ("snip", "synflow", "gmp", "imp", "lrr", "set", "mest", "cs", "spred", "nm"):
        first = sparsifier_class(name).__doc__.splitlines()[0]
        assert re.search(r"\((?:[^()]*?)(?:ICLR|ICML|NeurIPS|Nature Communications)? ?(?:19|20)\d\d", first), first
        assert first.endswith(".") or ":" in first, first
