"""Golden outputs of the training loop: every sparsifier config x {HAM off, HYP*} x {SGD, SAM}.

One epoch on a fixed Fashion-MNIST subset with a fixed seed. ``record`` runs
them through the real app path (Hydra compose + ``run_experiment``) and keeps
every metrics-row and summary value except wall-clock times; ``python -m
tests.golden.runs --write`` stores them in ``engine_runs.json`` with the
machine's fingerprint. ``tests/test_golden.py`` re-runs them and compares.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

GOLDEN_FILE = Path(__file__).with_name("engine_runs.json")
METHODS = ("dense", "random", "acdc", "rigl", "str", "signin", "rigl_signin", "acdc_signin", "pilot")
HAMS = ("off", "hyp_star")
OPTIMIZERS = ("sgd", "sam")
COMMON = ["dataset.subset=1280", "epochs=1", "progress=false", "log_every=5", "seed=3"]
EXTRA = {"rigl": ["sparsifier.update_interval=3"], "rigl_signin": ["sparsifier.inner.update_interval=3"]}
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "compile_seconds", "seconds", "segment_seconds",
               "provenance"}  # and where it ran


def cases():
    for method in METHODS:
        for ham in HAMS:
            for optimizer in OPTIMIZERS:
                yield f"{method}-{ham}-{optimizer}"


def overrides(case: str) -> list[str]:
    method, ham, optimizer = case.split("-")
    extra = [] if method == "dense" else ["sparsifier.sparsity=0.8"]
    return [f"sparsifier={method}", f"ham={ham}", f"optimizer={optimizer}", *COMMON, *extra, *EXTRA.get(method, [])]


def fingerprint() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": model, "threads": torch.get_num_threads()}


def _without_timing(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if k not in TIMING_KEYS}


def record(case: str) -> dict:
    """The run's metrics rows and summary (JSON round-tripped), timing keys dropped."""
    from hydra import compose, initialize_config_dir

    from ham_bench.cli import CONFIG_DIR
    from ham_bench.run import run_experiment

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(case))
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run_experiment(cfg, Path(run_dir))
        rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return json.loads(json.dumps({"rows": [_without_timing(r) for r in rows],
                                  "summary": _without_timing(summary)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"store the outputs in {GOLDEN_FILE.name}")
    args = parser.parse_args()
    results = {}
    for case in cases():
        results[case] = record(case)
        print(case, results[case]["summary"]["final_test_acc"], flush=True)
    if args.write:
        GOLDEN_FILE.write_text(json.dumps({"fingerprint": fingerprint(), "runs": results}, indent=1,
                                          sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
