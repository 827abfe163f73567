"""User datasets, models and optimizers, added by name without editing normlab.

A plugin is a Python module that registers things when it is imported:

    from normlab.engine.plugins import register_dataset, register_model, register_optimizer

    @register_dataset("blobs")
    def blobs(cfg):                      # cfg: the run's DataConfig
        ...                              # return x_train, y_train, x_test, y_test, num_classes

    @register_model("tiny")
    def tiny(cfg, input_shape, num_classes):   # cfg: ModelConfig; return an nn.Module
        ...

    @register_optimizer("signsgd")
    def signsgd(param_groups, cfg):      # cfg: OptimConfig; return a torch.optim.Optimizer
        ...

A config names its plugin modules in `run.plugins` (dotted module paths importable from the working
directory or PYTHONPATH); every process that trains imports them again, so pool workers and Ray
tasks see them too. Installed packages can instead declare an entry point in the group
`normlab.plugins`; those load on first use. Then `data.name: blobs`, `model.arch: tiny` or
`optim.name: signsgd` work like the built-in names. normlab's schedules, weight decay and probes of
weights and inputs apply to plugin models and optimizers as well (every nn.Linear / conv layer of a
plugin model counts as a weight layer; only the built-in networks have activation taps).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from .errors import ConfigError

PLUGIN_DATASETS: dict[str, Callable] = {}
PLUGIN_MODELS: dict[str, Callable] = {}
PLUGIN_OPTIMIZERS: dict[str, Callable] = {}
ENTRY_POINT_GROUP = "normlab.plugins"
_entry_points_loaded = False


def _register(table: dict[str, Callable], kind: str, name: str):
    def add(fn: Callable) -> Callable:
        table[name] = fn
        return fn

    if not name or not isinstance(name, str):
        raise ValueError(f"a plugin {kind} needs a non-empty name")
    return add


def register_dataset(name: str):
    return _register(PLUGIN_DATASETS, "dataset", name)


def register_model(name: str):
    return _register(PLUGIN_MODELS, "model", name)


def register_optimizer(name: str):
    return _register(PLUGIN_OPTIMIZERS, "optimizer", name)


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plugin is named, not a traceback
            raise ConfigError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP} failed: {e}") from e


def load_plugins(modules: list[str], path: str = "run.plugins") -> None:
    """Import every plugin module (and the installed entry points); idempotent."""
    load_entry_points()
    if modules and os.getcwd() not in sys.path:
        # A plugin file in the folder a command runs from is found, as for `python -m`; last on the
        # path, so it never shadows an installed package. Spawned pool workers inherit sys.path.
        sys.path.append(os.getcwd())
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"{path}: cannot import {name!r} ({e}); put its folder on PYTHONPATH or run from it, or remove it"
            ) from e


def check_name(path: str, value: str, builtin: tuple[str, ...], table: dict[str, Callable]) -> None:
    if value not in builtin and value not in table:
        known = ", ".join(list(builtin) + sorted(table))
        raise ConfigError(
            f"{path}: {value!r} is not a known name; choose one of {known} (or register it in a plugin: run.plugins)"
        )
