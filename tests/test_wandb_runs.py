"""wandb, for real and offline: a resumed run logs into the same wandb run, a sweep's runs share a group, and
per-step rows are logged every ``log_every`` steps (issue 14, item 4). The offline run files are read back
record by record (wandb's own log format: a 7-byte header, then 32 KiB blocks of length-prefixed records)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

from cli_runs import ham_bench, summary

SHORT = ["logger=wandb", "dataset.subset=600", "epochs=2", "progress=false", "ham.implementation=foreach",
         "log_every=2"]  # 4 steps per epoch
BLOCK = 32768


def _records(path: Path):
    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # the zero padding at a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:      # a whole record
            yield chunk
        elif kind == 2:    # first part
            parts = chunk
        elif kind == 3:    # middle part
            parts += chunk
        elif kind == 4:    # last part
            yield parts + chunk


def offline_runs(run_dir: Path) -> list[dict]:
    """Each offline run dir under ``run_dir/wandb``: its run id, group and history rows."""
    found = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        run, rows = None, []
        for raw in _records(next(folder.glob("*.wandb"))):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
        found.append({"id": run.run_id, "group": run.run_group, "rows": rows, "dir": folder.name})
    return found


def test_a_resumed_run_logs_into_the_same_wandb_run_with_per_step_rows(tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-home")}
    first = ham_bench(*SHORT, "stop_after_epochs=1", f"hydra.run.dir={run_dir}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = ham_bench(f"resume={run_dir}", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed"
    runs = offline_runs(run_dir)
    # wandb writes one offline dir per process; both carry the same id, so `wandb sync` makes ONE run of them
    assert len(runs) == 2 and len({run["id"] for run in runs}) == 1, [run["dir"] for run in runs]
    assert all(run["dir"].endswith(runs[0]["id"]) for run in runs)
    steps = [row["global_step"] for run in runs for row in run["rows"] if "step/train_loss" in row]
    assert steps == [2, 4, 6, 8]  # every log_every=2 steps, across the resume
    epochs = [(row["epoch"], row["global_step"]) for run in runs for row in run["rows"] if "epoch" in row]
    assert epochs == [(1, 4), (2, 8)]
    assert all({"step/train_acc", "step/lr"} <= set(row) for run in runs for row in run["rows"]
               if "step/train_loss" in row)
    assert runs[0]["group"] == ""  # a single run: no group unless logger.wandb.group is set


def test_a_sweeps_runs_share_a_wandb_group(tmp_path):
    sweep = tmp_path / "mysweep"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-home")}
    result = ham_bench("-m", *SHORT, "seed=0,1", f"hydra.sweep.dir={sweep}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir() and not path.name.startswith("."))
    runs = [run for job in jobs for run in offline_runs(job)]
    assert len(runs) == 2 and {run["group"] for run in runs} == {"mysweep"}
    assert runs[0]["id"] != runs[1]["id"]


def test_logger_wandb_group_must_be_a_name(tmp_path):
    result = ham_bench("logger=wandb", "logger.wandb.group=[1]", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: logger.wandb.group must be a name (a string) or null, "
                                                      "got [1]")
