"""Device checks of the fused kernels and the step bookkeeping (run by scripts/gpu_check.sh on a CUDA GPU).

    python scripts/gpu_check.py --device cuda [--out results/bench_gpu.md]
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/bench_gpu.md     # the same code paths, tiny sizes

Three sections, written to ``--out`` as they finish:

1. exactness: HAM's compiled kernels (CUDA: Triton) against its foreach path,
   HYP* and HYP, on SGD-momentum, SGD Nesterov with ``foreach=True`` (torch then
   adds into p.grad in place), AdamW and SAM bases, 3 steps from identical
   tensors (one of them channels-last); and the engine's bookkeeping in the
   kernels (masks, sign flips) against its fallback with the same kernels: the
   same weights bit for bit and the same flip counts, random 0.9 and RigL; HAM
   off: the fused base step (counting flips) against torch's own step, bit for
   bit or the largest difference;
2. host syncs per training step: ``train_step`` plus every meter's ``on_step``
   (the ``log_every`` reads excluded), counted with
   ``torch.cuda.set_sync_debug_mode("warn")`` on CUDA, with patched tensor ->
   Python conversions on CPU;
3. throughput: ResNet-50, bf16 autocast, channels-last, synthetic batches (256
   x 3 x 224 x 224; ``--tiny``: 2 x 3 x 32 x 32): a bare loop with torch's SGD,
   then ``train_step`` with the engine's meters for HAM off (fused base step
   with flip counting), HAM, and HAM with a random 0.9 mask, each eager and
   with the model under ``torch.compile`` (one compiled model shared by the
   variants: the optimizer is not part of it). Samples per second, median over
   the timed steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ham_bench.engine.bookkeeper import Bookkeeper  # noqa: E402
from ham_bench.engine.step import train_step  # noqa: E402
from ham_bench.metrics import build_meters  # noqa: E402
from ham_bench.models import build_model  # noqa: E402
from ham_bench.optim import HAM, SAM, FusedOptimizer  # noqa: E402
from ham_bench.optim.bookkeeping import StepBookkeeping  # noqa: E402
from sparsifiers import TrainingContext, build_sparsifier  # noqa: E402

HAM_KW = {"alpha": 20.0, "beta": 1e-3, "diagnostics": True}


# ---- 1. exactness -----------------------------------------------------------------------------------
def _tensors(device, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (32, 16, 3, 3), (7, 5), (129,), (1000, 257)]
    params = []
    for index, shape in enumerate(shapes):
        p = torch.nn.Parameter((0.05 * torch.randn(shape, generator=generator)).to(device))
        if index == 1:
            p = torch.nn.Parameter(p.detach().contiguous(memory_format=torch.channels_last))
        params.append(p)
    return params


def _base(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    if kind == "sgd_nesterov_foreach":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, foreach=True)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    return SAM(params, torch.optim.SGD, lr=0.05, momentum=0.9, rho=0.05)


def _ham_run(kind, variant, implementation, device, steps=3):
    """3 steps of HAM (``variant``), or with ``variant=None`` of the base alone: ``FusedOptimizer`` (HAM off, the
    engine's fused base step, here with every param's flips counted) or, for ``implementation="torch"``, the
    torch optimizer itself."""
    params = _tensors(device, 0)
    if variant is None:
        opt = _base(kind, params) if implementation == "torch" else FusedOptimizer(_base(kind, params), implementation)
    else:
        opt = HAM(_base(kind, params), variant=variant, implementation=implementation, **HAM_KW)
    generator = torch.Generator().manual_seed(1)
    grads = [[(1e-2 * torch.randn(p.shape, generator=generator)).to(device) for p in params] for _ in range(steps)]
    for step in range(steps):
        def closure(step=step):
            for p, g in zip(params, grads[step]):
                p.grad = g.clone().contiguous(memory_format=torch.channels_last) if p.dim() == 4 else g.clone()
            return torch.zeros(())

        closure()
        if variant is None and implementation != "torch":
            opt.set_bookkeeping(StepBookkeeping(flips={p: torch.zeros(1, dtype=torch.int64, device=device)
                                                       for p in params}))
        opt.step(closure) if kind == "sam" else opt.step()
    return [p.detach().float().cpu() for p in params], opt.diagnostics() if variant is not None else {}


def _engine_run(method, fallback, device, steps=6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32 * 4 * 4, 10)).to(device).to(memory_format=torch.channels_last)
    sparsifier = build_sparsifier({"name": method, "sparsity": 0.9, **({"update_interval": 2} if method == "rigl"
                                                                      else {})})
    sparsifier.attach(model, TrainingContext(epochs=1, steps_per_epoch=steps, seed=0, device=device))
    optimizer = HAM(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), **HAM_KW)
    if fallback:
        optimizer.bookkeeping_params = lambda: frozenset()
    sparsifier.bind_optimizer(optimizer)
    bookkeeper = Bookkeeper(sparsifier, optimizer)
    generator = torch.Generator().manual_seed(2)
    flips = []
    for step in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (16,), generator=generator).to(device)
        flips.append(train_step(model, optimizer, sparsifier, x, y, step, bookkeeper=bookkeeper).sign_flips.tolist())
    return [p.detach().cpu() for p in model.parameters()], flips


def check_exactness(device) -> list[str]:
    lines = ["| check | result |", "|---|---|"]
    failures = 0
    for kind in ("sgd", "sgd_nesterov_foreach", "adamw", "sam"):
        for variant in ("hyp_star", "hyp"):
            compiled, diag_c = _ham_run(kind, variant, "compiled", device)
            foreach, diag_f = _ham_run(kind, variant, "foreach", device)
            worst = max(((c - f).abs() / f.abs().clamp_min(1e-3)).max().item() for c, f in zip(compiled, foreach))
            ok = all(torch.allclose(c, f, rtol=1e-5, atol=1e-6) for c, f in zip(compiled, foreach))
            ok = ok and abs(diag_c["ham_mean_abs_exponent"] - diag_f["ham_mean_abs_exponent"]) <= \
                1e-5 * abs(diag_f["ham_mean_abs_exponent"]) + 1e-9
            failures += not ok
            lines.append(f"| HAM {variant} on {kind}: compiled vs foreach, 3 steps | "
                         f"{'ok' if ok else 'FAILED'} (max relative difference {worst:.1e}) |")
    for kind in ("sgd", "sgd_nesterov_foreach", "adamw", "sam"):
        fused, _ = _ham_run(kind, None, "compiled", device)
        plain, _ = _ham_run(kind, None, "torch", device)
        same = all(torch.equal(c, f) for c, f in zip(fused, plain))
        worst = max(((c - f).abs() / f.abs().clamp_min(1e-3)).max().item() for c, f in zip(fused, plain))
        ok = all(torch.allclose(c, f, rtol=1e-5, atol=1e-6) for c, f in zip(fused, plain))
        failures += not ok
        lines.append(f"| HAM off on {kind}: fused base step (flips counted) vs torch's step, 3 steps | "
                     f"{'ok' if ok else 'FAILED'} ({'bit for bit' if same else f'max relative difference {worst:.1e}'})"
                     f" |")
    for method in ("random", "rigl"):
        kernel_weights, kernel_flips = _engine_run(method, False, device)
        fallback_weights, fallback_flips = _engine_run(method, True, device)
        same = all(torch.equal(a, b) for a, b in zip(kernel_weights, fallback_weights))
        ok = same and kernel_flips == fallback_flips
        failures += not ok
        lines.append(f"| {method} 0.9 + HAM, 6 engine steps: bookkeeping in the kernels vs the fallback | "
                     f"{'ok' if ok else 'FAILED'} (weights {'bit for bit' if same else 'DIFFER'}, flips "
                     f"{sum(map(sum, kernel_flips))} vs {sum(map(sum, fallback_flips))}) |")
    lines.append("")
    lines.append(f"{failures} check(s) failed.")
    return lines


# ---- 2. host syncs ------------------------------------------------------------------------------------
@contextlib.contextmanager
def count_syncs(device, counter: list):
    """Count host syncs: CUDA's sync debug mode on a GPU; tensor -> Python conversions on CPU."""
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counter.append(sum("synchroniz" in str(w.message) for w in caught))
        return
    names = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    calls = [0]

    def counting(name):
        def wrapper(self, *args, **kwargs):
            calls[0] += 1  # on CPU every tensor is a host tensor: count what would sync on a device
            return originals[name](self, *args, **kwargs)
        return wrapper

    for name in names:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        counter.append(calls[0])


