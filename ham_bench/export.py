"""Export a run's final sparse model to a file that is really smaller, and load it back as a plain model.

    python -m ham_bench.export RUN_DIR [--out FILE] [--eval]

reads ``RUN_DIR/checkpoint.pt`` (``engine.checkpoint.load_checkpoint``: weights
only, format-stamped, so a crafted file is refused, never run), writes ``RUN_DIR/model_sparse.npz`` (or
FILE) and ``RUN_DIR/export_report.json``, checks that the reloaded model
gives bit-identical logits, and prints the file sizes next to the dense
model and the checkpoint. ``--eval`` also recomputes the test accuracy
from the exported file and compares it with the run's ``summary.json``
(``--device cuda`` for a run trained on a GPU: CPU and GPU kernels round
differently).

Format: one ``.npz`` (``np.savez_compressed``, loads with
``allow_pickle=False``) holding the model's PLAIN state dict, i.e. the
architecture without any sparsifier: reparameterized weights (STR's soft
threshold, Sign-In's and PILoT's m * w) are stored as the effective weight
the forward pass uses (``sparsifier.effective_weights()``), and their
factors and thresholds are dropped. Each conv/linear weight whose sparse
form is smaller is stored as its support ``w != 0`` in packed bits (1 bit a
weight, ``np.packbits``) plus its nonzero values in C order, in their own
dtype; every other tensor (biases, norm parameters and buffers, dense
layers) is stored as is. A JSON header carries the format, the run's
resolved config, the model's build arguments (``num_classes``,
``in_channels``, ``image_size``) and every tensor's shape, dtype and
encoding. A weight of N entries at density d takes N/8 + 4 d N bytes in
fp32 instead of 4 N: 0.525 bytes a weight at d = 0.1 (7.6x smaller).

Loading (``load_export``) builds the plain model with
``ham_bench.models.build_model(cfg.model, num_classes, in_channels,
image_size)`` and loads the state dict strictly. The values are those of the
run's final weights, so the logits match bit for bit; the one liberty
taken is that a negative zero weight comes back as +0.0 (equal values).

Rebuilding the trained model from a run dir (``restore_run``): config from
the checkpoint's ``config`` entry (else ``.hydra/config.yaml``), model
arguments from the checkpoint's ``model_args`` entry (else the dataset
config's keys, then the classifier's output size and a table of the known
datasets), then ``build_model`` + ``build_sparsifier(cfg.sparsifier)`` +
``attach`` + the checkpoint's model and sparsifier states, so STR's
``projected`` flag and the factors of m * w are exactly the run's.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ham_bench import atomic_io
from ham_bench.mask_dump import decode_header, encode_header, pack_bits, unpack_bits, write_npz
from sparsifiers.base import prunable_layers
from sparsifiers.reparameterization import plain_state_dict as merged_state_dict

FORMAT = "ham-bench-sparse-model/1"
EXPORT_NAME = "model_sparse.npz"
REPORT_NAME = "export_report.json"
# (num_classes, in_channels, image_size) of the datasets the configs know, for checkpoints without model_args
KNOWN_DATASETS = {"fashion_mnist": (10, 1, 28), "mnist": (10, 1, 28), "cifar10": (10, 3, 32),
                  "cifar100": (100, 3, 32), "imagenet": (1000, 3, 224)}
MODEL_ARG_NAMES = ("num_classes", "in_channels", "image_size")
Builder = Callable[[DictConfig, Mapping[str, int]], nn.Module]


# ---- the plain state dict ---------------------------------------------------------------------
@torch.no_grad()
def plain_state_dict(model: nn.Module, sparsifier=None) -> dict[str, torch.Tensor]:
    """The state dict of the plain architecture: parametrized tensors merged, effective weights in place."""
    state = merged_state_dict(model)
    if sparsifier is not None:
        state.update(sparsifier.effective_weights())
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    try:
        return tensor.numpy()
    except TypeError:  # dtypes numpy lacks (bfloat16): store the raw bits
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
        return tensor.view(bits).numpy()


def _from_numpy(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    dtype = getattr(torch, dtype_name)
    tensor = torch.from_numpy(np.array(array))
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


# ---- writing and reading ----------------------------------------------------------------------------
def export_model(model: nn.Module, sparsifier, path, config: Mapping | None = None,
                 model_args: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Write ``model``'s plain state dict (effective weights, sparse ones as packed bits + values) to ``path``."""
    state = plain_state_dict(model, sparsifier)
    weight_keys = (set(sparsifier.effective_weights()) if sparsifier is not None
                   else {f"{name}.weight" for name in prunable_layers(model)})
    arrays, entries = {}, []
    nonzeros = weights_total = 0
    for index, (key, tensor) in enumerate(state.items()):
        entry = {"key": key, "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
        support = tensor != 0 if key in weight_keys and tensor.is_floating_point() else None
        if support is not None:
            count = int(support.sum())
            nonzeros += count
            weights_total += tensor.numel()
        dense_bytes = tensor.numel() * tensor.element_size()
        if support is not None and tensor.numel() / 8 + count * tensor.element_size() < dense_bytes:
            arrays[f"t{index}_support"] = pack_bits(support)
            arrays[f"t{index}_values"] = _to_numpy(tensor[support])
            entry["encoding"] = "sparse"
        else:
            arrays[f"t{index}_dense"] = _to_numpy(tensor)
            entry["encoding"] = "dense"
        entries.append(entry)
    header = {"format": FORMAT, "tensors": entries, "model_args": dict(model_args or {}),
              "config": config if config is None or isinstance(config, dict)
              else OmegaConf.to_container(config, resolve=True),
              "weights": weights_total, "nonzero_weights": nonzeros}
    arrays["header"] = encode_header(header)
    write_npz(Path(path), arrays)
    return {"path": str(path), "bytes": Path(path).stat().st_size,
            "weight_density": nonzeros / weights_total if weights_total else 1.0}


def read_export(path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The plain state dict and the header stored by ``export_model``."""
    with np.load(Path(path), allow_pickle=False) as data:
        header = decode_header(data["header"])
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a ham-bench sparse model (format {header.get('format')!r})")
        state = {}
        for index, entry in enumerate(header["tensors"]):
            if entry["encoding"] == "sparse":
                support = unpack_bits(data[f"t{index}_support"], entry["shape"])
                values = _from_numpy(data[f"t{index}_values"], entry["dtype"])
                tensor = torch.zeros(entry["shape"], dtype=values.dtype)
                tensor[support] = values
            else:
                tensor = _from_numpy(data[f"t{index}_dense"], entry["dtype"]).reshape(entry["shape"])
            state[entry["key"]] = tensor
    return state, header


def default_builder(cfg: DictConfig, model_args: Mapping[str, int]) -> nn.Module:
    from ham_bench.models import build_model

    return build_model(cfg.model, model_args["num_classes"], model_args["in_channels"], model_args["image_size"])


def load_export(path, model: nn.Module | None = None, build: Builder | None = None) -> nn.Module:
    """A plain dense model with the exported weights (eval mode); built from the stored config unless given."""
    state, header = read_export(path)
    if model is None:
        model = (build or default_builder)(OmegaConf.create(header["config"]), header["model_args"])
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- from a run dir ---------------------------------------------------------------------------------
def _run_config(run_dir: Path, checkpoint: Mapping) -> DictConfig:
    if checkpoint.get("config") is not None:
        return OmegaConf.create(checkpoint["config"])
    hydra_config = run_dir / ".hydra" / "config.yaml"
    if hydra_config.exists():
        return OmegaConf.load(hydra_config)
    raise ValueError(f"{run_dir}: the checkpoint has no config and there is no .hydra/config.yaml")


def resolve_model_args(cfg: DictConfig, checkpoint: Mapping, explicit: Mapping | None = None) -> dict[str, int]:
    """num_classes / in_channels / image_size: given, else the checkpoint's, the dataset config's, else inferred."""
    args = {k: int(v) for k, v in dict(checkpoint.get("model_args") or {}).items() if k in MODEL_ARG_NAMES}
    dataset = cfg.get("dataset") or {}
    for key in MODEL_ARG_NAMES:
        if key not in args and dataset.get(key) is not None:
            args[key] = int(dataset.get(key))
    if "num_classes" not in args:  # the classifier: the last 2-D weight of the model
        matrices = [v for k, v in checkpoint["model"].items() if k.endswith("weight") and v.ndim == 2]
        if matrices:
            args["num_classes"] = int(matrices[-1].shape[0])
    known = KNOWN_DATASETS.get(str(dataset.get("name", "")))
    if known is not None:
        for key, value in zip(MODEL_ARG_NAMES, known):
            args.setdefault(key, value)
    args.update({k: int(v) for k, v in dict(explicit or {}).items() if v is not None})
    missing = [key for key in MODEL_ARG_NAMES if key not in args]
    if missing:
        raise ValueError(f"cannot tell the model's {', '.join(missing)} from the run: pass "
                         + " ".join(f"--{key.replace('_', '-')} N" for key in missing))
    return args


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP-wrapped model
        return {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def restore_run(run_dir, build: Builder | None = None, model_args: Mapping | None = None):
    """The trained model and its sparsifier as the run left them: ``(model, sparsifier, cfg, model_args)``."""
    from sparsifiers import TrainingContext, build_sparsifier

    from ham_bench.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_NAME} in that run dir")
    checkpoint = load_checkpoint(path, required=("model",))  # weights_only, format-stamped: never runs code
    cfg = _run_config(run_dir, checkpoint)
    checkpoint["model"] = _strip_module_prefix(checkpoint["model"])
    args = resolve_model_args(cfg, checkpoint, model_args)
    model = (build or default_builder)(cfg, args)
    sparsifier = build_sparsifier(cfg.get("sparsifier"))
    context = TrainingContext(epochs=int(cfg.get("epochs", 1)),
                              steps_per_epoch=int(checkpoint.get("steps_per_epoch", 1)), seed=int(cfg.get("seed", 0)))
    sparsifier.attach(model, context)
    try:
        model.load_state_dict(checkpoint["model"])
        sparsifier.load_state_dict(checkpoint.get("sparsifier", {}))
    except (KeyError, RuntimeError, TypeError) as error:
        raise ValueError(f"{path}: does not fit the model its config describes ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else ''})") from None
    return model.eval(), sparsifier, cfg, args


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def _test_accuracy(model: nn.Module, cfg: DictConfig, device: str = "cpu") -> float:
    """Top-1 (%) on the run's evaluation split, as the trainer computes it (same loader and precision)."""
    from ham_bench.data import build_datasets, build_loader

    data = build_datasets(cfg.dataset)
    loader = build_loader(data.eval, cfg.eval_batch_size, shuffle=False, num_workers=cfg.get("num_workers", 0),
                          seed=cfg.get("seed", 0))
    correct = seen = 0
    device = torch.device(device)
    model = model.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.get("precision") == "bf16")
    with torch.no_grad(), autocast:
        for x, y in loader:
            correct += int((model(x.to(device)).float().argmax(1) == y.to(device)).sum())
            seen += y.size(0)
    return 100.0 * correct / seen


def export_run(run_dir, out=None, build: Builder | None = None, model_args: Mapping | None = None,
               evaluate: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Export a run dir's final model, reload it, check logits bit for bit; writes and returns the report.

    ``evaluate``: also the test accuracy of the reloaded model on ``device`` (use the run's device: CPU
    and GPU kernels round differently, so a GPU run's accuracy is reproduced exactly on a GPU).
    """
    run_dir = Path(run_dir)
    model, sparsifier, cfg, args = restore_run(run_dir, build, model_args)
    out = Path(out) if out is not None else run_dir / EXPORT_NAME
    written = export_model(model, sparsifier, out, OmegaConf.to_container(cfg, resolve=True), args)
    reloaded = load_export(out, build=build)
    x = torch.randn(8, args["in_channels"], args["image_size"], args["image_size"],
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        identical = _bitwise_equal(model(x), reloaded(x))
    dense = io.BytesIO()
    torch.save(plain_state_dict(model, sparsifier), dense)
    report = {
        "export_path": str(out),
        "export_bytes": written["bytes"],
        "dense_model_bytes": len(dense.getvalue()),
        "checkpoint_bytes": (run_dir / "checkpoint.pt").stat().st_size,
        "export_fraction_of_dense_model": written["bytes"] / len(dense.getvalue()),
        "weight_density": written["weight_density"],
        "logits_bitwise_equal": identical,
        "model_args": args,
    }
    if evaluate:
        summary_path = run_dir / "summary.json"
        report["test_acc_export"] = _test_accuracy(reloaded, cfg, device)
        report["test_acc_run"] = (json.loads(summary_path.read_text()).get("final_test_acc")
                                  if summary_path.exists() else None)
        report["test_acc_equal"] = report["test_acc_export"] == report["test_acc_run"]
    atomic_io.write_json(run_dir / REPORT_NAME, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ham-bench export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help=f"output file (default: RUN_DIR/{EXPORT_NAME})")
    parser.add_argument("--eval", action="store_true", help="recompute the test accuracy from the exported file")
    parser.add_argument("--device", default="cpu", help="device for --eval (the run's, to reproduce it exactly)")
    for key in MODEL_ARG_NAMES:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help="only for checkpoints that do not record it")
    options = parser.parse_args(argv)
    explicit = {key: getattr(options, key) for key in MODEL_ARG_NAMES}
    try:
        report = export_run(options.run_dir, options.out, model_args=explicit, evaluate=options.eval,
                            device=options.device)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError (a bad checkpoint or config) is a ValueError
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    mib = 1024 * 1024
    print(f"{report['export_path']}: {report['export_bytes'] / mib:.3f} MiB "
          f"({100 * report['export_fraction_of_dense_model']:.1f}% of the dense model's "
          f"{report['dense_model_bytes'] / mib:.3f} MiB; checkpoint.pt {report['checkpoint_bytes'] / mib:.3f} MiB), "
          f"weight density {report['weight_density']:.4f}, logits bit-identical: {report['logits_bitwise_equal']}"
          + (f", test acc {report['test_acc_export']:.2f}% (run: {report['test_acc_run']})" if options.eval else ""))
    return 0 if report["logits_bitwise_equal"] and report.get("test_acc_equal", True) else 1


if __name__ == "__main__":
    sys.exit(main())
