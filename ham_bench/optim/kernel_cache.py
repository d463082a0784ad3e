"""Compiling and calling the fused kernels (``ham_kernels``): one torch.compile per variant and process.

Kernels take plain 1-D tensors aliasing each tensor's memory (``flat``) and one
float32 ``hyper`` tensor of scalars, so neither tensor shapes nor LR schedules
recompile them. Every variant a step needs is compiled on dummies (``warm``)
before any real tensor is touched, so a failed compile can still fall back
cleanly. CPU tensors under ``PARALLEL_MIN_NUMEL`` elements use a
single-threaded variant: an OpenMP region per small tensor costs more than it
saves, badly so on busy machines.

Kernels with a reduction write the new weight through ``output_alias(p)``, a
tensor over the weight's memory with a storage object of its own (made through
DLPack, so the compiler does not see the aliasing; see ``ham_kernels``). Before
first use, ``warm`` runs each such kernel once on data where every weight
flips sign and compares it with the eager update: a kernel that read a weight
after writing it would count no flips there. One that fails the check is
replaced by its variant without the alias (correct, one loop more).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from . import compile_time
from .ham_kernels import HYPER, KernelSpec, kernel_function, state_arity

__all__ = ["PARALLEL_MIN_NUMEL", "call", "compiled_kernel", "flat", "hyper_tensor", "kernel_ready", "output_alias",
           "scalar", "serial", "spec_for", "warm"]

PARALLEL_MIN_NUMEL = 32768  # torch's own grain size
_COMPILED: dict[KernelSpec, Any] = {}
_WARMED: dict[tuple[KernelSpec, str], KernelSpec] = {}  # (spec, device) -> the spec to call
_ALIASES = WeakIdKeyDictionary()  # tensor -> (its memory, the output alias)


def compiled_kernel(spec: KernelSpec):
    """The torch.compile'd kernel of ``spec``, compiled lazily once per process with dynamic shapes.

    Each variant gets a code object of its own: dynamo caches compiled graphs
    (and counts recompiles against its limit) per code object.
    """
    fn = _COMPILED.get(spec)
    if fn is None:
        eager = kernel_function(spec)
        code = eager.__code__.replace(co_name=spec.label, co_qualname=spec.label)
        eager = types.FunctionType(code, eager.__globals__, spec.label, eager.__defaults__, eager.__closure__)
        options = {"cpp.threads": 1} if spec.serial else None
        fn = _COMPILED[spec] = torch.compile(eager, dynamic=True, fullgraph=True, options=options)
    return fn


@functools.lru_cache(maxsize=None)  # called per tensor and step: make each variant's spec once
def spec_for(kind: str, **flags) -> KernelSpec:
    """The kernel variant to plan with: kernels with a reduction write through an output alias."""
    spec = KernelSpec(kind, **flags)
    return dataclasses.replace(spec, out_alias=True) if spec.reduces else spec


def warm(spec: KernelSpec, device: torch.device) -> KernelSpec:
    """Compile ``spec`` on dummies (and check its output alias); returns the spec to call for ``spec``.

    Serial kernels with a reduction specialise on size <= 4096, so they are compiled (and checked) at two sizes.
    """
    key = (spec, str(device))
    usable = _WARMED.get(key)
    if usable is not None:
        return usable
    started = time.perf_counter()
    usable = spec
    for numel in ((64, 8192) if spec.serial and spec.reduces else (64,) if spec.serial else (4 * PARALLEL_MIN_NUMEL,)):
        if usable.out_alias and not _alias_is_safe(usable, device, numel):
            usable = dataclasses.replace(spec, out_alias=False)
        if not usable.out_alias:
            compiled_kernel(usable)(*_dummies(usable, device, numel))
    _WARMED[key] = usable
    compile_time.add(time.perf_counter() - started)  # reported apart from the epoch's throughput
    return usable


def _dummies(spec: KernelSpec, device: torch.device, numel: int, values: dict | None = None) -> list[Tensor]:
    """Arguments for ``spec``: zeros, or ``values`` by name (param, grad, state, hyper)."""
    values = values or {}
    zeros = lambda dtype=torch.float32: torch.zeros(numel, dtype=dtype, device=device)  # noqa: E731
    args = [values.get("param", zeros()).clone(), values.get("grad", zeros())]
    args += [values.get("signs", zeros(torch.int8)) if spec.kind == "ham_signed" else zeros()
             for _ in range(state_arity(spec.kind))]
    if spec.mask:
        args.append(torch.ones(numel, dtype=torch.uint8, device=device))
    if spec.flips:
        args.append(torch.zeros(1, dtype=torch.int64, device=device))
    if spec.out_alias:
        args.append(output_alias(args[0]))
    args.append(values.get("hyper", torch.zeros(len(HYPER[spec.kind]), device=device)))
    if spec.diagnostics:
        args.append(torch.zeros(3, dtype=torch.float64, device=device))
    return args


# hyper values under which every weight (+1, -1, +1, ...) flips sign, with exact arithmetic up to the factor
_FLIPPING = {"sgd": [0.5, 0.0, 1.0, 0.25, 0.125, 5.0, 0.0],
             "sgd_momentum": [0.5, 0.0, 1.0, 0.25, 0.125, 5.0, 0.0, 0.5, 1.0, 0.0, 1.0],
             "adam": [0.5, 0.0, 1.0, 0.25, 0.125, 5.0, 0.0, 1.0, 0.5, 0.5, 0.5, 4.0, 1.0, 0.0],
             "ham": [0.5, 1.0, 0.25, 0.125, 5.0], "ham_signed": [0.5, 1.0, 0.25, 0.125, 5.0]}


def _alias_is_safe(spec: KernelSpec, device: torch.device, numel: int) -> bool:
    """Run the compiled kernel with its output alias and the eager update on copies: same flips, same values."""
    weights = (torch.arange(numel, device=device) % 2 * -2 + 1).to(torch.float32)
    values = {"param": weights, "grad": 4 * weights, "signs": weights.to(torch.int8),
              "hyper": torch.tensor(_FLIPPING[spec.kind], device=device)}
    out = 2 + state_arity(spec.kind) + int(spec.mask) + int(spec.flips)  # where the output alias goes
    compiled = _dummies(spec, device, numel, values)
    compiled_kernel(spec)(*compiled)
    compiled[out] = compiled[0]  # the new weights, written through the alias
    eager = _dummies(spec, device, numel, values)
    eager[out] = torch.empty_like(eager[0])  # the eager reference writes a tensor of its own
    kernel_function(spec)(*eager)
    return all(torch.allclose(c.double(), e.double(), rtol=1e-5, atol=1e-6)
               for index, (c, e) in enumerate(zip(compiled, eager)) if index != 0)


def output_alias(t: Tensor) -> Tensor:
    """A flat tensor over ``t``'s memory whose storage object is not ``t``'s (cached per tensor and memory)."""
    where = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
    cached = _ALIASES.get(t)
    if cached is None or cached[0] != where:
        alias = torch.utils.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(flat(t)))
        cached = _ALIASES[t] = (where, alias)
    return cached[1]


def call(spec: KernelSpec, p: Tensor, args: list[Tensor]) -> None:
    """Run ``spec`` on flat ``args`` aliasing ``p`` (and its grad and state)."""
    compiled_kernel(spec)(*args)
    # the kernel wrote through an alias: tell autograd that p changed in place
    torch.autograd.graph.increment_version(p)


def serial(p: Tensor) -> bool:
    return p.device.type == "cpu" and p.numel() < PARALLEL_MIN_NUMEL


def scalar(value: Any) -> float | None:
    """A Python float for a number or a CPU scalar tensor; None for a device tensor."""
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or value.numel() != 1:
            return None
        return float(value.item())
    return float(value)


def flat(t: Tensor) -> Tensor:
    """A plain 1-D tensor over a dense tensor's memory (contiguous or channels-last).

    Not a view: dynamo guards on a view's base, which would recompile the kernels
    for every distinct parameter shape.
    """
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _dense(t: Tensor) -> bool:
    return (t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
            or (t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)))


def kernel_ready(p: Tensor, *others: Tensor | None) -> bool:
    """Whether the kernels can take p (and its grad/state/mask) as flat aliases of one layout."""
    if p.dtype != torch.float32 or p.device.type not in ("cpu", "cuda") or p.numel() < 2 or not _dense(p):
        return False
    for t in others:
        if t is None:
            continue
        if (t.layout != torch.strided or (t.dtype != p.dtype and t.dtype not in (torch.uint8, torch.int8))
                or t.device != p.device or t.shape != p.shape or t.stride() != p.stride()):
            return False
    return True


def hyper_tensor(values: list[float], device: torch.device) -> Tensor:
    hyper = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":
        hyper = hyper.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        hyper = hyper.to(device)
    return hyper
