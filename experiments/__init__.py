"""Experiments and their registry. Adding one: a module, a YAML in configs/, a line here, tests."""
from __future__ import annotations

from .base import Experiment, finish, load_config, run_experiment
from .baselines import Baselines

REGISTRY: dict[str, Experiment] = {exp.name: exp for exp in [Baselines()]}

__all__ = ["REGISTRY", "Experiment", "finish", "load_config", "run_experiment"]
