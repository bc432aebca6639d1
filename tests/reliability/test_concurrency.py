"""Two threads calling one pipeline: calls are serialized by a lock (`serialized_call`, pipelines/locking.py), so
each thread gets exactly what a sequential call with the same generator gives, and each call's network-evaluation
count comes back in its own output (no per-call state is read off the shared pipeline)."""

from __future__ import annotations

import copy
import threading
import time

import torch
from conftest import tiny_pipeline
from diffusers import DPMSolverMultistepScheduler


def stateful_pipeline():
    """DPM-Solver++ 2M keeps a history of model outputs between steps: the most fragile scheduler to share."""
    pipe = tiny_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def call(pipe, label, seed, **kw):
    return call_output(pipe, label, seed, **kw).images


def call_output(pipe, label, seed, guidance_scale=2.5, **kw):
    return pipe(label=label, num_inference_steps=6, guidance_scale=guidance_scale, output_type="pt",
                generator=torch.Generator().manual_seed(seed), **kw)  # fmt: skip


def test_two_threads_get_the_sequential_results():
    pipe = stateful_pipeline()
    jobs = [([0, 1], 1), ([2, 2, 0], 2), ([1], 3), ([0, 2], 4)]
    expected = [call(pipe, label, seed) for label, seed in jobs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(indices):
        try:
            start.wait()
            for i in indices:
                label, seed = jobs[i]
                results[i] = call(pipe, label, seed)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(idx,)) for idx in ([0, 2], [1, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, want in enumerate(expected):
        assert torch.equal(results[i], want), f"job {i} differs from its sequential result"


def test_calls_on_one_pipeline_never_overlap():
    """Each call sleeps at every step; without the lock three threads' calls would run side by side."""
    pipe = stateful_pipeline()
    running = {"now": 0, "max": 0}
    guard = threading.Lock()

    def slow_step(p, i, t, tensors):  # called after steps 0..5 of one call
        with guard:
            if i == 0:
                running["now"] += 1
                running["max"] = max(running["max"], running["now"])
        time.sleep(0.01)
        with guard:
            if i == 5:
                running["now"] -= 1
        return tensors

    threads = [
        threading.Thread(target=call, args=(pipe, [0], seed), kwargs={"callback_on_step_end": slow_step})
        for seed in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert running == {"now": 0, "max": 1}, "two calls ran at the same time"


def test_the_lock_does_not_stop_copies_or_reentrant_callbacks():
    pipe = stateful_pipeline()
    clone = copy.deepcopy(pipe)  # the lock lives outside the object: copies (and pickles) still work
    assert torch.equal(call(pipe, [1], 7), call(clone, [1], 7))
    inner = {}

    def nested(p, i, t, tensors):  # a callback may sample with another pipeline (no global lock, no deadlock)
        if i == 0 and not inner:
            inner["images"] = call(clone, [0], 1)
        return tensors

    call(pipe, [0], 1, callback_on_step_end=nested)
    assert inner["images"].shape == (1, 1, 8, 8)


def test_each_thread_gets_its_own_nfe_and_guidance_state():
    """A guided (2 rows per image per step) and an unguided call (1 row) race on one pipeline; each output reports
    its own count, and the guidance state a callback reads is its own call's."""
    pipe = stateful_pipeline()
    start = threading.Barrier(2)
    results: dict[float, list] = {}

    def worker(scale):
        seen = []

        def record(p, i, t, tensors):
            seen.append(p.guidance_scale)
            time.sleep(0.002)  # give the other thread a chance to interleave, were there no lock
            return tensors

        start.wait()
        outs = [call_output(pipe, [0, 1], 3, guidance_scale=scale, callback_on_step_end=record) for _ in range(3)]
        results[scale] = [o.nfe_per_image for o in outs] + [set(seen)]

    threads = [threading.Thread(target=worker, args=(scale,)) for scale in (1.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == {1.0: [6.0, 6.0, 6.0, {1.0}], 3.0: [12.0, 12.0, 12.0, {3.0}]}
    assert not hasattr(pipe, "last_nfe_per_image")
