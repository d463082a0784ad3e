"""Sparse export: smaller on disk, reloads into the plain model with bit-identical logits, from live objects
and from run dirs (checkpoint as the trainer writes it), for plain and reparameterized sparsifiers."""

import io
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ham_bench.engine.checkpoint import save_checkpoint
from ham_bench.export import export_model, export_run, load_export, main, read_export
from hook_loop import random_batches, sgd_for, train_in_hook_order
from sparsifiers import build_sparsifier
from sparsifiers.base import TrainingContext

REPO = Path(__file__).resolve().parent.parent


def mlp(num_classes=10, in_channels=1, image_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 300), nn.ReLU(),
                         nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes))


def cnn(num_classes=10, in_channels=1, image_size=28):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_classes))


BUILDERS = {"mlp": mlp, "cnn": cnn}


def build(cfg, args):
    """Stands in for ham_bench.models.build_model: the architecture from cfg.model.name and the data's shape."""
    return BUILDERS[cfg.model.name](args["num_classes"], args["in_channels"], args["image_size"])


def train(model, sparsifier, epochs=2, steps=3, seed=1):
    optimizer = sgd_for(model, sparsifier)
    model.train()
    train_in_hook_order(model, sparsifier, optimizer, random_batches(steps, 32, (1, 28, 28), 10, seed), epochs,
                        train_acc=lambda epoch: 10.0 + epoch)
    return model.eval()


def trained(model_name, sparsifier_cfg, epochs=2, steps=3):
    torch.manual_seed(0)
    model = BUILDERS[model_name]()
    sparsifier = build_sparsifier(sparsifier_cfg)
    sparsifier.attach(model, TrainingContext(epochs=epochs, steps_per_epoch=steps, seed=0))
    return train(model, sparsifier, epochs, steps), sparsifier


def bitwise_equal(a, b):
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def probe():
    return torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(7))


def test_random_90_export_is_smaller_and_reloads_bit_for_bit(tmp_path):
    model, sparsifier = trained("mlp", {"name": "random", "sparsity": 0.9, "distribution": "uniform",
                                        "dense_first": False})
    path = tmp_path / "model.npz"
    written = export_model(model, sparsifier, path, {"model": {"name": "mlp"}},
                           {"num_classes": 10, "in_channels": 1, "image_size": 28})
    dense = io.BytesIO()
    torch.save(model.state_dict(), dense)
    weights = 784 * 300 + 300 * 100 + 100 * 10  # 266,200
    assert written["weight_density"] == pytest.approx(0.1, abs=1e-4)
    # packed bits (N/8) + 10% of the values in fp32 (0.4 N) + biases: about 0.53 bytes a weight instead of 4
    assert written["bytes"] < 0.56 * weights + 4 * 410 + 4096
    assert written["bytes"] < 0.14 * len(dense.getvalue())
    state, header = read_export(path)
    effective = sparsifier.effective_weights().values()
    assert header["nonzero_weights"] == sum(int(torch.count_nonzero(w)) for w in effective)
    assert [e["encoding"] for e in header["tensors"]] == ["sparse", "dense"] * 3
    reloaded = load_export(path, model=mlp())
    with torch.no_grad():
        assert bitwise_equal(model(probe()), reloaded(probe()))
    rebuilt = load_export(path, build=build)  # from the stored config, no model handed in
    with torch.no_grad():
        assert bitwise_equal(model(probe()), rebuilt(probe()))


def test_dense_layers_stay_dense_and_the_file_is_not_bigger(tmp_path):
    model, sparsifier = trained("cnn", {"name": "dense"}, epochs=1, steps=1)
    written = export_model(model, sparsifier, tmp_path / "dense.npz")
    _, header = read_export(tmp_path / "dense.npz")
    assert {e["encoding"] for e in header["tensors"]} == {"dense"}
    dense = io.BytesIO()
    torch.save(model.state_dict(), dense)
    assert written["bytes"] <= len(dense.getvalue())


def test_bfloat16_weights_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    model = mlp(image_size=8)
    sparsifier = build_sparsifier({"name": "random", "sparsity": 0.9})
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=1))
    model.to(torch.bfloat16)
    export_model(model, sparsifier, tmp_path / "bf16.npz")
    state, header = read_export(tmp_path / "bf16.npz")
    assert {e["dtype"] for e in header["tensors"]} == {"bfloat16"}
    assert all(torch.equal(state[k], v) and state[k].dtype == torch.bfloat16 for k, v in model.state_dict().items())


def write_run(run_dir, model, sparsifier, cfg, extra=None):
    """A run dir as ham_bench.run leaves it: checkpoint.pt with the trainer's keys, .hydra/config.yaml, summary."""
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "checkpoint.pt", {"epoch": cfg["epochs"], "model": model.state_dict(),
                                                "sparsifier": sparsifier.state_dict(), "best_acc": 0.0,
                                                "config": cfg, **(extra or {})})
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")


RUN_METHODS = {
    "random": {"name": "random", "sparsity": 0.9},
    "rigl": {"name": "rigl", "sparsity": 0.9, "update_interval": 2},
    "acdc": {"name": "acdc", "sparsity": 0.9, "dense_warmup": 0.0, "compressed_length": 0.5,
             "decompressed_length": 0.0, "final_compressed_length": 0.5},
    "str": {"name": "str", "sparsity": 0.9, "s_init": -4.0, "projection_at": 0.5},
    "str_unprojected": {"name": "str", "sparsity": 0.9, "s_init": -4.0, "final_projection": False},
    "signin": {"name": "signin", "sparsity": 0.9},
    "pilot": {"name": "pilot", "sparsity": 0.9, "prune_at": 0.5},
}


