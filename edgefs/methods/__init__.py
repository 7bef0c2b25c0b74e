"""Meta-learning methods (PyTorch, workstation side), by registry.

Every method follows :class:`FewShotMethod`: ``process_support_set`` then
``forward(queries)``; ``episode_loss`` for training; ``head_spec()`` for the device.
"""

from __future__ import annotations

from edgefs.methods.base import METHODS, FewShotMethod, build_method

# Importing the modules registers them.
from edgefs.methods import protonet as _protonet  # noqa: F401  isort: skip
from edgefs.methods import baselinepp as _baselinepp  # noqa: F401  isort: skip
from edgefs.methods import distill as _distill  # noqa: F401  isort: skip
from edgefs.methods import maml as _maml  # noqa: F401  isort: skip
from edgefs.methods import matching as _matching  # noqa: F401  isort: skip
from edgefs.methods import multitask as _multitask  # noqa: F401  isort: skip
from edgefs.methods import relation as _relation  # noqa: F401  isort: skip
from edgefs.methods import siamese as _siamese  # noqa: F401  isort: skip
from edgefs.methods import mann as _mann  # noqa: F401  isort: skip
from edgefs.methods import metanet as _metanet  # noqa: F401  isort: skip
from edgefs.methods import lstm_meta as _lstm_meta  # noqa: F401  isort: skip

__all__ = ["METHODS", "FewShotMethod", "build_method"]
