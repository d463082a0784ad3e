"""Data parallelism on CPU (gloo): ranks stay in lockstep, 2 x 64 follows 1 x 128, one run dir per run.

Two launches of ``torch.multiprocessing.spawn`` (2 ranks, then 1 rank) run
several short experiments each through ``ham_bench.run.run_experiment``
(Fashion-MNIST subset of 768 samples, the small ``cnn``, 2 epochs: 6 steps of
64 samples per rank and epoch), recording per-step losses, masks and AC/DC
phases, the gradient the optimizer sees, and the final weights. One
``torchrun --nproc_per_node=2 -m ham_bench`` run checks the command line:
Hydra's per-process run dirs collapse into one, with one summary.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ham_bench import distributed
from ham_bench.cli import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent
COMMON = ["dataset.subset=768", "epochs=2", "progress=false", "ham.implementation=foreach", "ham.alpha=5",
          "eval_batch_size=64"]
SPARSE = ["sparsifier.sparsity=0.8"]
# name -> overrides; every run uses COMMON and the per-rank batch of its launch
SCENARIOS_2 = {
    # RigL: updates at steps 2, 4, 6, 8 (T_end = 0.75 * 12 steps)
    "rigl": ["sparsifier=rigl", *SPARSE, "sparsifier.update_interval=2"],
    # AC/DC over 12 steps: dense 0-1, compressed 2-3, decompressed 4-8, final compressed 9-11
    "acdc": ["sparsifier=acdc", *SPARSE, "sparsifier.dense_warmup=0.17", "sparsifier.compressed_length=0.17",
             "sparsifier.decompressed_length=0.17", "sparsifier.final_compressed_length=0.25"],
    # STR's thresholds leave the forward pass at its projection after epoch 1 (DDP must allow that)
    "str": ["sparsifier=str", *SPARSE, "sparsifier.projection_at=0.5"],
    # PILoT adapts its decay from the (all-reduced) training accuracy, prunes after epoch 1
    "pilot": ["sparsifier=pilot", *SPARSE, "sparsifier.prune_at=0.5"],
    "bn": ["sparsifier=random", *SPARSE],
    "no_bn": ["sparsifier=random", *SPARSE, "model=mlp", "optimizer.lr=0.1"],  # LeNet-300-100: no BatchNorm
}
SCENARIOS_1 = {name: SCENARIOS_2[name] for name in ("bn", "no_bn")}
TIMING_KEYS = {"epoch_seconds", "samples_per_second", "compile_seconds"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the spawned ranks --------------------------------------------------------------------
def instrument(trainer, record: dict) -> None:
    """Record per-step losses, masks, AC/DC phases and the gradients of the first optimizer step."""
    criterion, after_step, step = trainer.criterion, trainer.sparsifier.after_step, trainer.optimizer.step

    def recording_criterion(logits, y):
        loss = criterion(logits, y)
        record["losses"].append(loss.detach().clone())
        return loss

    def recording_after_step(index):
        after_step(index)
        masks = trainer.sparsifier.masks()
        record["masks"].append(torch.cat([m.flatten() for m in masks.values()]) if masks else None)
        record["phases"].append(getattr(trainer.sparsifier, "phase", None))

    def recording_step(*args, **kwargs):
        if not record["grads"]:
            record["grads"] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        return step(*args, **kwargs)

    trainer.criterion = recording_criterion
    trainer.sparsifier.after_step = recording_after_step
    trainer.optimizer.step = recording_step


def run_scenarios(rank: int, world: int, port: int, batch_size: int, scenarios: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    torch.set_num_threads(1)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ham_bench import run

    assert distributed.init("cpu") and distributed.world_size() == world
    datasets, build_datasets, build_trainer = {}, run.build_datasets, run.build_trainer
    run.build_datasets = lambda cfg: datasets.setdefault(OmegaConf.to_yaml(cfg), build_datasets(cfg))
    record: dict = {}

    def instrumented_build_trainer(cfg, run_dir, resume_state=None):
        trainer = build_trainer(cfg, run_dir, resume_state)
        instrument(trainer, record)
        record["trainer"] = trainer
        return trainer

    run.build_trainer = instrumented_build_trainer
    out = Path(out)
    # rank 0 writes into <out>/<name>; any other rank is given a dir of its own, which must stay absent
    own = "" if rank == 0 else f"_rank{rank}"
    results = {}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name, overrides in scenarios.items():
            cfg = compose(config_name="train", overrides=[*COMMON, *overrides, f"batch_size={batch_size}"])
            record.update(losses=[], masks=[], phases=[], grads={})
            summary = run.run_experiment(cfg, out / f"{name}{own}")
            losses = torch.stack(record["losses"])
            torch.distributed.all_reduce(losses)  # equal per-rank batches: the global loss is the ranks' mean
            model = record["trainer"].model
            results[name] = {"losses": (losses / world).tolist(), "masks": record["masks"],
                             "phases": record["phases"], "grads": record["grads"], "status": summary["status"],
                             "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if "rigl" in scenarios:  # interrupted after epoch 1, resumed on every rank from rank 0's checkpoint
            cfg = compose(config_name="train", overrides=[*COMMON, *scenarios["rigl"], f"batch_size={batch_size}",
                                                          "stop_after_epochs=1"])
            assert run.run_experiment(cfg, out / f"rigl_part{own}")["status"] == "stopped"
            cfg.stop_after_epochs, cfg.resume = None, str(out / "rigl_part")
            results["rigl_resumed"] = {"status": run.run_experiment(cfg, out / f"rigl_part{own}")["status"]}
    torch.save(results, out / f"rank{rank}.pt")
    distributed.finish()  # leave together, as the CLI does


def launch(world: int, batch_size: int, scenarios: dict, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(run_scenarios, args=(world, free_port(), batch_size, scenarios, str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp2")
    return out, launch(2, 64, SCENARIOS_2, out)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp1")
    return out, launch(1, 128, SCENARIOS_1, out)


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- ranks in lockstep ------------------------------------------------------------------
def test_rigl_masks_identical_on_both_ranks_after_every_update(two_ranks):
    _, (rank0, rank1) = two_ranks
    masks0, masks1 = rank0["rigl"]["masks"], rank1["rigl"]["masks"]
    assert len(masks0) == len(masks1) == 12
    assert all(torch.equal(a, b) for a, b in zip(masks0, masks1))
    changed = [step for step in range(1, 12) if not torch.equal(masks0[step], masks0[step - 1])]
    assert changed == [2, 4, 6, 8]  # the updates happened, and on the same steps on both ranks


def test_acdc_phase_switches_and_masks_identical_on_both_ranks(two_ranks):
    _, (rank0, rank1) = two_ranks
    phases = rank0["acdc"]["phases"]  # the phase after each step's after_step, i.e. of the next step
    assert phases == rank1["acdc"]["phases"]
    assert phases == ["dense", "compressed", "compressed", "decompressed", "decompressed", "decompressed",
                      "decompressed", "decompressed", "compressed", "compressed", "compressed", "compressed"]
    for a, b in zip(rank0["acdc"]["masks"], rank1["acdc"]["masks"]):
        assert (a is None and b is None) or torch.equal(a, b)
    # the two compressions chose different masks (magnitudes moved in between), identically on both ranks
    assert not torch.equal(rank0["acdc"]["masks"][1], rank0["acdc"]["masks"][-1])


@pytest.mark.parametrize("name", list(SCENARIOS_2))
def test_weights_identical_across_ranks_after_training(two_ranks, name):
    _, (rank0, rank1) = two_ranks
    assert rank0[name]["status"] == rank1[name]["status"] == "completed"
    state0, state1 = rank0[name]["state"], rank1[name]["state"]
    assert state0.keys() == state1.keys()
    different = [key for key in state0 if not torch.equal(state0[key], state1[key])]
    assert different == []  # parameters, masks' effect, and BN buffers (broadcast before evaluation)


def test_optimizer_and_ham_see_the_all_reduced_gradient(two_ranks, one_rank):
    _, (rank0, rank1) = two_ranks
    _, (single,) = one_rank
    for name in SCENARIOS_2:
        grads0, grads1 = rank0[name]["grads"], rank1[name]["grads"]
        assert grads0 and all(torch.equal(grads0[k], grads1[k]) for k in grads0), name
    # without BatchNorm the averaged 2 x 64 gradient is the 1 x 128 gradient (up to summation order)
    for key, grad in single["no_bn"]["grads"].items():
        torch.testing.assert_close(rank0["no_bn"]["grads"][key], grad, rtol=1e-5, atol=1e-7)


def test_two_by_64_follows_one_by_128(two_ranks, one_rank):
    """The global per-step training loss of 2 ranks x 64 against 1 rank x 128, on the same samples per step.

    Without BatchNorm (the MLP) both runs compute the same function of the same
    batches and differ only in floating-point summation order (the gradient
    all-reduce averages two 64-sample means): the 12-step curves agree to
    1e-5 (measured: 2.4e-7 at most). With BatchNorm (the CNN) each rank
    normalises by the statistics of its own 64 samples (DDP's default, no
    SyncBatchNorm), a different function of the batch than 128-sample
    statistics, so the losses differ from step 0 and drift a little: the
    tolerance is 0.05 per step and 0.02 on the mean (measured: 0.005 and
    0.002, while the loss falls from 2.35 to 0.88).
    """
    _, (rank0, _) = two_ranks
    _, (single,) = one_rank
    no_bn = torch.tensor(rank0["no_bn"]["losses"]) - torch.tensor(single["no_bn"]["losses"])
    bn = torch.tensor(rank0["bn"]["losses"]) - torch.tensor(single["bn"]["losses"])
    assert len(no_bn) == len(bn) == 12
    assert no_bn.abs().max() < 1e-5, no_bn
    assert bn.abs().max() < 0.05 and bn.abs().mean() < 0.02, bn
    assert bn.abs().max() > no_bn.abs().max()  # the BatchNorm difference is real, not noise


# ---- outputs ----------------------------------------------------------------------------------
def test_only_rank_0_writes(two_ranks):
    out, _ = two_ranks
    for name in SCENARIOS_2:
        assert json.loads((out / name / "summary.json").read_text())["status"] == "completed"
        assert len(rows(out / name)) == 2 and (out / name / "checkpoint.pt").exists()
        assert not (out / f"{name}_rank1").exists()  # rank 1 was given its own dir and wrote nothing


def test_resume_under_ddp_reproduces_the_uninterrupted_run(two_ranks):
    out, (rank0, rank1) = two_ranks
    assert rank0["rigl_resumed"]["status"] == rank1["rigl_resumed"]["status"] == "completed"
    assert rows(out / "rigl_part") == rows(out / "rigl")
    assert not (out / "rigl_part_rank1").exists()


def test_torchrun_command_line_makes_one_run_dir(tmp_path):
    """Under torchrun every rank runs Hydra, which resolves ${now:...} per process: one dir must remain."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         "-m", "ham_bench", *COMMON, "batch_size=64", "sparsifier=rigl", *SPARSE, "sparsifier.update_interval=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoint.pt", "cli.log", "metrics.jsonl",
                                                         "summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert abs(summary["final_sparsity"] - 0.8) < 1e-3
    assert summary["sign_flips_total"] == sum(r["sign_flips"] for r in rows(run_dir))  # rank 0's count only
    log = result.stdout + result.stderr
    assert "global batch 128 = 64 per rank x 2" in log
    assert log.count("epoch 2/2") == 1  # rank 1 logs warnings only


