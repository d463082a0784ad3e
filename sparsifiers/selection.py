"""Which layers a method masks and at what sparsity: the settings every method shares, in one dataclass.

Prunable layers are the ``weight`` of every Conv*d and Linear module, in
``model.named_modules()`` order; biases and norm parameters are never masked
nor counted. ``dense_first`` / ``dense_last`` keep the first conv / last
linear dense: such layers stay in the reports (density 1.0) but are never
masked. ``dense_first=None`` means "the convention of the distribution":
dense for ``uniform`` (the usual convention for uniform sparsity), masked
for ``erk`` and ``global`` (RigL's ERK masks every layer; AC/DC's global
magnitude pruning ranks every layer).

``sparsity`` is the target fraction of zeros over the masked layers, i.e.
the selected layers minus the kept-dense first/last ones (RigL's
``custom_sparsity_map`` convention). Layers that ERK itself makes dense
stay in that count. ``seed`` (None: the run's seed) fixes random masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from sparsifiers.config import ConfigError, number

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SELECTION_KEYS = ("sparsity", "distribution", "dense_first", "dense_last", "power_scale", "seed")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear modules by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


@dataclass(frozen=True)
class LayerSelection:
    """The six layer-selection settings of every method, validated and with ``dense_first`` resolved."""

    sparsity: float = 0.0
    distribution: str = "uniform"
    dense_first: bool = True
    dense_last: bool = False
    power_scale: float = 1.0
    seed: int | None = None

    @classmethod
    def from_settings(cls, given: Mapping[str, Any], defaults: Mapping[str, Any],
                      distributions: Sequence[str] | None) -> LayerSelection:
        """Settings given to a method (None: the method's default) checked into a selection."""
        values = {key: given.get(key) if given.get(key) is not None else defaults.get(key) for key in SELECTION_KEYS}
        sparsity = number("sparsity", values["sparsity"] if values["sparsity"] is not None else 0.0,
                          low=0.0, high=1.0, high_open=True)
        distribution = values["distribution"] or "uniform"
        if distributions is not None and distribution not in distributions:
            raise ConfigError(f"sparsifier.distribution must be one of [{', '.join(distributions)}], "
                              f"got {distribution!r}")
        power_scale = number("power_scale", values["power_scale"] if values["power_scale"] is not None else 1.0,
                             low=0.0, low_open=True)
        seed = values["seed"]
        if seed is not None:
            seed = number("seed", seed, int)
        dense_first = values["dense_first"]
        return cls(sparsity=float(sparsity), distribution=distribution,
                   dense_first=(distribution == "uniform") if dense_first is None else bool(dense_first),
                   dense_last=bool(values["dense_last"]), power_scale=float(power_scale), seed=seed)

    def masked_names(self, layers: Mapping[str, nn.Module]) -> list[str]:
        """Names of the selected layers that may be masked (first conv / last linear kept dense if configured)."""
        names = list(layers)
        convs = [n for n in names if not isinstance(layers[n], nn.Linear)]
        linears = [n for n in names if isinstance(layers[n], nn.Linear)]
        excluded = set()
        if self.dense_first and convs:
            excluded.add(convs[0])
        elif self.dense_first and not convs and linears:
            excluded.add(linears[0])
        if self.dense_last and linears:
            excluded.add(linears[-1])
        return [n for n in names if n not in excluded]
