"""The executor's model manager: what turns a model *reference* flowing through the graph into
the live object a node computes with.

Models travel between nodes as small, frozen, hashable references rather than as loaded weights,
so a reference can be fingerprinted, pickled and compared, and a node that only passes a model on
never loads it. The weights live here, once per executor: the first node that needs a reference
loads it, every later node and run shares it, and when the memory budget is exceeded the models
that no running run needs go first, least recently used first.

The engine knows nothing of diffusion. A reference is anything hashable with
``load(manager) -> object``; a reference may load itself from another through ``manager.get``
(a patched model is a copy of its base with the patches applied), which is why loading happens
outside the manager's global lock.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter, OrderedDict
from typing import Any, Protocol

_MISSING: Any = object()  # "not loaded", distinct from a model that is None


class Loadable(Protocol):
    """What the manager needs of a reference: hashable, frozen, and able to load itself."""

    def __hash__(self) -> int: ...
    def load(self, manager: ModelManager) -> Any: ...


class Patch(Protocol):
    """A change to a loaded model (a LoRA, a scaled weight). Frozen and hashable, because it is
    part of the patched reference's identity; ``apply`` changes the model in place, and is only
    ever given a private copy of the base, never the shared one."""

    def __hash__(self) -> int: ...
    def apply(self, model: Any) -> None: ...


def load_patched(manager: ModelManager, base_ref: Any, patches: tuple) -> Any:
    """A patched model: a deep copy of the shared base with each patch applied in order. The base
    stays untouched in memory, so the unpatched model and every other patch set stay exact."""
    model = copy.deepcopy(manager.get(base_ref))
    for p in patches:
        p.apply(model)
    return model


def size_of(obj: Any) -> int:
    """Bytes held by a model's tensors, by duck typing (``parameters()``/``buffers()`` with
    ``nbytes``): the engine must not import torch. Anything else (a tokenizer) counts as 0."""
    total = 0
    for attr in ("parameters", "buffers"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            try:
                total += sum(int(getattr(t, "nbytes", 0)) for t in fn())
            except TypeError:  # a parameters() that is not torch's
                pass
    return total


class ModelManager:
    """Loads each reference at most once while it is held, shares it, evicts by LRU under a byte
    budget. Thread-safe: concurrent runs asking for the same reference wait for one load."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", budget: int = 8 << 30) -> None:
        self.device = device
        self.dtype = dtype
        self.budget = budget
        #: how many times each reference's ``load`` actually ran (a reload after eviction counts)
        self.loads: Counter = Counter()
        self.used = 0
        self._models: OrderedDict[Any, Any] = OrderedDict()  # least recently used first
        self._sizes: dict[Any, int] = {}
        self._pins: dict[str, set] = {}  # run id -> the references that run has used
        self._lock = threading.Lock()
        self._key_locks: dict[Any, threading.Lock] = {}

    def get(self, ref: Any, run_id: str | None = None) -> Any:
        """The live object for ``ref``, loaded on first use. With a ``run_id`` the reference stays
        pinned (never evicted) until ``release(run_id)``: a run must not lose a model it is still
        stepping through, whatever other runs load meanwhile."""
        hit = self._lookup(ref, run_id)
        if hit is not _MISSING:
            return hit
        with self._lock:
            key_lock = self._key_locks.setdefault(ref, threading.Lock())
        # Per-reference lock, not the global one: loading takes seconds and may itself call get()
        # for a base model; other references load meanwhile, the same one waits and shares.
        with key_lock:
            hit = self._lookup(ref, run_id)
            if hit is not _MISSING:
                return hit
            expected = getattr(ref, "expected_bytes", None)
            if callable(expected):
                room = expected() or 0
                with self._lock:  # make room first: the peak is what is resident while it loads
                    self._trim(keep=ref, room=room)
            obj = ref.load(self)
            size = size_of(obj)
            with self._lock:
                self.loads[ref] += 1
                self._models[ref] = obj
                self._sizes[ref] = size
                self.used += size
                self._pin(ref, run_id)
                self._trim(keep=ref)
            return obj

    def _lookup(self, ref: Any, run_id: str | None) -> Any:
        with self._lock:
            if ref not in self._models:
                return _MISSING
            self._models.move_to_end(ref)
            self._pin(ref, run_id)
            return self._models[ref]

    def _pin(self, ref: Any, run_id: str | None) -> None:
        if run_id is not None:
            self._pins.setdefault(run_id, set()).add(ref)

    def _trim(self, keep: Any = _MISSING, room: int = 0) -> None:
        """Evict least recently used models until the budget holds (with ``room`` bytes to spare:
        what a model about to load says it will take). Models pinned by a running run stay even
        over budget: evicting them would only force a reload within the run."""
        if self.used + room <= self.budget:
            return
        pinned = set().union(*self._pins.values()) if self._pins else set()
        for ref in list(self._models):
            if self.used + room <= self.budget:
                break
            if ref in pinned or ref == keep:
                continue
            self._evict(ref)

    def _evict(self, ref: Any) -> None:
        del self._models[ref]
        self.used -= self._sizes.pop(ref)

    def session(self, run_id: str) -> ModelSession:
        """The manager as one run's nodes see it (``ctx.models``)."""
        return ModelSession(self, run_id)

    def release(self, run_id: str) -> None:
        """The run ended: its models become evictable, and memory it held over budget is freed."""
        with self._lock:
            self._pins.pop(run_id, None)
            self._trim()

    def unpin(self, run_id: str, keep: set) -> None:
        """The run will not ask again for any of its models outside ``keep``: they become
        evictable now, and the budget is enforced at once. This is how a run under a budget smaller
        than all its components completes: the text encoders go once the prompts are encoded,
        before the denoiser loads, instead of all of them staying pinned to the end."""
        with self._lock:
            pins = self._pins.get(run_id)
            if not pins:
                return
            pins.intersection_update(keep)
            self._trim()

    def clear(self) -> None:
        """Forget every loaded model (``loads`` keeps counting across clears)."""
        with self._lock:
            self._models.clear()
            self._sizes.clear()
            self.used = 0

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, ref: Any) -> bool:
        return ref in self._models

    def __repr__(self) -> str:
        return f"ModelManager({len(self)} models, {self.used} of {self.budget} bytes, {self.device}/{self.dtype})"


class ModelSession:
    """One run's handle on the manager: every model it fetches stays pinned until the run ends."""

    __slots__ = ("manager", "run_id")

    def __init__(self, manager: ModelManager, run_id: str) -> None:
        self.manager = manager
        self.run_id = run_id

    @property
    def device(self) -> str:
        return self.manager.device

    @property
    def dtype(self) -> str:
        return self.manager.dtype

    def get(self, ref: Any) -> Any:
        if not callable(getattr(ref, "load", None)):
            raise TypeError(f"expected a model reference (an object with load(manager)), got {type(ref).__name__}")
        return self.manager.get(ref, self.run_id)

    def holds_pins(self) -> bool:
        """Has this run pinned any model (else there is nothing to unpin, and no graph to walk)?"""
        return bool(self.manager._pins.get(self.run_id))

    def keep_only(self, live: set) -> None:
        """Unpin this run's models that no node still to run can reach (``ModelManager.unpin``)."""
        self.manager.unpin(self.run_id, live)
