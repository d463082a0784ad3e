"""Host syncs of the trainer's training steps, counted: none per step outside the ``log_every`` reads.

Every tensor -> Python conversion (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/``int``/``float``/
``index``) is wrapped with a counter while ``Trainer.train_epoch`` runs on a run built by the app
(``ham_bench.run.build_trainer``, default fused kernels, every meter), on batches loaded beforehand. On a GPU each of them would
stall the step; on CPU they are counted the same way. A probe meter, called after every step, reads
the counter, so each step's syncs are known, and only the steps that end a ``log_every`` block (the
progress/non-finite check, HAM's clamp check) and the epoch's end may have any.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from ham_bench.cli import CONFIG_DIR
from ham_bench.metrics.meter import Meter
from ham_bench.run import build_trainer

CONVERSIONS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
STEPS, LOG_EVERY = 12, 4


class SyncCounter:
    def __init__(self):
        self.count = 0

    def patch(self, monkeypatch):
        for name in CONVERSIONS:
            original = getattr(torch.Tensor, name)

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


class Probe(Meter):
    """Reads the counter after each step (meters run right after the step and the LR schedule)."""

    name = "probe"

    def __init__(self, counter):
        self.counter, self.seen, self.per_step = counter, 0, []

    def on_step(self, record) -> None:
        self.per_step.append(self.counter.count - self.seen)
        self.seen = self.counter.count

    def epoch_report(self, epoch, weights) -> dict:
        return {}


def trainer_for(tmp_path, overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=cnn", "dataset=fake", "dataset.image_size=28", "dataset.in_channels=1",
            f"dataset.num_samples={STEPS * 16}", "batch_size=16", "device=cpu", "progress=false", "epochs=3",
            f"log_every={LOG_EVERY}", "checkpoint_every_minutes=null", "logger=jsonl", *overrides])
    return build_trainer(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["sparsifier=dense", "ham=off"],
    ["sparsifier=dense", "ham=hyp_star"],
    ["sparsifier=random", "sparsifier.sparsity=0.9", "ham=hyp_star"],
    ["sparsifier=rigl", "sparsifier.sparsity=0.9", "sparsifier.update_interval=3", "ham=hyp_star"],
], ids=["dense-off", "dense-ham", "random-ham", "rigl-ham"])
def test_no_host_sync_in_a_training_step_outside_the_log_every_reads(tmp_path, monkeypatch, overrides):
    trainer = trainer_for(tmp_path, overrides)
    # the batches are loaded first: the loader's own conversions (torchvision's FakeData makes PIL images)
    # are host work on host tensors, which on a GPU would run before the batch is copied over
    trainer.train_loader = list(trainer.train_loader)
    trainer.train_epoch(0)  # compiles the kernels (which reads devices and shapes, once)
    counter = SyncCounter()
    probe = Probe(counter)
    trainer.meters.insert(0, probe)
    with monkeypatch.context() as patch:
        counter.patch(patch)
        assert torch.ones(()).item() == 1.0 and counter.count == 1  # the counter is live
        probe.seen = counter.count
        trainer.train_epoch(1)
    # probe i sees what ran since probe i - 1: the end of step i - 1 (its log read) and step i itself
    after_log_read = {i for i in range(1, STEPS) if i % LOG_EVERY == 0}
    outside = [n for i, n in enumerate(probe.per_step) if i not in after_log_read]
    assert outside == [0] * len(outside), probe.per_step
    assert sum(probe.per_step) > 0  # the log reads are there, and counted