@pytest.mark.parametrize("method", list(RUN_METHODS))
def test_export_run_rebuilds_the_plain_model_with_the_effective_weights(tmp_path, method):
    cfg_sparsifier = RUN_METHODS[method]
    model, sparsifier = trained("cnn", cfg_sparsifier)
    cfg = {"model": {"name": "cnn"}, "dataset": {"name": "fashion_mnist"}, "sparsifier": cfg_sparsifier,
           "epochs": 2, "seed": 0}
    run_dir = tmp_path / "run"
    write_run(run_dir, model, sparsifier, cfg)
    report = export_run(run_dir, build=build)
    assert report["logits_bitwise_equal"] is True
    assert report["model_args"] == {"num_classes": 10, "in_channels": 1, "image_size": 28}
    assert json.loads((run_dir / "export_report.json").read_text()) == report
    state, _ = read_export(run_dir / "model_sparse.npz")
    assert not any("parametrizations" in key for key in state)  # the plain architecture
    effective = sparsifier.effective_weights()
    assert all(torch.equal(state[key], w) for key, w in effective.items())
    plain = load_export(run_dir / "model_sparse.npz", build=build)
    with torch.no_grad():
        assert bitwise_equal(model(probe()), plain(probe()))
    density = sum(int(torch.count_nonzero(w)) for w in effective.values()) / sum(w.numel() for w in effective.values())
    assert report["weight_density"] == pytest.approx(density)
    if method != "str_unprojected":
        assert density < 0.2
        assert report["export_bytes"] < 0.3 * report["dense_model_bytes"]
    assert report["checkpoint_bytes"] > report["dense_model_bytes"]


def test_cli_and_test_accuracy_from_the_exported_file(tmp_path, monkeypatch, capsys):
    model, sparsifier = trained("mlp", {"name": "random", "sparsity": 0.9})
    generator = torch.Generator().manual_seed(3)
    test_set = torch.utils.data.TensorDataset(torch.randn(200, 1, 28, 28, generator=generator),
                                              torch.randint(0, 10, (200,), generator=generator))
    with torch.no_grad():
        accuracy = 100.0 * int((model(test_set.tensors[0]).argmax(1) == test_set.tensors[1]).sum()) / 200
    cfg = {"model": {"name": "mlp"}, "dataset": {"name": "custom"}, "sparsifier": {"name": "random", "sparsity": 0.9},
           "epochs": 2, "seed": 0, "eval_batch_size": 64, "num_workers": 0, "precision": "fp32"}
    run_dir = tmp_path / "run"
    write_run(run_dir, model, sparsifier, cfg,
              extra={"model_args": {"num_classes": 10, "in_channels": 1, "image_size": 28}})
    (run_dir / "summary.json").write_text(json.dumps({"final_test_acc": accuracy}))
    # the data module as ham_bench.run uses it
    fake_data = types.ModuleType("ham_bench.data")
    fake_data.build_datasets = lambda cfg: types.SimpleNamespace(eval=test_set)
    fake_data.build_loader = lambda dataset, batch_size, shuffle, num_workers, seed: torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle)
    fake_models = types.ModuleType("ham_bench.models")
    fake_models.build_model = lambda model_cfg, num_classes, in_channels, image_size: BUILDERS[model_cfg.name](
        num_classes, in_channels, image_size)
    monkeypatch.setitem(sys.modules, "ham_bench.data", fake_data)
    monkeypatch.setitem(sys.modules, "ham_bench.models", fake_models)
    assert main([str(run_dir), "--eval", "--out", str(tmp_path / "out.npz")]) == 0
    printed = capsys.readouterr().out
    assert "logits bit-identical: True" in printed and "test acc" in printed
    report = json.loads((run_dir / "export_report.json").read_text())
    assert report["test_acc_export"] == report["test_acc_run"] == accuracy and report["test_acc_equal"]
    assert (tmp_path / "out.npz").exists()
    assert main([str(tmp_path / "missing")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_with_the_real_model_builder(tmp_path):
    from ham_bench import models

    config = REPO / "configs" / "model" / "mlp.yaml"
    model_cfg = OmegaConf.load(config)
    torch.manual_seed(0)
    model = models.build_model(model_cfg, 10, 1, 28)
    sparsifier = build_sparsifier({"name": "random", "sparsity": 0.9})
    sparsifier.attach(model, TrainingContext(epochs=2, steps_per_epoch=3, seed=0))
    train(model, sparsifier)
    cfg = {"model": OmegaConf.to_container(model_cfg), "dataset": {"name": "fashion_mnist"},
           "sparsifier": {"name": "random", "sparsity": 0.9}, "epochs": 2, "seed": 0}
    write_run(tmp_path / "run", model, sparsifier, cfg)
    report = export_run(tmp_path / "run")
    assert report["logits_bitwise_equal"] is True
    assert report["export_bytes"] < 0.3 * report["dense_model_bytes"]
    plain = load_export(tmp_path / "run" / "model_sparse.npz")
    with torch.no_grad():
        assert bitwise_equal(model(probe()), plain(probe()))
