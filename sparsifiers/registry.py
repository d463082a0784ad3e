"""Sparsifier registry: built-ins by short name, third-party methods by class path or entry point.

Three ways a method becomes buildable from the ``sparsifier`` config group:

1. Built-ins. A module in this package decorates its class with
   ``@register_sparsifier("rigl")`` and adds one line to ``BUILTIN_MODULES``
   below so the name is known before its module is imported. Modules are
   imported lazily, on first use, so a missing or broken optional method
   never stops the others from building.
2. A class path: ``sparsifier._target_: my_package.MySparsifier``; the other
   keys are the constructor's keyword arguments (``name`` is dropped unless
   the constructor takes it).
3. A Python entry point in the group ``ham_bench.sparsifiers`` whose name is
   the short name and whose object is the class, e.g. in the plugin's
   pyproject.toml::

       [project.entry-points."ham_bench.sparsifiers"]
       my_method = "my_package:MySparsifier"

   Built-in names take precedence: a plugin cannot silently replace a paper
   method, it must use a name of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from importlib.metadata import entry_points
from typing import Any, Mapping

from sparsifiers.config import ConfigError

ENTRY_POINT_GROUP = "ham_bench.sparsifiers"

# short name -> module that defines (and registers) it; one line per built-in.
BUILTIN_MODULES: dict[str, str] = {
    "dense": "sparsifiers.base",
    "random": "sparsifiers.random",
    "acdc": "sparsifiers.acdc",
    "rigl": "sparsifiers.rigl",
    "str": "sparsifiers.str",
    "signin": "sparsifiers.signin",
    "pilot": "sparsifiers.pilot",
    "snip": "sparsifiers.snip",
    "synflow": "sparsifiers.synflow",
    "gmp": "sparsifiers.gmp",
    "imp": "sparsifiers.imp",
    "lrr": "sparsifiers.imp",
    "nm": "sparsifiers.nm",
    "cs": "sparsifiers.cs",
    "spred": "sparsifiers.spred",
    "set": "sparsifiers.set",
    "mest": "sparsifiers.mest",
}

_REGISTRY: dict[str, type] = {}


def register_sparsifier(name: str):
    """Class decorator: ``@register_sparsifier("rigl")`` makes ``sparsifier.name=rigl`` build it."""

    def decorate(cls):
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ConfigError(f"sparsifier name {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _plugin_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_sparsifiers() -> list[str]:
    """Every name ``sparsifier.name`` accepts right now: built-ins present, registered, plugins."""
    names = {name for name, module in BUILTIN_MODULES.items() if _module_exists(module)}
    names |= set(_REGISTRY)
    names |= set(_plugin_entry_points())
    return sorted(names)


def _builtin_class(name: str) -> type | None:
    module_name = BUILTIN_MODULES[name]
    if name not in _REGISTRY:
        if not _module_exists(module_name):
            return None
        module = importlib.import_module(module_name)
        if name not in _REGISTRY:  # a module that forgot the decorator: find the class by its ``name``
            for value in vars(module).values():
                if inspect.isclass(value) and getattr(value, "name", None) == name \
                        and value.__module__ == module_name:
                    _REGISTRY[name] = value
                    break
    return _REGISTRY.get(name)


def sparsifier_class(name: str) -> type:
    """The class registered under ``name`` (built-in first, then entry points)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN_MODULES:
        cls = _builtin_class(name)
        if cls is not None:
            return cls
    plugins = _plugin_entry_points()
    if name in plugins:
        cls = plugins[name].load()
        _check_class(cls, f"entry point {name!r} ({plugins[name].value})")
        return cls
    raise ConfigError(f"sparsifier.name must be one of [{', '.join(available_sparsifiers())}], got {name!r}")


def accepted_keys(cls) -> set[str] | None:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the MRO (None: anything)."""
    keys: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass is object:
            return keys
        if "__init__" not in vars(klass):
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            return None
        forwards = False
        for index, (pname, parameter) in enumerate(parameters.items()):
            if index == 0 and pname in ("self", "cls"):
                continue
            if parameter.kind == parameter.VAR_KEYWORD:
                forwards = True
            elif parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                keys.add(pname)
        if not forwards:
            return keys
    return keys


def _check_keys(cls, kwargs: Mapping[str, Any], label: str) -> None:
    allowed = accepted_keys(cls)
    if allowed is None:
        return
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"sparsifier.{key} is not a setting of {label}; "
                             f"valid keys: [{', '.join(sorted(allowed))}]")


def _check_class(cls, label: str) -> None:
    from sparsifiers.base import Sparsifier  # base registers "dense" through this module

    if not (isinstance(cls, type) and issubclass(cls, Sparsifier)):
        raise ConfigError(f"{label} is not a sparsifier: subclass sparsifiers.Sparsifier "
                          f"(or sparsifiers.MaskedSparsifier)")


def _plain(cfg) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def build_sparsifier(cfg=None):
    """Build the sparsifier a ``sparsifier`` config mapping (DictConfig or dict) describes.

    ``{"_target_": "pkg.Class", **kwargs}`` instantiates the class path;
    otherwise ``cfg["name"]`` picks a built-in or entry-point method and the
    remaining keys are its keyword arguments. ``None`` or ``{}`` builds ``dense``.
    Unknown names and keys end in a one-line ``ConfigError`` naming the key.
    """
    kwargs = _plain(cfg)
    target = kwargs.pop("_target_", None)
    if target is not None:
        return _instantiate_target(target, kwargs)
    name = kwargs.pop("name", "dense")
    cls = sparsifier_class(str(name))
    _check_keys(cls, kwargs, f"sparsifier {name!r} ({cls.__module__}.{cls.__qualname__})")
    built = cls(**kwargs)
    if "name" not in vars(cls):  # an entry-point class that did not name itself: its entry point's name
        built.name = str(name)
    return built


def _instantiate_target(target: str, kwargs: dict[str, Any]):
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    try:
        cls = get_class(target)
    except Exception as error:  # hydra wraps import errors in several types and lines
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"sparsifier._target_ {target!r} cannot be imported: {reason}") from None
    _check_class(cls, f"sparsifier._target_ {target!r}")
    allowed = accepted_keys(cls)
    if "name" in kwargs and allowed is not None and "name" not in allowed:
        kwargs.pop("name")
    _check_keys(cls, kwargs, f"sparsifier._target_ {target!r}")
    try:
        built = instantiate({"_target_": target, **kwargs}, _convert_="all")
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise
    if "name" not in vars(cls):  # a class that inherits a built-in's name must not be tabled as it
        built.name = target
    return built