def check_syncs(device, tiny: bool) -> list[str]:
    lines = ["| variant | host syncs in 4 steps (train_step + meters' on_step) |", "|---|---:|"]
    size, batch = (32, 2) if tiny else (224, 32)
    for name, method, ham, base in (("SGD, HAM off, dense", "dense", False, "sgd"),
                                    ("SGD + HAM, random 0.9", "random", True, "sgd"),
                                    ("SGD + HAM, RigL 0.9 (dT = 2)", "rigl", True, "sgd"),
                                    ("AdamW + HAM, random 0.9", "random", True, "adamw")):
        setup = _throughput_setup(device, size, batch, method, ham, steps_per_epoch=1000, base=base)
        model, optimizer, sparsifier, bookkeeper, meters, x, y = setup
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        train_step(model, optimizer, sparsifier, x, y, 0, autocast=autocast, bookkeeper=bookkeeper)  # compiles
        counter = []
        with count_syncs(device, counter):
            for step in range(1, 5):
                record = train_step(model, optimizer, sparsifier, x, y, step, autocast=autocast, bookkeeper=bookkeeper)
                for meter in meters:
                    meter.on_step(record)
        lines.append(f"| {name} | {counter[0]} |")
    if device.type == "cpu":
        lines += ["", "On CPU every conversion of a tensor to a Python value is counted, also of tensors that stay "
                  "on the host on a GPU too: torch's own AdamW, which steps the parameters no kernel takes (biases, "
                  "norms), reads each one's step counter, a CPU tensor, every step (the fused kernels keep the count "
                  "as a number)."]
    return lines


