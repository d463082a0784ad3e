"""The catalogue of bad command lines: every config group, each refused with one line, exit status 2, nothing left.

Each case runs in a working dir holding unrelated files (``notes.txt``, ``old/result.txt``); some
point the run dir at that very dir (``hydra.run.dir=.``). After the case the dir must hold exactly
what it held before: no run dir, no ``outputs/`` or ``multirun/``, and nothing of the user's removed.
The stderr must be one line, ``error: ...``, naming the key (the expected fragment).

Most cases fail before any data is read, so they run through ``ham_bench.cli.main`` one after the
other in one process (``cli_runs.run_in_one_process``: the real CLI path, one interpreter start); a
subset, including the ones that fail only after loading data, runs as separate processes.
"""

from __future__ import annotations

import pytest
import torch

from cli_runs import ham_bench, run_in_one_process, snapshot

HERE = "hydra.run.dir=."
CASES = [
    # run keys
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("seed=-1", "seed must be an integer >= 0, got -1"),
    ("seed=1e30", "seed must be an integer in [0, 4294967295], got 1e+30"),
    ("epochs=0", "epochs must be an integer >= 1, got 0"),
    ("epochs=2.5", "epochs must be an integer, got 2.5"),
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
    ("eval_batch_size=-5", "eval_batch_size must be an integer >= 1, got -5"),
    ("label_smoothing=1.5", "label_smoothing must be in [0, 1), got 1.5"),
    ("num_workers=-1", "num_workers must be an integer >= 0, got -1"),
    ("device=tpu", "device must be auto, cpu or cuda[:N], got 'tpu'"),
    ("device=cuda:abc", "device must be auto, cpu or cuda[:N], got 'cuda:abc'"),
    ("device=cuda:99", "device=cuda:99 but"),
    ("precision=fp16", "precision must be one of [fp32, bf16], got 'fp16'"),
    ("channels_last=maybe", "channels_last must be true or false, got 'maybe'"),
    ("progress=3", "progress must be true or false, got 3"),
    ("log_every=0", "log_every must be an integer >= 1, got 0"),
    ("ham_warn_clamp_fraction=2", "ham_warn_clamp_fraction must be in [0, 1], got 2"),
    ("divergence_factor=0.5", "divergence_factor must be > 1, got 0.5"),
    ("stop_after_epochs=0", "stop_after_epochs must be an integer in [1, 5], got 0"),
    ("stop_after_epochs=9", "stop_after_epochs must be an integer in [1, 5], got 9"),
    ("checkpoint_every_steps=0", "checkpoint_every_steps must be an integer >= 1, got 0"),
    ("checkpoint_every_minutes=-1", "checkpoint_every_minutes must be > 0, got -1"),
    ("dump_masks_at=[99]", "dump_masks_at must be an integer in [1, 5], got 99"),
    ("dump_masks_at=7", "dump_masks_at must be a list of epochs, got 7"),
    ("force=yes", "force must be true or false, got 'yes'"),
    ("+epoch=3", "epoch is not a setting of ham-bench (did you mean epochs?)"),
    ("resume=/nonexistent/run", "resume=/nonexistent/run: no checkpoint.pt in that dir"),
    ("resume=latest", "resume=latest: no run under outputs/ or multirun/"),
    (f"{HERE} optimizer.lr=-1", "optimizer.lr must be > 0, got -1"),
    (f"{HERE} epochs=${{oops}}", "the config does not resolve: Interpolation key 'oops' not found (key epochs)"),
    ("hydra.run.dir=notes.txt", "notes.txt is a file; point hydra.run.dir at a folder"),
    # dataset
    ("dataset=nope", "Could not find 'dataset/nope' (Available options in 'dataset': cifar100"),
    ("dataset.subset=0", "dataset.subset must be an integer >= 1, got 0"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction must be in [0, 1), got 1.5"),
    ("dataset.eval_split=train", "dataset.eval_split must be one of [test, val], got 'train'"),
    ("dataset.augment=maybe", "dataset.augment must be true or false, got 'maybe'"),
    ("dataset.download=maybe", "dataset.download must be true or false, got 'maybe'"),
    ("dataset.foo=1", "Could not override 'dataset.foo'"),
    ("+dataset.foo=1", "dataset.foo is not a setting of dataset=fashion_mnist"),
    ("dataset=fake dataset.num_classes=1", "dataset.num_classes must be an integer >= 2, got 1"),
    (f"{HERE} dataset.root=5", "dataset.root must be a path or null, got 5"),
    # model
    ("model=nope", "Could not find 'model/nope'"),
    ("model.channels=[]", "model.channels must be a non-empty list of integers >= 1, got []"),
    ("model=mlp model.hidden=abc", "model.hidden must be a non-empty list of integers >= 1, got 'abc'"),
    ("model.batch_norm=2", "model.batch_norm must be true or false, got 2"),
    ("+model.foo=1", "model.foo is not a setting of model=cnn"),
    ("model=timm model.kwargs=5", "model.kwargs must be a mapping of create_model arguments, got 5"),
    # optimizer
    ("optimizer.lr=abc", "optimizer.lr must be a number, got 'abc'"),
    ("optimizer.momentum=2", "optimizer.momentum must be in [0, 1), got 2"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay must be >= 0, got -1"),
    ("optimizer.nesterov=maybe", "optimizer.nesterov must be true or false, got 'maybe'"),
    ("optimizer=adamw optimizer.betas=[0.9]", "optimizer.betas must be a pair [beta1, beta2], got [0.9]"),
    ("optimizer=adamw optimizer.eps=0", "optimizer.eps must be > 0, got 0"),
    ("optimizer=sam optimizer.rho=-1", "optimizer.rho must be > 0, got -1"),
    ("optimizer=sam optimizer.adaptive=maybe", "optimizer.adaptive must be true or false, got 'maybe'"),
    ("+optimizer.foo=1", "optimizer has unknown key(s) foo for name=sgd"),
    # ham
    ("ham=nope", "Could not find 'ham/nope'"),
    ("ham.alpha=-1", "ham.alpha must be >= 0, got -1"),
    ("ham.enabled=maybe", "ham.enabled must be true or false, got 'maybe'"),
    ("ham.clamp=0", "ham.clamp must be > 0, got 0"),
    ("ham.variant=hyper", "ham.variant must be one of [hyp_star, hyp], got 'hyper'"),
    ("ham.implementation=gpu", "ham.implementation must be one of [auto, compiled, foreach], got 'gpu'"),
    ("+ham.foo=1", "ham has unknown key(s) foo"),
    # sparsifier
    ("sparsifier=nope", "Could not find 'sparsifier/nope'"),
    (f"{HERE} sparsifier.sparsity=1.0", "sparsifier.sparsity must be in [0, 1), got 1.0"),
    ("sparsifier=random sparsifier.distribution=normal", "sparsifier.distribution must be one of [uniform, erk]"),
    ("+sparsifier.sparsty=0.9", "sparsifier.sparsty is not a setting of sparsifier 'dense'"),
    ("sparsifier=rigl sparsifier.update_interval=0", "sparsifier.update_interval must be an integer >= 1, got 0"),
    ("sparsifier=acdc sparsifier.dense_warmup=-1", "sparsifier.dense_warmup must be in [0, 1], got -1"),
    ("sparsifier=str sparsifier.projection_at=2", "sparsifier.projection_at must be in (0, 1], got 2"),
    ("sparsifier=pilot sparsifier.delta=0.5", "sparsifier.delta must be > 1, got 0.5"),
    ("sparsifier=signin sparsifier.rebalance_period=0", "sparsifier.rebalance_period must be an integer >= 1"),
    ("+sparsifier._target_=nowhere.Nothing", "sparsifier._target_ 'nowhere.Nothing' cannot be imported"),
    # schedule
    ("schedule.warmup_epochs=10", "schedule.warmup_epochs must be in [0, epochs=5), got 10"),
    ("schedule=multistep schedule.gamma=-1", "schedule.gamma must be in (0, 1], got -1"),
    ("schedule=multistep schedule.milestones=abc", "schedule.milestones must be a list of epochs, got 'abc'"),
    ("schedule.min_lr_factor=2", "schedule.min_lr_factor must be in [0, 1], got 2"),
    ("+schedule.foo=1", "schedule.foo is not a setting of schedule=cosine"),
    # logger
    ("logger=nope", "Could not find 'logger/nope'"),
    ("logger=wandb logger.wandb.mode=cloud", "logger.wandb.mode must be one of [online, offline, disabled]"),
    ("+logger.wandb.foo=1", "logger.wandb.foo is not a setting"),
    ("logger=wandb logger.wandb.tags=abc", "logger.wandb.tags must be a list of strings, got 'abc'"),
    ("logger=wandb logger.wandb.project=5", "logger.wandb.project must be a name (a string), got 5"),
    # the command line itself, and sweeps (checked before any job starts)
    ("epochs=[1,2", "no viable alternative at input '[1,2'"),
    ("optimizer=sgd,adamw", "Ambiguous value for argument 'optimizer=sgd,adamw'"),
    ("experiment=nope", "Could not find 'experiment/nope'"),
    ("-m sparsifier=random sparsifier.sparsity=0.5,1.5,0.8",
     "sweep job #1 (sparsifier=random sparsifier.sparsity=1.5): sparsifier.sparsity must be in [0, 1), got 1.5"),
    ("-m seed=0,abc", "sweep job #1 (seed=abc): seed must be an integer, got 'abc'"),
    ("-m optimizer=sgd,nope", "sweep job #1 (optimizer=nope): In 'train': Could not find 'optimizer/nope'"),
    ("-m hydra.sweep.dir=. seed=0,1 ham.alpha=-1", "sweep job #0 (seed=0 ham.alpha=-1): ham.alpha must be >= 0"),
]
if not torch.cuda.is_available():
    CASES.append(("device=cuda", "device=cuda but no CUDA GPU is visible here"))
# through separate processes: the same entry point as the console script, and the cases that read data first
PROCESS_CASES = [
    (f"{HERE} optimizer.lr=-1", "optimizer.lr must be > 0, got -1"),
    ("dataset=nope", "Could not find 'dataset/nope'"),
    ("+sparsifier.sparsty=0.9", "sparsifier.sparsty is not a setting"),
    (f"{HERE} batch_size=100000 dataset.subset=600", "batch_size=100000 exceeds the training set (600 samples)"),
    ("dataset=cifar100 model=resnet18_cifar dataset.root=nowhere", "nowhere"),
    ("-m sparsifier=random sparsifier.sparsity=0.5,1.5,0.8", "sweep job #1"),
    ("export .", ".: no checkpoint.pt in that run dir"),
]


def user_folder(path):
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "old").mkdir()
    (path / "old" / "result.txt").write_text("an earlier result\n")
    return path


def check(code: int, stderr: str, expected: str, before: dict, after: dict) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert code == 2, (code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert after == before  # nothing left behind, nothing of the user's lost


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    cases = [{"args": args.split(), "cwd": str(user_folder(root / f"case{i}"))} for i, (args, _) in enumerate(CASES)]
    before = snapshot(root / "case0")
    return before, [(result, snapshot(case["cwd"])) for case, result in zip(cases, run_in_one_process(cases))]


def test_the_catalogue_covers_every_config_group():
    text = " ".join(args for args, _ in CASES)
    assert len(CASES) >= 50
    for group in ("dataset", "model", "optimizer", "ham", "sparsifier", "schedule", "logger", "-m", "resume="):
        assert group in text, group


@pytest.mark.parametrize("index", range(len(CASES)), ids=[args for args, _ in CASES])
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(catalogue, index):
    before, results = catalogue
    result, after = results[index]
    check(result["code"], result["stderr"], CASES[index][1], before, after)


@pytest.mark.parametrize("args, expected", PROCESS_CASES, ids=[args for args, _ in PROCESS_CASES])
def test_bad_input_through_a_real_process(tmp_path, args, expected):
    folder = user_folder(tmp_path / "work")
    before = snapshot(folder)
    result = ham_bench(*args.split(), cwd=folder)
    check(result.returncode, result.stderr, expected, before, snapshot(folder))
