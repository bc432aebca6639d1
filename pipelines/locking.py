"""The per-pipeline call lock: calls on one pipeline (or on pipelines sharing a scheduler) take turns.

Part of the Hub-loadable pipeline code: imports only the standard library.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_FALLBACK_LOCK = threading.RLock()


def _lock_for(obj: Any) -> threading.RLock:
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(obj)
            if lock is None:
                lock = _LOCKS[obj] = threading.RLock()
            return lock
        except TypeError:  # not hashable or not weak-referenceable: share one lock
            return _FALLBACK_LOCK


def serialized_call(method: Callable) -> Callable:
    """Decorator for a pipeline's `__call__`: calls on one pipeline (or on pipelines sharing a scheduler object) run
    one at a time.

    diffusers schedulers keep per-call state (`set_timesteps`, the step index, multistep history), so two threads
    sampling through the same pipeline at once would corrupt each other's trajectories. With this lock they take
    turns, and each gets exactly what a sequential call with the same generator gives. For parallel sampling use one
    pipeline per thread, each with its own scheduler (e.g. `copy.deepcopy(pipe)`). The locks live in a weak map, not
    on the objects, so pipelines stay copyable and picklable; they are re-entrant, so a callback may call the pipeline.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock_for(self), _lock_for(getattr(self, "scheduler", None) or self):
            return method(self, *args, **kwargs)

    return locked
