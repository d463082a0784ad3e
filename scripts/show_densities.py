"""Print the per-layer density table a sparsifier config would give a model, without training.

Usage (Hydra-style overrides, as on the ham-bench command line)::

    python scripts/show_densities.py model=resnet50 sparsifier=rigl sparsifier.sparsity=0.9
    python scripts/show_densities.py model=resnet50 sparsifier=random sparsifier.distribution=uniform
    python scripts/show_densities.py model=cnn sparsifier=acdc num_classes=10 in_channels=1 image_size=28

``model=NAME`` uses ``configs/model/NAME.yaml`` with ``ham_bench.models.build_model``
when both exist, else ``torchvision.models.get_model(NAME)`` (built on the
meta device, then given uninitialised storage: nothing is initialised).
``sparsifier=NAME`` composes ``configs/sparsifier/NAME.yaml`` with Hydra (its
defaults list included); ``sparsifier.KEY=VALUE`` and ``model.KEY=VALUE``
override single keys, with Hydra's syntax (``+sparsifier.KEY=`` adds one).
``num_classes``, ``in_channels`` and ``image_size`` (defaults 1000, 3, 224)
describe the data the model is built for.

Columns: layer, weight shape, parameters, target density, target nonzeros;
kept-dense layers are marked. The summary gives the target sparsity over the
masked layers and over all conv + linear layers. For ``distribution=global``
(AC/DC) per-layer densities depend on the trained weights: the table shows
the uniform share and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from sparsifiers import build_sparsifier
from sparsifiers.base import TrainingContext
from sparsifiers.distributions import active_counts

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ROOT / "configs"


def parse(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("overrides", nargs="*", help="key=value overrides (model=, sparsifier=, sparsifier.KEY=, ...)")
    args = parser.parse_args(argv)
    options = {"model": "resnet50", "sparsifier": "rigl", "num_classes": 1000, "in_channels": 3, "image_size": 224}
    group_overrides = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        bare = key.lstrip("+~")
        if not sep:
            parser.error(f"override {item!r} is not key=value")
        if bare.startswith(("sparsifier.", "model.")):
            group_overrides.append(item)
        elif bare in options:
            options[bare] = int(value) if bare in ("num_classes", "in_channels", "image_size") else value
        else:
            parser.error(f"unknown key {bare!r}: use model=, sparsifier=, sparsifier.KEY=, model.KEY=, "
                         f"num_classes=, in_channels=, image_size=")
    options["group_overrides"] = group_overrides
    return options


def compose(options: dict):
    """The ``sparsifier`` (and, when it has a config, ``model``) groups composed by Hydra, defaults lists included."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    sparsifiers = sorted(p.stem for p in (CONFIGS / "sparsifier").glob("*.yaml"))
    if options["sparsifier"] not in sparsifiers:
        raise SystemExit(f"sparsifier must be one of [{', '.join(sparsifiers)}], got {options['sparsifier']!r}")
    overrides = [f"+sparsifier={options['sparsifier']}"]
    has_model_config = (CONFIGS / "model" / f"{options['model']}.yaml").exists()
    if has_model_config:
        overrides.append(f"+model={options['model']}")
    overrides += [o for o in options["group_overrides"] if has_model_config or not o.lstrip("+~").startswith("model.")]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        try:
            return hydra_compose(overrides=overrides)
        except Exception as error:  # Hydra's override/composition errors: keep the reason, drop the trace
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise SystemExit(" ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else str(error)) from None


def build_model(options: dict, model_cfg) -> torch.nn.Module:
    name = options["model"]
    if model_cfg is not None:
        try:
            from ham_bench.models import build_model as build
        except ImportError:
            build = None
        if build is not None:
            return build(model_cfg, options["num_classes"], options["in_channels"], options["image_size"])
    import torchvision
    if name not in torchvision.models.list_models():
        raise SystemExit(f"model {name!r}: no configs/model/{name}.yaml and not a torchvision model")
    with torch.device("meta"):
        return torchvision.models.get_model(name, num_classes=options["num_classes"])


def table(sparsifier) -> tuple[list[tuple], dict]:
    shapes = {f"{name}.weight": tuple(m.weight.shape) for name, m in sparsifier.layers.items()}
    densities = sparsifier.target_densities()
    counts = active_counts(shapes, densities)
    masked = set(sparsifier.masked_keys)
    rows = []
    for key, shape in shapes.items():
        params = torch.Size(shape).numel()
        rows.append((key, "x".join(map(str, shape)), params, densities[key], counts[key],
                     "" if key in masked else "kept dense"))
    total = sum(r[2] for r in rows)
    total_masked = sum(r[2] for r in rows if r[0] in masked)
    nonzeros = sum(r[4] for r in rows)
    nonzeros_masked = sum(r[4] for r in rows if r[0] in masked)
    summary = {"params": total, "nonzeros": nonzeros,
               "sparsity_masked": 1 - nonzeros_masked / total_masked if total_masked else 0.0,
               "sparsity_all": 1 - nonzeros / total if total else 0.0}
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    composed = compose(options)
    cfg = composed.sparsifier
    try:
        sparsifier = build_sparsifier(cfg)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    model = build_model(options, composed.get("model"))
    if any(p.is_meta for p in model.parameters()):
        model = model.to_empty(device="cpu")  # uninitialised storage: masks need real tensors, not values
    sparsifier.attach(model, TrainingContext(epochs=100, steps_per_epoch=1000, seed=0))
    rows, summary = table(sparsifier)
    width = max(len(r[0]) for r in rows)
    print(f"model {options['model']}  sparsifier {options['sparsifier']}: "
          f"{json.dumps(OmegaConf.to_container(cfg, resolve=True))}")
    print(f"{'layer':<{width}}  {'shape':>16}  {'params':>10}  {'density':>8}  {'nonzeros':>10}")
    for key, shape, params, density, count, note in rows:
        print(f"{key:<{width}}  {shape:>16}  {params:>10}  {100 * density:>7.2f}%  {count:>10}  {note}")
    print(f"total: {summary['params']} weights in {len(rows)} conv/linear layers, {summary['nonzeros']} nonzeros")
    print(f"target sparsity {summary['sparsity_masked']:.4f} over the masked layers, "
          f"{summary['sparsity_all']:.4f} over all conv/linear layers "
          f"(first conv {'dense' if sparsifier.selection.dense_first else 'masked'}, "
          f"last linear {'dense' if sparsifier.selection.dense_last else 'masked'})")
    if getattr(sparsifier, "distribution", None) == "global":
        print("distribution=global: only the total is fixed; per-layer densities follow the weight magnitudes "
              "at each compression (the table shows the uniform share)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
