"""Memory-augmented head (after Santoro et al. 2016): a key-value memory with least-recently-used writes, NumPy only.

Enrolling a shot *writes* it to memory: a slot holds the shot's key (a learned projection of
the embedding, unit length) and its class. Classifying *reads* memory: cosine attention of
the query's key over every slot, summed per class. The memory has ``capacity`` slots.

Capacity. One slot holds one shot, so ``classes x shots <= capacity`` keeps every shot.
Beyond that each new shot overwrites the least recently used slot: a slot is used when it
is written and when it is the best match of a shot being written (the read that precedes
every write, as in the paper's least-recently-used access), so shots that keep being
recognised stay while stale ones go. A class's last slot is never overwritten, so every
enrolled class stays classifiable: at most ``capacity`` classes, and enrolling one more is
refused with what to do. Classifying does not count as use (it would make a read change
the stored head). Removing a class frees its slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefs.errors import EdgefsError
from edgefs.heads.base import Head
from edgefs.heads.reference import l2_normalize
from edgefs.heads.spec import HEADS

#: Spec arrays of the key controller: ``key = normalize(proj @ normalize(e) + proj_bias)``.
MANN_ARRAYS = ("proj", "proj_bias")


def mann_keys(embeddings: np.ndarray, proj: np.ndarray, proj_bias: np.ndarray) -> np.ndarray:
    """Memory keys of float ``(R, D)`` embeddings: float32 ``(R, K)`` unit rows.

    Args:
        embeddings: float ``(R, D)``.
        proj: float32 ``(K, D)``.
        proj_bias: float32 ``(K,)``.
    """
    return l2_normalize(l2_normalize(embeddings) @ proj.T + proj_bias)


def choose_slot(slot_class: np.ndarray, slot_used: np.ndarray, cls: int, capacity: int) -> int:
    """Where a shot of class ``cls`` is written: ``len(slot_class)`` for a free slot, else the slot to overwrite.

    The least recently used slot (lowest ``slot_used``, then lowest index) among those that are
    not the last slot of another class (a class's own slots may be replaced by its new shot).

    Args:
        slot_class: int ``(M,)`` class of each occupied slot.
        slot_used: int ``(M,)`` clock of each slot's last use.
        cls: the class being written.
        capacity: number of slots.

    Raises:
        EdgefsError: every slot is the last one of another class (more classes than slots).
    """
    m = len(slot_class)
    if m < capacity:
        return m
    per_class = np.bincount(slot_class, minlength=int(slot_class.max()) + 1)
    free = (per_class[slot_class] > 1) | (slot_class == cls)
    if not free.any():
        raise EdgefsError(f"the memory's {capacity} slots each hold the last shot of a class; a MANN head "
                          f"holds at most {capacity} classes. Remove a class, or export with a larger "
                          "capacity (method option 'capacity')")
    candidates = np.flatnonzero(free)
    return int(candidates[np.argmin(slot_used[candidates])])


def memory_trace(sim: np.ndarray, labels: np.ndarray, capacity: int, reads: np.ndarray | None = None) -> np.ndarray:
    """Which items of a sequence sit in memory when each item is read (the training-time view).

    Item ``t`` is read (its best-matching slot is used), then written (:func:`choose_slot`):
    exactly the device head's enrollment, one shot at a time.

    Args:
        sim: float ``(T, T)`` key cosines between the items, in sequence order.
        labels: int ``(T,)`` class of each item.
        capacity: number of slots.
        reads: bool ``(T,)``: items only read, never written (queries on the device); default none.

    Returns:
        bool ``(T, T)``: ``[t, j]`` is true when item ``j`` is in memory as item ``t`` is read.
    """
    t_len = len(labels)
    present = np.zeros((t_len, t_len), bool)
    items: list[int] = []
    slot_class = np.zeros(0, np.int64)
    slot_used = np.zeros(0, np.int64)
    clock = 0
    for t in range(t_len):
        present[t, items] = True
        if reads is not None and reads[t]:
            continue
        if items:
            slot_used[int(np.argmax(sim[t, items]))] = clock
        clock += 1
        slot = choose_slot(slot_class, slot_used, int(labels[t]), capacity)
        if slot == len(items):
            items.append(t)
            slot_class = np.append(slot_class, labels[t])
            slot_used = np.append(slot_used, clock)
        else:
            items[slot], slot_class[slot], slot_used[slot] = t, labels[t], clock
    return present


def read_memory(keys: np.ndarray, slot_keys: np.ndarray, slot_class: np.ndarray, classes: int,
                sharpness: float) -> np.ndarray:
    """Class logits ``log sum_{slots of c} exp(sharpness * cos(key, slot))``.

    Args:
        keys: float32 ``(Q, K)`` unit query keys.
        slot_keys: float32 ``(M, K)`` unit slot keys.
        slot_class: int ``(M,)``; every class in ``0..classes-1`` holds at least one slot.
        classes: ``C``.
        sharpness: attention scale.

    Returns:
        float32 ``(Q, C)``; the softmax over classes is the attention mass on each class.
    """
    a = np.float32(sharpness) * (keys @ slot_keys.T)  # (Q, M)
    top = a.max(axis=1, keepdims=True)
    onehot = np.zeros((len(slot_class), classes), np.float32)
    onehot[np.arange(len(slot_class)), slot_class] = 1.0
    mass = np.exp(a - top) @ onehot
    return (top + np.log(np.maximum(mass, np.float32(1e-30)))).astype(np.float32)


@HEADS.register("mann", rank=6)
class MANNHead(Head):
    """Memory-augmented head: enrolling writes shots to a least-recently-used key memory, classifying reads it.

    Santoro, Bartunov, Botvinick, Wierstra and Lillicrap, "Meta-Learning with
    Memory-Augmented Neural Networks", ICML 2016, with a feed-forward controller (one
    linear layer, :func:`mann_keys`) and the label stored with each slot, as in the
    key-value memories of Kaiser et al. (ICLR 2017). See the module docstring for what
    ``capacity`` means. Logits: :func:`read_memory`.

    Args:
        dim: embedding size ``D``.
        temperature: read sharpness (learned in training).
        threshold: unknown when the best cosine to a class mean is below it.
        capacity: memory slots (shots held); at least 1.
    """

    head_type = "mann"
    params_accepted = ("capacity",)
    supports_center = False  # the controller was trained on raw features

    def __init__(self, dim: int, *, temperature: float = 10.0, threshold: float = -1.0,
                 capacity: int = 1024) -> None:
        super().__init__(dim, temperature=temperature, threshold=threshold)
        if isinstance(capacity, bool) or int(capacity) != capacity or capacity < 1:
            raise EdgefsError(f"mann head capacity must be a whole number >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self.proj = np.eye(dim, dtype=np.float32)
        self.proj_bias = np.zeros(dim, np.float32)
        self._reset_memory()

    def _reset_memory(self) -> None:
        k = self.proj.shape[0]
        self.slot_keys = np.zeros((0, k), np.float32)
        self.slot_class = np.zeros(0, np.int32)
        self.slot_used = np.zeros(0, np.int64)
        self.clock = 0

    def hyperparams(self) -> dict[str, Any]:
        return {**super().hyperparams(), "capacity": self.capacity}

    def _use_spec_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if not arrays:
            return
        if set(arrays) != set(MANN_ARRAYS):
            raise EdgefsError(f"mann head spec has arrays {sorted(arrays)}; it needs exactly "
                              f"{', '.join(MANN_ARRAYS)}. Re-export the head spec from a 'mann' checkpoint")
        proj = np.asarray(arrays["proj"], np.float32)
        bias = np.asarray(arrays["proj_bias"], np.float32)
        if proj.ndim != 2 or proj.shape[1] != self.dim or bias.shape != (proj.shape[0],):
            raise EdgefsError(f"mann head spec arrays proj {proj.shape} and proj_bias {bias.shape} do not fit "
                              f"{self.dim}-d embeddings (need (K, {self.dim}) and (K,)); the spec was made for "
                              "another backbone or is damaged")
        if not (np.isfinite(proj).all() and np.isfinite(bias).all()):
            raise EdgefsError("mann head spec arrays hold NaN or inf; re-export the head spec")
        self.proj, self.proj_bias = proj, bias
        self._reset_memory()

    # ---- writes ---------------------------------------------------------------------------
    def add_classes(self, items: Mapping[str, np.ndarray]) -> None:
        if len(self.classes) + len(items) > self.capacity:
            raise EdgefsError(f"a MANN head with {self.capacity} memory slots holds at most {self.capacity} "
                              f"classes; {len(self.classes)} are enrolled. Remove a class, or export with a "
                              "larger capacity (method option 'capacity')")
        super().add_classes(items)

    def write(self, idx: int, shots: np.ndarray) -> None:
        """Write float32 ``(K, D)`` shots of class ``idx`` one by one: read (use the best slot), then write."""
        for key in mann_keys(shots, self.proj, self.proj_bias):
            if len(self.slot_keys):
                self.slot_used[int(np.argmax(self.slot_keys @ key))] = self.clock
            self.clock += 1
            slot = choose_slot(self.slot_class, self.slot_used, idx, self.capacity)
            if slot == len(self.slot_keys):
                self.slot_keys = np.concatenate([self.slot_keys, key[None]])
                self.slot_class = np.append(self.slot_class, np.int32(idx))
                self.slot_used = np.append(self.slot_used, np.int64(self.clock))
            else:
                self.slot_keys[slot], self.slot_class[slot], self.slot_used[slot] = key, idx, self.clock

    def _on_add(self, indices: list[int], shots: list[np.ndarray]) -> None:
        for idx, emb in zip(indices, shots, strict=True):
            self.write(idx, emb)

    def _on_append(self, idx: int, shots: np.ndarray) -> None:
        self.write(idx, shots)

    def _on_remove(self, idx: int) -> None:
        keep = self.slot_class != idx
        self.slot_keys, self.slot_used = self.slot_keys[keep], self.slot_used[keep]
        labels = self.slot_class[keep]
        self.slot_class = (labels - (labels > idx)).astype(np.int32)

    # ---- reads ----------------------------------------------------------------------------
    def _scores(self, q: np.ndarray) -> np.ndarray:
        keys = mann_keys(q, self.proj, self.proj_bias)
        return read_memory(keys, self.slot_keys, self.slot_class, len(self.classes), self.temperature)

    fork_copies_arrays = True  # slots are written in place

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return self._global_arrays()

    def _global_arrays(self) -> dict[str, np.ndarray]:
        # The memory is not per class (a class's slots move as others are written): saved whole,
        # which is bounded by the capacity (1024 slots x the key width).
        return {"slot_keys": self.slot_keys.copy(), "slot_class": self.slot_class.copy(),
                "slot_used": self.slot_used.copy(), "clock": np.array([self.clock], np.int64)}

    def _load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        keys = np.asarray(arrays.get("slot_keys"), np.float32)
        slot_class = np.asarray(arrays.get("slot_class"), np.int32)
        used = np.asarray(arrays.get("slot_used"), np.int64)
        clock = np.asarray(arrays.get("clock"), np.int64).reshape(-1)
        c = len(self.classes)
        if (keys.ndim != 2 or keys.shape[1] != self.proj.shape[0] or slot_class.shape != (len(keys),)
                or used.shape != (len(keys),) or clock.shape != (1,) or len(keys) > self.capacity
                or not np.isfinite(keys).all()
                or (c and (slot_class.min() < 0 or slot_class.max() >= c
                           or (np.bincount(slot_class, minlength=c) == 0).any()))):
            raise EdgefsError("saved mann head memory does not fit its classes or capacity; rebuild the head "
                              "from the stored samples")
        self.slot_keys, self.slot_class, self.slot_used, self.clock = keys, slot_class, used, int(clock[0])

    def memory_use(self) -> dict[str, int]:
        """``{"slots": occupied, "capacity": ..., "shots": enrolled}``: fewer slots than shots means some were
        overwritten."""
        return {"slots": len(self.slot_keys), "capacity": self.capacity, "shots": int(self._counts.sum())}
