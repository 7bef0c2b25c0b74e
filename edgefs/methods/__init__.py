"""Meta-learning methods (PyTorch, workstation side), by registry.

Every method follows :class:`FewShotMethod`: ``process_support_set`` then
``forward(queries)``; ``episode_loss`` for training; ``head_spec()`` for the device.
A method is a module of this package whose class carries ``@METHODS.register(name)``;
:data:`METHODS` imports the modules on its first lookup.
"""

from __future__ import annotations

from edgefs.methods.base import METHODS, FewShotMethod, build_method

__all__ = ["METHODS", "FewShotMethod", "build_method"]
