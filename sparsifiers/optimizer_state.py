"""What a sparsifier may do to optimizer state, defined once for every torch optimizer (HAM and SAM included).

Optimizers keep three kinds of per-parameter state in ``optimizer.state[p]``:

- per-element tensors of ``p``'s shape: momentum buffers, Adam's
  ``exp_avg`` / ``exp_avg_sq``, RMSprop's ``square_avg``, Adagrad's ``sum``,
  Rprop's ``prev`` / ``step_size``, ...;
- counters and scalars: Adam's ``step``, NAdam's ``mu_product``, ASGD's
  ``eta`` / ``mu``, ...;
- anything else (LBFGS keeps its whole history under the first parameter).

Two operations, used by every method:

``reset_state(optimizer, params)`` (AC/DC's decompression, "reset ALL momentum
buffers"): the parameters' state is forgotten entirely, so the next step is
exactly that of a freshly created optimizer: counters restart (Adam's bias
correction is again that of step 1, not ~1), lazily created buffers are
created again from the next gradient (SGD's buffer starts as a copy of it).
Every torch optimizer creates its state lazily when ``state[p]`` is empty,
and HAM/SAM share their base optimizer's ``state`` object, so this holds for
all of them.

``reset_entries(optimizer, param, keep)`` (RigL's regrowth, a pruned entry,
AC/DC's compression): the entries of ``param`` where ``keep`` is False get the
value a fresh optimizer would give them, in every per-element tensor: 0 for
moments and buffers, ``initial_accumulator_value`` for Adagrad's ``sum``,
``lr`` for Rprop's ``step_size``. Counters are shared by the whole tensor
and are LEFT AS THEY ARE: a connection RigL regrows mid-run continues the
layer's Adam step count, so its first update has bias correction ~1 and,
with zeroed moments, moves it by about ``lr * (1 - beta1) / sqrt(1 - beta2)``
(3.2 lr at the default betas). That is what RigL's reference does (it zeroes
the regrown entries' moments and keeps the optimizer's global step). Absent
state (before the first step) stays absent.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# tensors that count steps for the whole parameter (0-d even for a 0-d parameter): never reset per entry
COUNTER_KEYS = frozenset({"step", "mu_product", "eta", "mu"})
# (optimizer class name, state key) -> the value a fresh optimizer gives each entry, from the param group
FRESH_ENTRY_VALUES = {
    ("Adagrad", "sum"): lambda group: group["initial_accumulator_value"],
    ("Rprop", "step_size"): lambda group: group["lr"],
}


def base_of(optimizer):
    """The innermost torch optimizer behind HAM / SAM wrappers (``base_optimizer`` chains)."""
    while hasattr(optimizer, "base_optimizer"):
        optimizer = optimizer.base_optimizer
    return optimizer


def _all_params(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def reset_state(optimizer, params: Iterable[torch.Tensor] | None = None) -> None:
    """Forget the state of ``params`` (default: every parameter): the next step is a fresh optimizer's."""
    if optimizer is None:
        return
    for param in _all_params(optimizer) if params is None else params:
        optimizer.state.pop(param, None)


def _group_of(optimizer, param: torch.Tensor) -> dict | None:
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group
    return None


@torch.no_grad()
def reset_entries(optimizer, param: torch.Tensor, keep: torch.Tensor | None = None) -> None:
    """Set ``param``'s per-element state to a fresh optimizer's value where ``keep`` is False (everywhere if None).

    Counters are left alone (module docstring). No host sync.
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    kind = type(base_of(optimizer)).__name__
    for key, value in state.items():
        if key in COUNTER_KEYS or not (torch.is_tensor(value) and value.shape == param.shape):
            continue
        fresh = FRESH_ENTRY_VALUES.get((kind, key))
        fill = 0.0 if fresh is None else float(fresh(_group_of(optimizer, param)))
        if keep is None:
            value.fill_(fill)
        elif fill == 0.0:
            value.mul_(keep)
        else:
            value.masked_fill_(keep.logical_not(), fill)
