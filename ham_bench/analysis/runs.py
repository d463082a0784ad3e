"""The runs of a ham-bench sweep: find them, read them, group them by config (seeds pooled).

Every directory under the given paths that holds a ``summary.json``, a
``.hydra/config.yaml`` or a ``metrics.jsonl`` is one run (its subfolders, e.g.
wandb's, are not searched). A run's status is its summary's (``completed``,
``stopped``, ``interrupted``, ``failed``, ``diverged``) or ``incomplete`` without a
summary (still running, or killed). A run's method is the name its sparsifier instance reported in
summary.json (``rigl+signin``, a plugin's own name), so a plugin layered over a
built-in config (``sparsifier=random +sparsifier._target_=my.Method``) is never
taken for that built-in; without a summary, the config's ``_target_`` class path
or name stands in (``sparsifier_name``). Runs are grouped by their whole resolved config except the seed and
the settings that do not change results (device, workers, memory layout,
logging, progress, resume, data paths; HAM's settings when HAM is off). Two
completed runs of one group and seed (a sweep given twice) count once: the
newest is used, the others are kept as duplicates.

Every table, plot and ranking of ``ham_bench.analysis`` reads its runs through this module.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ham_bench.analysis.labels import OPTIMIZER_LABELS, family, method_label

# config keys that never change a result: left out of grouping and of row labels
IGNORED_KEYS = ("seed", "sparsifier.seed", "sparsifier.inner.seed", "resume", "stop_after_epochs", "progress",
                "log_every", "device", "num_workers", "eval_batch_size", "ham_warn_clamp_fraction",
                "ham.diagnostics", "ham.implementation", "ham.warn_exponent", "ham.warn_every", "dataset.root",
                "dataset.download", "channels_last", "dump_masks_at")
IGNORED_PREFIXES = ("logger.", "hydra.")


@dataclass
class Run:
    path: Path
    status: str                    # completed | stopped | interrupted | failed | diverged | incomplete
    summary: dict
    config: dict                   # resolved, nested
    flat: dict                     # flattened, only result-relevant keys
    seed: Any
    base: str                      # base sparsity method: dense, random, acdc, rigl, str, pilot, ...
    signin: bool
    ham: str                       # off | hyp_star | hyp
    optimizer: str
    epochs: int | None
    sparsity: float
    eval_split: str
    mtime: float = 0.0
    epochs_done: int = 0
    note: str = ""

    @property
    def method(self) -> str:
        """Row label in the paper's spelling: Random, Random+Sign-In, AC/DC+HAM, baseline, HAM, ..."""
        return method_label(self.base, self.signin, self.ham)

    @property
    def family(self) -> str:
        return family(self.base)

    @property
    def dense_column(self) -> str:
        """The dense table's column: ``100 ep`` (SGD), ``+SAM 100 ep``, ``+AdamW 100 ep``."""
        prefix = "" if self.optimizer == "sgd" else f"+{OPTIMIZER_LABELS.get(self.optimizer, self.optimizer)} "
        return f"{prefix}{self.epochs} ep"


def _flatten(node: Any, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):
        return {prefix[:-1]: json.dumps(node)}
    return {prefix[:-1]: node}


def relevant(flat: dict) -> dict:
    """Result-relevant keys; HAM's settings count only when HAM is on (ham=off keeps the overlay's alpha)."""
    ham_off = flat.get("ham.enabled") is False
    return {k: v for k, v in flat.items()
            if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)
            and not (ham_off and k.startswith("ham.") and k != "ham.enabled")}


