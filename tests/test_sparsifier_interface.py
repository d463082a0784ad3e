"""The interface additions every method may use: data at attach, LR-schedule positions, weight rewinds, seeded draws."""

import torch
from torch import nn

from ham_bench.data import InMemoryImageDataset, seeded_batches
from ham_bench.metrics.sign_flips import SignFlipMeter
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


def test_sign_flip_meter_does_not_count_a_rewind():
    class Rewinder(Sparsifier):
        def rewinds_weights(self, step):
            return step == 1

    layer = nn.Linear(3, 2, bias=False)
    sparsifier = Rewinder()
    sparsifier.attach(nn.Sequential(layer), TrainingContext(epochs=1, steps_per_epoch=3))
    meter = SignFlipMeter(sparsifier)
    start = layer.weight.detach().clone()

    class Record:
        def __init__(self, step):
            self.step = step

    with torch.no_grad():
        layer.weight.neg_()
        meter.on_step(Record(0))  # 6 real flips
        layer.weight.copy_(start)
        meter.on_step(Record(1))  # the method restored the old weights: not flips
        meter.on_step(Record(2))  # nothing moved since the restore
    assert meter.epoch_report(0, sparsifier.effective_weights())["sign_flips"] == 6


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