# ---- 3. throughput -------------------------------------------------------------------------------------
def _throughput_setup(device, size, batch, method, ham, steps_per_epoch=100, model=None, base="sgd"):
    torch.manual_seed(0)
    model = model if model is not None else build_model({"name": "resnet50"}, 1000, 3, size).to(device).to(
        memory_format=torch.channels_last)
    plain = getattr(model, "_orig_mod", model)
    config = {"name": method} if method == "dense" else {"name": method, "sparsity": 0.9}
    if method == "rigl":
        config["update_interval"] = 2
    sparsifier = build_sparsifier(config)
    sparsifier.attach(plain, TrainingContext(epochs=1, steps_per_epoch=steps_per_epoch, seed=0, device=device))
    base = (torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if base == "sgd"
            else torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.05))
    optimizer = HAM(base, **HAM_KW) if ham else FusedOptimizer(base)
    sparsifier.bind_optimizer(optimizer)
    meters = build_meters(plain, sparsifier, optimizer, input_shape=(3, size, size), batch_size=batch,
                          steps_per_epoch=steps_per_epoch, log_every=10 ** 6)
    meters = [m for m in meters if m.name != "ham"]  # it reads HAM's diagnostics every log_every steps, by design
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    return model, optimizer, sparsifier, Bookkeeper(sparsifier, optimizer), meters, x, y


def _timed(step, device, warmup, steps):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def check_throughput(device, tiny: bool, compile_model: bool) -> list[str]:
    size, batch, warmup, steps = (32, 2, 1, 2) if tiny else (224, 256, 5, 20)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    lines = ["| variant | model | samples/s | samples/s / bare loop's |", "|---|---|---:|---:|"]
    torch.manual_seed(0)
    eager = build_model({"name": "resnet50"}, 1000, 3, size).to(device).to(memory_format=torch.channels_last)
    models = [("eager", eager)] + ([("torch.compile", torch.compile(eager))] if compile_model else [])
    for label, model in models:
        bare_opt = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=generator).to(device).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), generator=generator).to(device)

        def bare():
            bare_opt.zero_grad(set_to_none=True)
            with autocast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            bare_opt.step()

        bare_seconds = _timed(bare, device, warmup, steps)
        lines.append(f"| bare loop, torch SGD | {label} | {batch / bare_seconds:.4g} | 1.000 |")
        for name, method, ham in (("HAM off (fused base step, flips)", "dense", False),
                                  ("HAM (flips, diagnostics)", "dense", True),
                                  ("HAM + random 0.9 mask (flips, masks)", "random", True)):
            model_, optimizer, sparsifier, bookkeeper, meters, x, y = _throughput_setup(
                device, size, batch, method, ham, model=model)
            counter = [0]

            def framework():
                record = train_step(model_, optimizer, sparsifier, x, y, counter[0], autocast=autocast,
                                    bookkeeper=bookkeeper)
                for meter in meters:
                    meter.on_step(record)
                counter[0] += 1

            seconds = _timed(framework, device, warmup, steps)
            lines.append(f"| {name} | {label} | {batch / seconds:.4g} | {bare_seconds / seconds:.3f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (checks the code paths, e.g. on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd model in section 3")
    parser.add_argument("--sections", nargs="+", default=["exactness", "syncs", "throughput"])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_gpu.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    text = [f"# Device checks ({name})", "",
            f"Produced by `scripts/gpu_check.sh` (`python scripts/gpu_check.py --device {args.device}"
            f"{' --tiny' if args.tiny else ''}`), torch {torch.__version__}. See the script's docstring for "
            "what each section does.", ""]
    sections = {"exactness": lambda: check_exactness(device), "syncs": lambda: check_syncs(device, args.tiny),
                "throughput": lambda: check_throughput(device, args.tiny, not args.no_compile)}
    for section in args.sections:
        started = time.perf_counter()
        text += [f"## {section}", "", *sections[section](), "", f"({time.perf_counter() - started:.0f} s)", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(text) + "\n")
        print("\n".join(text[-8:]), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
