"""Concept-erasure methods. Importing this package registers every built-in method."""

from . import ace, cure, esd, mace, pure, rece, space, speed, uce  # noqa: F401  (registration side effect)
from .base import Method, MethodConfig, get_method, list_methods, make_config, register_method

__all__ = ["Method", "MethodConfig", "get_method", "list_methods", "make_config", "register_method"]
