"""CUDA heads: the NumPy heads with their class rows kept in GPU memory and the kernels of
:mod:`edgefs.kernels.launch` doing enrollment, classification and fine-tuning.

Get one with :func:`to_cuda` (an enrolled NumPy head, state included) or
:func:`build_cuda_head` (from a HeadSpec). Enrolling runs the accumulate kernel on the class's
rows only; ``classify`` runs the fused classify kernel on a host array or, with no host copy,
on GPU memory such as ``engine.embed_device(frames)`` (a DeviceArray) or a torch CUDA tensor;
the fine-tune head's update runs the fused fine-tune kernel. The NumPy arrays of the head (what
``state()`` returns and the store saves) are kept in step with the GPU rows, so ``remove``,
``rename``, ``state`` and ``load_state`` behave as the NumPy head's, and results agree with the
NumPy head within the kernels' tolerances (device_tests/test_kernels.py).

GPU queries are checked for shape and dtype only: looking for NaN/inf would need a host copy.

pycuda is imported when a CUDA head is built, not when this module is; building one on a
machine without pycuda or a GPU raises an error that says so. Verification status: written
without a GPU; device_tests/test_kernels.py has not run on one from this code yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import ClassifyResult, Head
from edgefs.heads.finetune import FinetuneHead
from edgefs.heads.imprint import ImprintHead
from edgefs.heads.prototype_head import PrototypeHead
from edgefs.heads.spec import HeadSpec
from edgefs.kernels import launch
from edgefs.registry import Registry

CUDA_HEADS: Registry[type[Head]] = Registry("CUDA head")


class CudaHeadMixin:
    """GPU copies of a head's running sums, counts and similarity prototypes (spare capacity,
    grown by doubling), enrollment by the accumulate kernel, classification by the classify
    kernel. Mixed in before a NumPy head class; subclasses say how they classify."""

    dim: int
    classes: list[str]
    temperature: float
    threshold: float
    normalize_shots: bool
    _sums: np.ndarray
    _counts: np.ndarray
    _protos: np.ndarray

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        launch.runtime()  # no pycuda or no GPU: fail here, with the reason
        self._capacity = 0
        self._device_rows = 0  # rows 0.._device_rows-1 of the GPU arrays are up to date
        self._d_sums: launch.DeviceBuffer | None = None
        self._d_counts: launch.DeviceBuffer | None = None
        self._d_protos: launch.DeviceBuffer | None = None

    # ---- GPU state ------------------------------------------------------------------------
    def _reserve(self, rows: int) -> None:
        if rows <= self._capacity:
            return
        cap = max(rows, 2 * self._capacity, 16)
        self._d_sums = launch.DeviceBuffer((cap, self.dim))
        self._d_counts = launch.DeviceBuffer((cap,), np.int32)
        self._d_protos = launch.DeviceBuffer((cap, self.dim))
        self._capacity, self._device_rows = cap, 0

    def _sync_rows(self, start: int = 0) -> None:
        """Upload NumPy rows ``start..C-1`` (the state of record) to the GPU."""
        c = len(self.classes)
        self._reserve(c)
        start = min(start, self._device_rows)
        assert self._d_sums is not None and self._d_counts is not None and self._d_protos is not None
        if c > start:
            self._d_sums.upload(self._sums[start:c], start)
            self._d_counts.upload(self._counts[start:c], start)
            self._d_protos.upload(self._protos[start:c], start)
        self._device_rows = c
        self._sync_extra()

    def _sync_extra(self) -> None:
        """Hook: upload head-specific rows (the fine-tune head's weights)."""

    def _accumulate(self, idx: int, emb: np.ndarray) -> None:
        if len(self.classes) > self._device_rows:
            self._sync_rows(self._device_rows)  # new classes: zero rows from the NumPy arrays
        assert self._d_sums is not None and self._d_counts is not None and self._d_protos is not None
        launch.accumulate_normalize(emb, np.full(len(emb), idx, np.int32), self._d_sums, self._d_counts,
                                    out=self._d_protos, touched_only=True, normalize_shots=self.normalize_shots)
        self._sums[idx] = launch.to_host(self._d_sums.rows(1, idx))[0]
        self._counts[idx] = launch.to_host(self._d_counts.rows(1, idx))[0]
        self._protos[idx] = launch.to_host(self._d_protos.rows(1, idx))[0]

    def _on_remove(self, idx: int) -> None:
        super()._on_remove(idx)  # type: ignore[misc]
        self._sync_rows(idx)

    def load_state(self, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> None:
        super().load_state(arrays, params)  # type: ignore[misc]
        self._sync_rows()

    # ---- classification -------------------------------------------------------------------
    def _kernel_classify(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _classify(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._kernel_classify(q, k)

    def classify(self, queries: Any, k: int = 3) -> ClassifyResult:
        """Rank classes for float ``(Q, D)`` queries, host or GPU; see :class:`ClassifyResult`."""
        if not launch.is_device(queries):
            return super().classify(queries, k)  # type: ignore[misc]
        if int(k) < 1:
            raise EdgefsError(f"k must be at least 1, got {k}")
        if not self.classes:
            raise EdgefsError("no classes are enrolled; add_class() before classifying")
        if self.center is not None:
            # The fused kernels take the engine's buffer as it is; centring would need its own pass.
            raise EdgefsError("this head subtracts a center feature, which the CUDA kernels do not apply; "
                              "classify host embeddings (the NumPy path) with a centred bundle")
        top_idx, top_prob, best_sim, unknown = self._kernel_classify(queries, int(k))
        labels = [None if u else self.classes[int(i)] for i, u in zip(top_idx[:, 0], unknown, strict=True)]
        return ClassifyResult(top_idx, top_prob, best_sim, unknown, labels)

    def _proto_rows(self) -> Any:
        assert self._d_protos is not None
        return self._d_protos.rows(len(self.classes))


@CUDA_HEADS.register("imprint")
class CudaImprintHead(CudaHeadMixin, ImprintHead):
    """:class:`ImprintHead` on the GPU: ``classify`` is the fused kernel against the unit rows."""

    def _kernel_classify(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return launch.classify(q, self._proto_rows(), self.temperature, k, self.threshold)


@CUDA_HEADS.register("prototype")
class CudaPrototypeHead(CudaHeadMixin, PrototypeHead):
    """:class:`PrototypeHead` with ``distance="cosine"`` on the GPU (the Euclidean rule has no kernel).

    Raises:
        EdgefsError: ``distance="euclidean"``.
    """

    def __init__(self, dim: int, *, distance: str = "cosine", temperature: float | None = None,
                 threshold: float = -1.0) -> None:
        if distance != "cosine":
            raise EdgefsError(f"the CUDA prototype head supports distance='cosine' only, got {distance!r}; "
                              "use the NumPy PrototypeHead for Euclidean scores")
        super().__init__(dim, distance=distance, temperature=temperature, threshold=threshold)

    def _kernel_classify(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return launch.classify(q, self._proto_rows(), self.temperature, k, self.threshold)


@CUDA_HEADS.register("finetune")
class CudaFinetuneHead(CudaHeadMixin, FinetuneHead):
    """:class:`FinetuneHead` on the GPU: updates run the fused fine-tune kernel
    (:func:`edgefs.kernels.launch.finetune_gram`), ``classify`` the fused kernel with the
    weights, the bias and the similarity prototypes kept on the GPU."""

    solver = staticmethod(launch.finetune_gram)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._d_weight: launch.DeviceBuffer | None = None
        self._d_bias: launch.DeviceBuffer | None = None

    def _fit(self) -> None:
        super()._fit()
        self._sync_extra()

    def _sync_extra(self) -> None:
        c = len(self.classes)
        if c == 0 or self.weight.shape[0] != c:
            return  # mid-update (rows grow before the weights do); _fit uploads them
        if self._d_weight is None or self._d_weight.shape[0] < c:
            cap = max(self._capacity, c)
            self._d_weight = launch.DeviceBuffer((cap, self.dim))
            self._d_bias = launch.DeviceBuffer((cap,))
        assert self._d_bias is not None
        self._d_weight.upload(self.weight)
        self._d_bias.upload(self.bias)

    def _kernel_classify(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        assert self._d_weight is not None and self._d_bias is not None
        c = len(self.classes)
        # FinetuneHead.scores: l2_normalize(q) @ W^T + b, so temperature 1 and the bias.
        return launch.classify(q, self._d_weight.rows(c), 1.0, k, self.threshold, bias=self._d_bias.rows(c),
                               sim_rows=self._proto_rows())


def build_cuda_head(spec: HeadSpec, dim: int) -> Head:
    """The CUDA head for ``spec.head_type``, configured from the spec.

    Raises:
        EdgefsError: no CUDA version of that head (known: :data:`CUDA_HEADS`).
    """
    return CUDA_HEADS.get(spec.head_type).from_spec(spec, dim)


def to_cuda(head: Head) -> Head:
    """A CUDA head with the classes, arrays and hyper-parameters of NumPy ``head``."""
    arrays, params = head.state()
    cuda_head = CUDA_HEADS.get(head.head_type)(head.dim, **params["hyperparams"])
    cuda_head.load_state(arrays, params)
    return cuda_head
