"""Live denoising without Gradio: a pipeline call on a worker thread whose step previews are handed to a generator
as they come (the latest one; a slow page skips steps, never falls behind), stopped through the pipeline's
`interrupt`, and the stop buttons' registry of running calls by browser session."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from condiff.demo.previews import StepRecorder, to_pil_images


@dataclass
class Preview:
    """The denoised estimate of one finished step (`images`: PIL, at most the run's `max_images`)."""

    step: int  # 1-based: steps finished
    num_steps: int
    images: list


@dataclass
class Outcome:
    """A finished call: its images, every step's previews, its cost and whether Stop cut it short."""

    images: list
    frames: list[list]
    nfe_per_image: float
    seconds: float
    steps_done: int
    num_steps: int
    stopped: bool

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


class LiveRun:
    """`call(recorder)` (a pipeline call that passes `recorder.call_kwargs()` and returns the pipeline's output with
    "pt" images) on a worker thread; `events()` yields `Preview`s while it runs, then its `Outcome`."""

    def __init__(self, call: Callable[[StepRecorder], Any], max_images: int | None = None):
        self.recorder = StepRecorder(self._on_step, max_images)
        self._call = call
        self._changed = threading.Condition()
        self._latest: Preview | None = None
        self._done = False
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="condiff-demo-run", daemon=True)

    def _on_step(self, step: int, num_steps: int, images: list) -> None:
        with self._changed:
            self._latest = Preview(step + 1, num_steps, images)
            self._changed.notify_all()

    def _work(self) -> None:
        start = time.perf_counter()
        try:
            output = self._call(self.recorder)
            seconds = time.perf_counter() - start
            frames, num_steps = self.recorder.frames, self.recorder.num_steps
            stopped = len(frames) < num_steps
            images = to_pil_images(output.images * 2 - 1)
            self._outcome = Outcome(images, frames, output.nfe_per_image, seconds, len(frames), num_steps, stopped)
        except BaseException as error:  # handed to the generator, which raises it where the page can show it
            self._error = error
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    def events(self) -> Iterator[Preview | Outcome]:
        """Start the call; yield the newest `Preview` whenever one is waiting, then the `Outcome` (or raise the
        call's error). Closing the iterator early stops the call and waits for it."""
        self._thread.start()
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._latest is not None or self._done)
                    preview, self._latest, done = self._latest, None, self._done
                if preview is not None:
                    yield preview
                elif done:
                    break
        finally:
            self.stop()
            self._thread.join()
        if self._error is not None:
            raise self._error
        yield self._outcome

    def stop(self) -> None:
        """Interrupt the call after its current step (the pipeline's `interrupt`)."""
        self.recorder.stop.set()


class Stops:
    """The running calls of each browser session, so that a Stop click interrupts that session's calls only."""

    def __init__(self):
        self._runs: dict[str, set[LiveRun]] = defaultdict(set)
        self._lock = threading.Lock()

    @contextmanager
    def registered(self, session: str | None, run: LiveRun) -> Iterator[LiveRun]:
        with self._lock:
            self._runs[session or ""].add(run)
        try:
            yield run
        finally:
            with self._lock:
                self._runs[session or ""].discard(run)

    def stop(self, session: str | None) -> int:
        """Stop the session's running calls; returns how many there were."""
        with self._lock:
            runs = list(self._runs.get(session or "", ()))
        for run in runs:
            run.stop()
        return len(runs)


def user_message(error: BaseException) -> str:
    """One line for the page: a ValueError's or TypeError's own words (the pipelines' argument checks), else the
    error's type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (ValueError, TypeError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