def _load_config(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    from omegaconf import DictConfig, OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # not YAML, or not a mapping: say which file, in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"error: {path}: not a readable run config ({reason})") from None
    if not isinstance(cfg, DictConfig):
        raise SystemExit(f"error: {path}: not a readable run config (not a mapping)")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that no longer resolves: keep it unresolved
        return OmegaConf.to_container(cfg, resolve=False)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _count_rows(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").exists() or (path / ".hydra" / "config.yaml").exists() \
        or (path / "metrics.jsonl").exists()


def find_run_dirs(paths: list[Path]) -> list[Path]:
    found = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise SystemExit(f"error: {root}: no such directory")
        if is_run_dir(root):
            found.append(root)
            continue
        for current, dirs, _files in os.walk(root):
            current_path = Path(current)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if current_path != root and is_run_dir(current_path):
                found.append(current_path)
                dirs[:] = []  # a run dir's subfolders (wandb, ...) are not runs
    return sorted(set(found))


def sparsifier_name(instance_name: str | None, sparsifier_cfg: dict) -> tuple[str, bool]:
    """(base method, Sign-In on top) of a run.

    The name the instance reported (summary.json's ``method.sparsifier``: ``rigl``,
    ``rigl+signin``, a plugin's own ``name``) decides. A run without a summary (killed) falls back
    to its config: the class path when ``_target_`` is set (the config's ``name`` is then only the
    config file the plugin was layered over), else the config's name, Sign-In's from its inner method.
    """
    target = sparsifier_cfg.get("_target_")
    name = instance_name or (str(target) if target else sparsifier_cfg.get("name")) or "unknown"
    if name == "signin":  # the config's name: Sign-In over its inner method
        name = f"{(sparsifier_cfg.get('inner') or {}).get('name', 'random')}+signin"
    if name.endswith("+signin"):
        return name[:-len("+signin")], True
    return name, False


def load_run(run_dir: Path) -> Run:
    """One run from its summary.json and .hydra/config.yaml (either may be missing)."""
    summary = _read_json(run_dir / "summary.json")
    config = _load_config(run_dir)
    epochs_done = _count_rows(run_dir / "metrics.jsonl")
    if summary is None:
        status, summary, mtime = "incomplete", {}, 0.0
        note = "no summary.json (still running, or killed)"
    else:
        status = summary.get("status") or "unknown"
        mtime = (run_dir / "summary.json").stat().st_mtime
        note = summary.get("error") or ""
        epochs_done = summary.get("epochs", epochs_done)
    method = summary.get("method", {})
    sparsifier = config.get("sparsifier") or {}
    base, signin = sparsifier_name(method.get("sparsifier"), sparsifier)
    ham_cfg = config.get("ham") or {}
    if ham_cfg:
        ham = ham_cfg.get("variant", "hyp_star") if ham_cfg.get("enabled") else "off"
    else:
        ham = method.get("ham", "off")
    sparsity = summary.get("target_sparsity")
    if sparsity is None:
        sparsity = sparsifier.get("sparsity", (sparsifier.get("inner") or {}).get("sparsity", 0.0))
    flat = relevant(_flatten(config)) if config else relevant(_flatten({"method": method}))
    seed = config.get("seed", method.get("seed"))
    eval_split = summary.get("eval_split") or (config.get("dataset") or {}).get("eval_split") or "test"
    return Run(path=run_dir, status=status, summary=summary, config=config, flat=flat, seed=seed,
               base=base, signin=signin, ham=ham,
               optimizer=(config.get("optimizer") or {}).get("name") or method.get("optimizer", "?"),
               epochs=config.get("epochs", summary.get("epochs_planned")), sparsity=float(sparsity or 0.0),
               eval_split=eval_split, mtime=mtime, epochs_done=epochs_done, note=note)


def collect_runs(paths: list[Path]) -> list[Run]:
    return [load_run(path) for path in find_run_dirs(paths)]


@dataclass
class Group:
    runs: list[Run]                                  # every run of this config, any status
    used: list[Run] = field(default_factory=list)    # completed, one per seed
    duplicates: list[Run] = field(default_factory=list)
    label: str = ""                                  # row label (method, plus any setting that tells rows apart)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def flagged(self) -> bool:
        return any(run.status != "completed" for run in self.runs)

    def values(self, key: str) -> list[float]:
        out = []
        for run in self.used:
            value = run.summary.get(key)
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                out.append(float(value))
        return out


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by the result-relevant config (all but the seed); keep one completed run per seed."""
    groups: dict[tuple, Group] = {}
    for run in runs:
        key = (run.method, tuple(sorted((k, json.dumps(v, sort_keys=True, default=str))
                                        for k, v in run.flat.items())))
        groups.setdefault(key, Group(runs=[])).runs.append(run)
    for group in groups.values():
        by_seed: dict[Any, list[Run]] = {}
        for run in group.runs:
            if run.status == "completed":
                by_seed.setdefault(run.seed, []).append(run)
        for seed_runs in by_seed.values():
            seed_runs.sort(key=lambda r: r.mtime, reverse=True)
            group.used.append(seed_runs[0])
            group.duplicates.extend(seed_runs[1:])
        group.used.sort(key=lambda r: str(r.seed))
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None with one value)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std
