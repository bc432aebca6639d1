"""condiff's training engine: one Accelerate loop that every task (`condiff.tasks`) runs on.

It owns the accelerator, data order, per-batch random streams, the loop, clipping, the non-finite policy, EMA,
crash-safe checkpoints and resume, signals, progress and trackers, validation cadence, the summary, the export
under averaged weights, the model card and the Hub push. It never indexes a batch and knows nothing of diffusion.
"""

from condiff.engine.task import Export, Modules, Task

__all__ = ["Export", "Modules", "Task"]
