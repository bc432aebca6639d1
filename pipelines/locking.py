"""The per-pipeline call lock: calls on one pipeline (or on pipelines sharing a scheduler) take turns.

Part of the Hub-loadable pipeline code: imports only the standard library.
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_FALLBACK_LOCK = threading.RLock()
_ACTIVE = threading.local()  # the number of pipeline calls running in this thread
# a pipeline's per-call state (diffusers' convention: underscored attributes behind the state properties)
CALL_STATE = ("_guidance_scale", "_guidance_rescale", "_classifier_scale", "_num_timesteps", "_interrupt",
              "_cross_attention_kwargs")  # fmt: skip


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
    on the objects, so pipelines stay copyable and picklable. They are re-entrant: a callback may call the pipeline,
    and the nested call's scheduler and call state are put back when it returns, so the outer call goes on as if it
    had not happened.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _lock_for(self), _lock_for(getattr(self, "scheduler", None) or self):
            depth = getattr(_ACTIVE, "depth", 0)
            saved = _call_state(self) if depth else None
            _ACTIVE.depth = depth + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                _ACTIVE.depth = depth
                if saved is not None:
                    _restore_call_state(self, saved)

    return locked


def _call_state(pipe: Any) -> tuple[dict, dict | None]:
    """What a call nested in another (a callback calling the pipeline) would overwrite: the pipeline's call state
    and its scheduler's (timesteps, step index, a multistep solver's history)."""
    scheduler = getattr(pipe, "scheduler", None)
    own = {name: vars(pipe)[name] for name in CALL_STATE if name in vars(pipe)}
    return own, None if scheduler is None else copy.deepcopy(vars(scheduler))


def _restore_call_state(pipe: Any, saved: tuple[dict, dict | None]) -> None:
    own, scheduler_state = saved
    for name in CALL_STATE:
        if name in own:
            setattr(pipe, name, own[name])
        else:
            vars(pipe).pop(name, None)
    if scheduler_state is not None:
        vars(pipe.scheduler).clear()
        vars(pipe.scheduler).update(scheduler_state)
