"""The trainer against a bare PyTorch loop: what the framework's bookkeeping costs per training step (CPU).

    python scripts/bench_trainer.py [--models resnet18_cifar cnn] [--chunk 20] [--rounds 25]
                                    [--label after] [--out results/bench_trainer.md]

For each model (ResNet-18 with the CIFAR stem on 3x32x32 inputs at batch 32;
the default experiment's small CNN on 1x28x28 inputs at batch 128), in ONE
process:

- ``bare loop``: ``torch.optim.SGD(model.parameters(), lr, momentum 0.9, weight_decay 5e-4)`` with
  torch's default implementation; zero_grad, forward, cross-entropy, backward, step;
- the trainer's ``train_epoch`` (``ham_bench.run.build_trainer``, the real app path: engine, meters,
  LR schedule, loss/accuracy sums, the ``log_every`` reads) for: dense with HAM off, dense with HAM
  (HYP*, the default config), Random 0.9 + HAM, RigL 0.9 + HAM (default dT = 100: one update step,
  with its dense gradient and skipped optimizer step, every 100 steps, as in training), plus
  ``--extra NAME=OVERRIDES`` variants.

Every loop runs on the same 100 pre-built batches (so data loading costs nothing in either), each
variant on its own model instance from the same seed. Epochs of ``--chunk`` steps (the trainer's
``train_epoch`` over that many batches, global steps continuing from epoch to epoch) are
interleaved round-robin, one per variant per round, after ``--warmup`` rounds (kernels compile
there); short epochs keep each round's variants close in time on a machine shared with other
processes. Reported: milliseconds per step over all timed steps, and the ratio of a variant's total
time to the bare loop's (RigL's update steps included at their rate), with the median and the
interquartile range of the per-round ratios. ``--label`` names the section of ``--out`` this run
writes; other sections of the file are kept.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ham_bench.provenance import cpu_model  # noqa: E402
from ham_bench.run import build_trainer  # noqa: E402

MODELS = {  # model, dataset overrides, batch size
    "resnet18_cifar": (["model=resnet18_cifar", "dataset.image_size=32", "dataset.in_channels=3"], 32),
    "cnn": (["model=cnn", "dataset.image_size=28", "dataset.in_channels=1"], 128),
}
VARIANTS = {
    "trainer, dense, HAM off": ["sparsifier=dense", "ham=off"],
    "trainer, dense, HAM": ["sparsifier=dense", "ham=hyp_star"],
    "trainer, random 0.9, HAM": ["sparsifier=random", "sparsifier.sparsity=0.9", "ham=hyp_star"],
    "trainer, RigL 0.9, HAM": ["sparsifier=rigl", "sparsifier.sparsity=0.9", "ham=hyp_star"],
}
BARE = "bare loop (SGD momentum, torch default)"
STEPS_PER_EPOCH = 100  # batches built, the runs' epoch length (RigL's dT = 100: one update per 100 steps)
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4  # configs/optimizer/sgd.yaml


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from ham_bench.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def common_overrides(model: str, steps: int, seed: int) -> list[str]:
    model_overrides, batch = MODELS[model]
    return [*model_overrides, "dataset=fake", f"dataset.num_samples={steps * batch}", "dataset.num_classes=10",
            f"batch_size={batch}", "device=cpu", "progress=false", "epochs=1000", f"seed={seed}",
            "num_workers=0", "logger=jsonl", "checkpoint_every_minutes=null"]


class BareLoop:
    """The loop anyone would write, on its own model built from the same config and seed."""

    def __init__(self, cfg, batches):
        from ham_bench.models import build_model

        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, int(cfg.dataset.num_classes), int(cfg.dataset.in_channels),
                                 int(cfg.dataset.image_size))
        self.channels_last = bool(cfg.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def epoch(self, epoch: int, batches: list) -> None:
        self.model.train()
        for x, y in batches:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(self.model(x), y).backward()
            self.optimizer.step()


class TrainerLoop:
    """``Trainer.train_epoch`` of a run built by ``build_trainer`` (on the 100 batches), over given batches."""

    def __init__(self, cfg, batches, run_dir: Path):
        self.trainer = build_trainer(cfg, run_dir)

    def epoch(self, epoch: int, batches: list) -> None:
        self.trainer.train_loader = batches
        self.trainer.steps_per_epoch = len(batches)  # global step = epoch * len(batches) + index
        self.trainer.train_epoch(epoch)


def materialize(cfg, steps: int) -> list:
    """``steps`` batches of the run's own training loader, kept in memory."""
    from ham_bench.data import build_datasets, build_loader

    data = build_datasets(cfg.dataset)
    loader = build_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True)
    batches = [(x.contiguous(), y) for x, y in loader][:steps]
    assert len(batches) == steps, (len(batches), steps)
    return batches


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 4:
        return statistics.median(values), min(values), max(values)
    low, median, high = statistics.quantiles(values, n=4)
    return median, low, high


