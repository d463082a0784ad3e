"""Parameters a model itself exempts from weight decay: the names its ``no_weight_decay()`` returns.

timm's models (and others following the convention) name their position
embeddings and class/distillation tokens there (``pos_embed``, ``cls_token``,
``dist_token``, ...). :func:`ham_bench.optim.build_optimizer` gives these
parameters ``weight_decay`` 0 (with ``optimizer.no_decay_bias_norm``, the
default) and, unless ``ham.cover_no_weight_decay`` is true, no HAM (their
group gets ``ham=False``): they are additive offsets, not weights whose
sparsity or sign HAM is about. A name matches the parameter of that name, or
every parameter under a module of that name (``"pos_embed"`` matches
``pos_embed`` and ``pos_embed.weight``), as timm itself matches them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["no_weight_decay_ids"]


def no_weight_decay_ids(model: nn.Module) -> set[int]:
    """ids of the parameters named by ``model.no_weight_decay()`` (empty if the model has no such method)."""
    method = getattr(model, "no_weight_decay", None)
    if not isinstance(model, nn.Module) or not callable(method):
        return set()
    names = {str(name) for name in (method() or ())}
    return {id(p) for name, p in model.named_parameters()
            if name in names or any(name.startswith(prefix + ".") for prefix in names)}
