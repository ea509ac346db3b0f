"""Merging methods, registered by name. Import order is registration order."""
from .registry import METHODS, MergeContext, Method, MethodConfig, get_method, register
from . import weight_average, task_arithmetic, ties, adamerging, tsv_m, iso, wudi  # noqa: F401  (registers)

__all__ = ["METHODS", "MergeContext", "Method", "MethodConfig", "get_method", "register"]
