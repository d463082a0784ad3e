"""Metrics as meters (``meter.Meter``): sparsity, sign flips, topology, FLOPs, HAM diagnostics, mask dumps.

``build_meters`` makes the standard set for a run; each meter's module says
what it reports and how it is defined.
"""

from __future__ import annotations

from pathlib import Path

from ham_bench.metrics.flops import FlopsMeter, ham_covered_numel
from ham_bench.metrics.ham import HamMeter
from ham_bench.metrics.masks import MaskDumpMeter
from ham_bench.metrics.meter import Meter
from ham_bench.metrics.sign_flips import SignFlipCounter, SignFlipMeter
from ham_bench.metrics.sparsity import SparsityMeter
from ham_bench.metrics.topology import TopologyMeter

__all__ = ["FlopsMeter", "HamMeter", "MaskDumpMeter", "Meter", "SignFlipCounter", "SignFlipMeter", "SparsityMeter",
           "TopologyMeter", "build_meters"]


def build_meters(model, sparsifier, optimizer, *, input_shape, batch_size: int, steps_per_epoch: int,
                 log_every: int = 20, warn_clamp_fraction: float = 0.01, run_dir: Path | None = None,
                 dump_masks_at=(), is_main_process: bool = True) -> list[Meter]:
    """The meters of a training run. ``batch_size``: samples per step over all ranks (FLOPs)."""
    flips = SignFlipMeter(sparsifier)
    meters: list[Meter] = [SparsityMeter(sparsifier), flips, TopologyMeter(sparsifier, flips.counter),
                           FlopsMeter(model, sparsifier, input_shape, batch_size, ham_covered_numel(optimizer))]
    if callable(getattr(optimizer, "diagnostics", None)):  # HAM reports its exponent statistics itself
        meters.append(HamMeter(optimizer, steps_per_epoch, log_every, warn_clamp_fraction, warn=is_main_process))
    if dump_masks_at and is_main_process and run_dir is not None:
        meters.append(MaskDumpMeter(sparsifier, run_dir, dump_masks_at))
    return meters