# ---- helpers without a process group ------------------------------------------------------
def test_helpers_are_no_ops_in_a_single_process():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.train_sampler(range(10), 0) is None and distributed.eval_sampler(range(10)) is None
    loss = torch.tensor(0.1, dtype=torch.float32)
    assert distributed.global_sums(loss, torch.tensor(3), 7) == [loss.item(), 3, 7]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model
    assert distributed.shared_run_dir(Path("x")) == Path("x")


def test_eval_shards_partition_the_set_without_padding():
    shards = [list(distributed.ShardSampler(range(11), 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert [len(distributed.ShardSampler(range(11), 3, r)) for r in range(3)] == [4, 4, 3]


def test_ranks_above_0_keep_hydra_out_of_their_dir(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert distributed.hydra_overrides_for_rank(["epochs=1"]) == ["hydra.output_subdir=null",
                                                                  "hydra/job_logging=stdout"]
    assert distributed.hydra_overrides_for_rank(["hydra.output_subdir=null"]) == ["hydra/job_logging=stdout"]
    monkeypatch.setenv("RANK", "0")
    assert distributed.hydra_overrides_for_rank(["epochs=1"]) == []


def test_gpu_throughput_bench_path_runs_on_cpu_at_tiny_size(tmp_path):
    """scripts/bench_ddp.py --throughput is meant for a GPU; its code path is checked here at 32 x 32."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ddp", REPO / "scripts" / "bench_ddp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.md"
    assert bench.main(["--throughput", "--device", "cpu", "--image-size", "32", "--batch-size", "2", "--steps", "1",
                       "--warmup", "0", "--ham-implementation", "foreach", "--out", str(out)]) == 0
    table = [line for line in out.read_text().splitlines() if line.startswith("| SGD")]
    assert [line.split(" | ")[0] for line in table] == ["| SGD", "| SGD + HAM", "| SGD + HAM + 90 % mask"]


def test_resume_of_a_sweep_job_dir_parses_and_stays_in_that_dir():
    """SLURM runs land in sweep job dirs such as ``0_seed=0,sparsifier=rigl``; resume=<that> (also with -m)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ham_bench.cli import _resume_overrides

    job_dir = "multirun/2026-11-27/12-00-00/0_seed=0,sparsifier=rigl"
    argv = _resume_overrides(["hydra/launcher=slurm_ddp", f"resume={job_dir}"])
    parsed = {o.key_or_group: o.value() for o in map(OverridesParser.create().parse_override, argv)}
    assert parsed["resume"] == parsed["hydra.run.dir"] == parsed["hydra.sweep.dir"] == job_dir
    assert parsed["hydra.sweep.subdir"] == "." and parsed["hydra.output_subdir"] is None
    assert _resume_overrides(["epochs=1"]) == ["epochs=1"]


def test_slurm_ddp_launcher_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm_ddp", "hydra.launcher.nodes=4", "hydra.launcher.partition=gpu",
                                 "hydra.launcher.timeout_min=600"])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)  # what hydra.main does before it resolves the launcher's folders
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (4, 8, 8)
    assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 600)