def bench_model(model: str, args, run_root: Path) -> dict:
    base = common_overrides(model, STEPS_PER_EPOCH, args.seed)
    batches = materialize(compose(base), STEPS_PER_EPOCH)
    variants = dict(VARIANTS)
    for extra in args.extra:
        name, _, overrides = extra.partition("=")
        variants[name] = overrides.split()
    loops = {BARE: BareLoop(compose(base), batches)}
    for index, (name, overrides) in enumerate(variants.items()):
        run_dir = run_root / f"{model}-{index}"
        run_dir.mkdir(parents=True, exist_ok=True)
        loops[name] = TrainerLoop(compose([*base, *overrides]), batches, run_dir)
    names = list(loops)

    def chunk(epoch):
        start = epoch * args.chunk % STEPS_PER_EPOCH
        return batches[start:start + args.chunk]

    warm_started = time.perf_counter()
    for epoch in range(args.warmup):
        for name in names:
            loops[name].epoch(epoch, chunk(epoch))
    warm_seconds = time.perf_counter() - warm_started
    seconds = {name: [] for name in names}
    loads = [os.getloadavg()[0]]
    for round_index in range(args.rounds):
        epoch = args.warmup + round_index
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            started = time.perf_counter()
            loops[name].epoch(epoch, chunk(epoch))
            seconds[name].append(time.perf_counter() - started)
        loads.append(os.getloadavg()[0])
        if (round_index + 1) % 5 == 0 or round_index + 1 == args.rounds:
            done = round_index + 1
            print(f"{model} {done}/{args.rounds} rounds: " + ", ".join(
                f"{n.removeprefix('trainer, ').split(' (')[0]} {1e3 * sum(seconds[n]) / (done * args.chunk):.0f}"
                for n in names) + f" ms/step (load {loads[-1]:.2f})", flush=True)
    bare_total = sum(seconds[BARE])
    rows = []
    for name in names:
        total = sum(seconds[name])
        ratios = [s / b for s, b in zip(seconds[name], seconds[BARE])]
        rows.append((name, 1e3 * total / (args.rounds * args.chunk), total / bare_total, *quartiles(ratios)))
    return {"rows": rows, "loads": loads, "warm_seconds": warm_seconds, "batch": MODELS[model][1],
            "overrides": base, "variants": variants}


def section(label: str, results: dict, args, command: str, revision: str) -> str:
    lines = [f"## {label}", "",
             f"Command: `{command}`", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores (shared with other processes), torch "
             f"{torch.__version__}, {torch.get_num_threads()} torch threads, git {revision}.", ""]
    for model, result in results.items():
        loads = result["loads"]
        lines += [f"### {model}, batch {result['batch']}: {args.rounds} rounds of {args.chunk}-step epochs "
                  f"after {args.warmup} warm-up rounds", "",
                  f"1-minute load average during the timed rounds: {min(loads):.2f}-{max(loads):.2f} "
                  f"(median {statistics.median(loads):.2f}); warm-up rounds took {result['warm_seconds']:.0f} s.",
                  "",
                  "| variant | ms/step | vs bare loop (total time) | per-round ratio: median | IQR |",
                  "|---|---:|---:|---:|---:|"]
        for name, per_step, ratio, median, low, high in result["rows"]:
            lines.append(f"| {name} | {per_step:.1f} | {ratio:.3f} | {median:.3f} | {low:.3f}-{high:.3f} |")
        lines.append("")
        lines.append("Overrides: " + " ".join(result["overrides"]) + "; variants: "
                     + "; ".join(f"{name}: {' '.join(o)}" for name, o in result["variants"].items()) + ".")
        lines.append("")
    return "\n".join(lines)


def git_revision() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


HEADER = """# The trainer against a bare PyTorch loop (CPU)

Produced by `scripts/bench_trainer.py` (its docstring says exactly what is timed). Each section
is one run of the script; ratios are measured side by side in one process, epochs interleaved,
after a warm-up epoch, and are the figures to compare (absolute times move with the machine's
load, which other processes shared).
"""


def write(out: Path, label: str, text: str) -> None:
    previous = out.read_text() if out.exists() else HEADER
    parts = re.split(r"(?m)^(?=## )", previous)
    head, sections = parts[0], [p for p in parts[1:] if not p.startswith(f"## {label}\n")]
    body = head.rstrip() + "\n\n" + "".join(s.rstrip() + "\n\n" for s in sections) + text.rstrip() + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as handle:
        handle.write(body)
    os.replace(handle.name, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--chunk", type=int, default=20, help="steps per timed epoch (divides 100)")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=2, help="warm-up rounds (kernels compile there)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="another trainer variant: a name, '=', space-separated config overrides")
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_trainer.md")
    args = parser.parse_args(argv)
    command = "python scripts/bench_trainer.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    revision = git_revision()  # the code imported now is the code measured
    import logging

    logging.getLogger("ham_bench").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as run_root:
        results = {model: bench_model(model, args, Path(run_root)) for model in args.models}
    write(args.out, args.label, section(args.label, results, args, command.strip(), revision))
    print(f"wrote {args.out} ({args.label})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
