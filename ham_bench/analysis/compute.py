"""What the tables of docs/reproduce.md cost: their command lines, runs and GPU-hours.

``commands(markdown)`` reads the shell commands of a page's fenced code blocks (backslash
continuations joined, comments dropped). ``runs(command)`` expands a ``ham-bench [-m]`` line into
the override lists of its runs, as Hydra's basic sweeper does (comma lists are swept, every
combination is one run); ``compose_run`` composes and validates one of them like the app does.

``cost(configs)`` counts a table's runs and epochs, SAM's epochs twice (it does two forward and
backward passes per step), and the training images they go through; ``gpu_hours`` divides by a
throughput. Evaluation (one forward pass per validation image and epoch, about 1.3 % of an ImageNet
epoch's work) and the per-step extras of the methods (RigL's dense gradient every 100 steps, Sign-In's
m * w) are left out; a sparse run costs a dense one, since PyTorch runs dense kernels on masked
weights.

Throughputs (images per second for ONE GPU, training):

- ResNet-50 at 224 px on one A100 80GB: 938 with TF32 (what the recipe's fp32 runs as on A100)
  and 2470 with mixed precision (``precision=bf16`` is comparable): NVIDIA DeepLearningExamples,
  "ResNet50 v1.5 for PyTorch", training performance on 1x A100 80GB (pytorch-21.03 NGC container,
  DALI data loading). ham-bench loads JPEGs with torchvision, which is slower when the CPUs are
  few, so the hours are a lower bound.
- ResNet-18 with the CIFAR stem at 32 px: no published figure; ResNet-50's scaled by the ratio of
  the two models' forward FLOPs per image (8.18 G / 1.11 G = 7.36, counted with
  ``torch.utils.flop_counter``). Small images use a GPU less well, so this is optimistic.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

IMAGES_PER_SECOND = {"resnet50": {"fp32": 938.0, "bf16": 2470.0}}
FLOPS_RATIO_RESNET18_CIFAR = 7.36
IMAGES_PER_SECOND["resnet18_cifar"] = {precision: rate * FLOPS_RATIO_RESNET18_CIFAR
                                       for precision, rate in IMAGES_PER_SECOND["resnet50"].items()}
TRAIN_IMAGES = {"imagenet": 1_281_167, "cifar100": 50_000, "fashion_mnist": 60_000}
PLACEHOLDER = re.compile(r"<[^>]+>")


def commands(markdown: str) -> list[str]:
    """The shell commands of the fenced code blocks, one string per command."""
    out, block, current = [], False, ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            block, current = not block, ""
            continue
        if not block or (not current and (not stripped or stripped.startswith("#"))):
            continue
        text = stripped.split(" #")[0].rstrip()
        more = text.endswith("\\")
        current = f"{current} {text[:-1].rstrip() if more else text}".strip()
        if not more:
            out.append(current)
            current = ""
    return out


def arguments(command: str) -> tuple[list[str], list[str]]:
    """(leading ``VAR=value`` words, the command's words) with ``<placeholders>`` filled in."""
    words = shlex.split(PLACEHOLDER.sub("placeholder", command))
    env = []
    while words and re.match(r"^[A-Z_]+=", words[0]):
        env.append(words.pop(0))
    return env, words


def runs(command: str) -> list[list[str]]:
    """The override list of every run a ``ham-bench`` command line starts."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _env, words = arguments(command)
    if not words or Path(words[0]).name != "ham-bench":
        raise ValueError(f"not a ham-bench command: {command}")
    words = words[1:]
    if "-m" not in words and "--multirun" not in words:
        return [words]
    overrides = [w for w in words if w not in ("-m", "--multirun")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [run for batch in BasicSweeper.split_arguments(parsed, None) for run in batch]


def compose_run(overrides: list[str]):
    """The run's composed config (Hydra's included), validated as the app validates it."""
    from hydra import compose, initialize_config_dir

    from ham_bench.cli import CONFIG_DIR
    from ham_bench.validation import validate_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    validate_config(cfg)
    return cfg


def cost(configs: list) -> dict:
    """Runs, epochs (SAM counted twice) and training images of a table's run configs."""
    epochs = sum(cfg.epochs * (2 if cfg.optimizer.name == "sam" else 1) for cfg in configs)
    images = sum(cfg.epochs * (2 if cfg.optimizer.name == "sam" else 1) * TRAIN_IMAGES[cfg.dataset.name]
                 for cfg in configs)
    return {"runs": len(configs), "epochs": epochs, "images": images}


def gpu_hours(images: float, images_per_second: float) -> float:
    return images / images_per_second / 3600.0
