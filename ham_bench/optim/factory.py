"""Build SGD / AdamW / SAM (+ HAM) from the ``optimizer`` and ``ham`` config groups."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsifiers.config import ConfigError, choice, flag, number

from .divergence import WARN_EVERY, WARN_EXPONENT
from .exempt import no_weight_decay_ids
from .fused import FusedOptimizer
from .ham import HAM, IMPLEMENTATIONS, VARIANTS
from .sam import SAM

__all__ = ["OPTIMIZER_NAMES", "OptimizerSettings", "build_optimizer", "optimizer_settings"]

OPTIMIZER_NAMES = ("sgd", "adamw", "sam")
_SAM_BASES = ("sgd", "adamw")
_COMMON_KEYS = {"name", "lr", "weight_decay", "no_decay_bias_norm"}
_BASE_KEYS = {"sgd": {"momentum", "dampening", "nesterov"}, "adamw": {"betas", "eps"}}
_HAM_KEYS = {"enabled", "variant", "alpha", "beta", "clamp", "implementation", "diagnostics", "warn_exponent",
             "warn_every", "cover_no_weight_decay"}
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               getattr(nn, "RMSNorm", nn.LayerNorm))


def _plain(cfg: Any, name: str) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is optional for this module
        pass
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{name} config must be a mapping, got {type(cfg).__name__}")
    return {k: v for k, v in cfg.items() if not str(k).startswith("_")}


def _number(cfg: dict, key: str, where: str, default=None, *, positive=False, low=None, high=None) -> float:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key} is required")
    return float(number(key, value, low=0.0 if positive else low, low_open=positive, high=high,
                        high_open=high is not None, where=where))


def _flag(cfg: dict, key: str, where: str, default: bool) -> bool:
    return flag(key, cfg.get(key, default), where=where)


def _choice(cfg: dict, key: str, where: str, allowed: tuple[str, ...], default=None) -> str:
    return choice(key, cfg.get(key, default), allowed, where=where)


def _named_parameters(model_or_named_params) -> tuple[list[tuple[str, nn.Parameter]], set[int]]:
    """(name, param) pairs that require grad, and ids of norm-layer parameters."""
    norm_ids: set[int] = set()
    if isinstance(model_or_named_params, nn.Module):
        for module in model_or_named_params.modules():
            if isinstance(module, _NORM_TYPES):
                norm_ids.update(id(p) for p in module.parameters(recurse=False))
        named = list(model_or_named_params.named_parameters())
    else:
        named = []
        for index, item in enumerate(model_or_named_params):
            if isinstance(item, torch.Tensor):
                named.append((str(index), item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                named.append((str(item[0]), item[1]))
            else:
                raise TypeError("build_optimizer needs an nn.Module or an iterable of (name, parameter) "
                                f"pairs, got an item of type {type(item).__name__}")
    return [(n, p) for n, p in named if p.requires_grad], norm_ids


def _base_kwargs(name: str, cfg: dict, where: str) -> dict[str, Any]:
    if name == "sgd":
        momentum = _number(cfg, "momentum", where, 0.0, low=0.0, high=1.0)
        dampening = float(number("dampening", cfg.get("dampening", 0.0), low=0.0, high=1.0, where=where))
        nesterov = _flag(cfg, "nesterov", where, False)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ConfigError(f"{where}.nesterov=true needs {where}.momentum > 0 and {where}.dampening = 0")
        return {"momentum": momentum, "dampening": dampening, "nesterov": nesterov}
    betas = cfg.get("betas", (0.9, 0.999))
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
        raise ConfigError(f"{where}.betas must be a pair [beta1, beta2], got {betas!r}")
    for b in betas:
        _number({"betas": b}, "betas", where, low=0.0, high=1.0)
    return {"betas": (float(betas[0]), float(betas[1])), "eps": _number(cfg, "eps", where, 1e-8, positive=True)}


@dataclass(frozen=True)
class OptimizerSettings:
    """The ``optimizer`` and ``ham`` configs, checked: what ``build_optimizer`` builds."""

    name: str
    base: str
    lr: float
    weight_decay: float
    no_decay_bias_norm: bool
    base_kwargs: dict
    sam: dict | None     # rho, adaptive
    ham: dict | None     # HAM's keyword arguments; None: HAM off
    ham_covers_no_weight_decay: bool = False   # HAM also on the model's no_weight_decay() parameters


def optimizer_settings(optimizer_cfg, ham_cfg=None) -> OptimizerSettings:
    """Check the ``optimizer`` and ``ham`` configs (ConfigError naming the key); see :func:`build_optimizer`."""
    cfg = _plain(optimizer_cfg, "optimizer")
    where = "optimizer"
    name = _choice(cfg, "name", where, OPTIMIZER_NAMES)
    base_name = _choice(cfg, "base", where, _SAM_BASES, "sgd") if name == "sam" else name
    allowed = _COMMON_KEYS | _BASE_KEYS[base_name] | ({"base", "rho", "adaptive"} if name == "sam" else set())
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)} for name={name}"
                          f"{f' base={base_name}' if name == 'sam' else ''}; allowed: {', '.join(sorted(allowed))}")
    sam = None
    if name == "sam":
        sam = {"rho": _number(cfg, "rho", where, 0.05, positive=True),
               "adaptive": _flag(cfg, "adaptive", where, False)}
    ham = _plain(ham_cfg, "ham")
    unknown = sorted(set(ham) - _HAM_KEYS)
    if unknown:
        raise ConfigError(f"ham has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_HAM_KEYS))}")
    ham_kwargs = None
    if ham and _flag(ham, "enabled", "ham", True):
        ham_kwargs = {"alpha": _number(ham, "alpha", "ham", 200.0, low=0.0),
                      "beta": _number(ham, "beta", "ham", 1e-3, low=0.0),
                      "variant": _choice(ham, "variant", "ham", VARIANTS, "hyp_star"),
                      "clamp": _clamp(ham),
                      "implementation": _choice(ham, "implementation", "ham", IMPLEMENTATIONS, "auto"),
                      "diagnostics": _flag(ham, "diagnostics", "ham", False),
                      "warn_exponent": _warn_exponent(ham),
                      "warn_every": int(number("warn_every", ham.get("warn_every", WARN_EVERY), int, low=1,
                                               where="ham"))}
    return OptimizerSettings(
        name=name, base=base_name, lr=_number(cfg, "lr", where, positive=True),
        weight_decay=_number(cfg, "weight_decay", where, 0.01 if base_name == "adamw" else 0.0, low=0.0),
        no_decay_bias_norm=_flag(cfg, "no_decay_bias_norm", where, True),
        base_kwargs=_base_kwargs(base_name, cfg, where), sam=sam, ham=ham_kwargs,
        ham_covers_no_weight_decay=_flag(ham, "cover_no_weight_decay", "ham", False))


def build_optimizer(model_or_named_params, optimizer_cfg, ham_cfg=None, extra_groups: Iterable[Mapping] = ()):
    """An SGD / AdamW / SAM optimizer, wrapped in HAM when ``ham_cfg.enabled``.

    ``optimizer_cfg`` (mapping or DictConfig): ``name`` (sgd | adamw | sam),
    ``lr`` (required), ``weight_decay`` (default 0 for sgd, 0.01 for adamw as in
    torch), ``no_decay_bias_norm`` (default true: 1-D parameters and parameters
    of norm layers get weight_decay 0); sgd: ``momentum`` (0, in [0, 1)),
    ``dampening`` (0), ``nesterov`` (false); adamw: ``betas`` ([0.9, 0.999]),
    ``eps`` (1e-8); sam: ``base`` (sgd | adamw, default sgd), ``rho`` (0.05,
    > 0), ``adaptive`` (false) plus the base's keys. Keys starting with ``_``
    are ignored; unknown keys raise.

    ``ham_cfg``: ``enabled`` (default true when the mapping is given), ``variant``,
    ``alpha``, ``beta``, ``clamp``, ``implementation``, ``diagnostics``,
    ``warn_exponent`` (> 0, or null: no divergence warning), ``warn_every``
    (defaults as in :class:`HAM`), ``cover_no_weight_decay`` (default false).
    With HAM off, SGD and AdamW come wrapped in :class:`FusedOptimizer` (the
    base's own step, with the engine's bookkeeping fused into the update of
    the weights it hands over), SAM as it is.

    Parameters the model names in its ``no_weight_decay()`` (timm: pos_embed,
    cls_token, ...; ``ham_bench.optim.exempt``) form their own group:
    weight_decay 0 when ``no_decay_bias_norm``, and ``ham=False`` (no HAM)
    unless ``ham.cover_no_weight_decay`` is true. ``extra_groups``: dicts ``{"params": [...], **group
    keys}`` (e.g. a sparsifier's thresholds with ``weight_decay`` and ``ham:
    False``); their parameters are taken out of the default groups.
    Bad settings raise ``ConfigError`` (``optimizer_settings``).
    """
    settings = optimizer_settings(optimizer_cfg, ham_cfg)
    named, norm_ids = _named_parameters(model_or_named_params)
    groups, taken = [], set()
    for index, extra in enumerate(extra_groups):
        if not isinstance(extra, Mapping) or "params" not in extra:
            raise TypeError(f"extra_groups[{index}] must be a mapping with a 'params' list, got {extra!r}")
        params = list(extra["params"])
        for p in params:
            if id(p) in taken:
                raise ValueError(f"extra_groups[{index}]: a parameter appears in two extra groups")
            taken.add(id(p))
        if params:
            groups.append({**dict(extra), "params": params})
    decay, no_decay, exempt = [], [], []
    exempt_ids = no_weight_decay_ids(model_or_named_params)
    for _, p in named:
        if id(p) in taken:
            continue
        if id(p) in exempt_ids:
            exempt.append(p)
            continue
        (no_decay if settings.no_decay_bias_norm and (p.dim() <= 1 or id(p) in norm_ids) else decay).append(p)
    default_groups = [{"params": decay, "weight_decay": settings.weight_decay}]
    if no_decay:
        default_groups.append({"params": no_decay, "weight_decay": 0.0})
    if exempt:
        default_groups.append({"params": exempt,
                               "weight_decay": 0.0 if settings.no_decay_bias_norm else settings.weight_decay,
                               **({} if settings.ham_covers_no_weight_decay else {"ham": False})})
    groups = [g for g in default_groups if g["params"]] + groups
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")

    base_cls = torch.optim.SGD if settings.base == "sgd" else torch.optim.AdamW
    common = {"lr": settings.lr, "weight_decay": settings.weight_decay, **settings.base_kwargs}
    if settings.sam is not None:
        optimizer = SAM(groups, base_cls, **settings.sam, **common)
    else:
        optimizer = base_cls(groups, **common)
    if settings.ham is not None:
        return HAM(optimizer, **settings.ham)
    # HAM off: the same fused kernels take the engine's bookkeeping (masks, sign flips), without HAM's factor
    return optimizer if settings.sam is not None else FusedOptimizer(optimizer)


def _clamp(ham: dict) -> float:
    value = ham.get("clamp", 5.0)
    if value in (math.inf, "inf"):
        return math.inf
    return _number(ham, "clamp", "ham", 5.0, positive=True)


def _warn_exponent(ham: dict) -> float | None:
    value = ham.get("warn_exponent", WARN_EXPONENT)
    if value is None:
        return None
    try:
        return _number({"warn_exponent": value}, "warn_exponent", "ham", positive=True)
    except ConfigError:
        raise ConfigError(f"ham.warn_exponent must be a number > 0 (mean |exponent| per step; default "
                          f"{WARN_EXPONENT:g}) or null (no divergence warning), got {value!r}") from None
