"""A torch Optimizer that wraps another one and shares its param_groups and state."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch.optim import Optimizer

__all__ = ["WrappedOptimizer"]


class WrappedOptimizer(Optimizer):
    """Base for HAM and SAM: an Optimizer whose groups and state ARE ``base_optimizer``'s.

    ``param_groups``, ``state`` and ``defaults`` read through to the base (also
    after the base's ``load_state_dict``, which replaces its list and dict), so LR
    schedulers, GradScaler and code editing ``opt.state[p]`` see one set of
    objects. Step hooks, state-dict hooks, ``zero_grad`` and ``add_param_group``
    behave as on any torch optimizer. Subclasses set ``self.base_optimizer``,
    call ``_init_wrapper()``, and implement ``step``; their own settings go into
    the state dict under ``_state_key`` through ``_wrapper_state`` /
    ``_load_wrapper_state``.
    """

    base_optimizer: Optimizer
    _state_key = "wrapper"

    def _init_wrapper(self) -> None:
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.base_optimizer.param_groups = value

    @property
    def state(self):
        return self.base_optimizer.state

    @state.setter
    def state(self, value):
        self.base_optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.base_optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.base_optimizer.defaults = value

    @property
    def requires_closure(self) -> bool:
        """True when ``step`` needs a closure (SAM), here or in the base."""
        return bool(getattr(self.base_optimizer, "requires_closure", False))

    def __getstate__(self):
        return self.__dict__.copy()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._patch_step_function()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def _wrapper_state(self) -> dict[str, Any]:
        return {}

    def _load_wrapper_state(self, settings: dict[str, Any] | None) -> None:
        """Validate and apply saved settings (None: a plain base state dict); runs before the base loads."""

    def _after_load_state_dict(self) -> None:
        """Runs after the base optimizer loaded its (new) param groups."""

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus this wrapper's settings under ``_state_key``."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state = self.base_optimizer.state_dict()
        state[self._state_key] = self._wrapper_state()
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict`, or a plain state dict of the base optimizer."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        state_dict = dict(state_dict)
        self._load_wrapper_state(state_dict.pop(self._state_key, None))
        self.base_optimizer.load_state_dict(state_dict)
        self._after_load_state_dict()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
