"""Merging methods, registered by name (registry.MODULES: each imported when its name is first used)."""
from .registry import METHODS, MergeContext, Method, MethodConfig, get_method, register

__all__ = ["METHODS", "MergeContext", "Method", "MethodConfig", "get_method", "register"]
