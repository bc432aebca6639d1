"""Training tasks on the engine: each supplies its flags, modules, data, loss, validation and export.

`TASKS` maps a task name (the `condiff train <name>` subcommand, `scripts/train_<name>.py`) to "module:Class";
a task module is imported only when that task runs, so `--help` stays fast.
"""

TASKS = {
    "cfg": "condiff.tasks.cfg:CFGTask",
    "evaluator": "condiff.tasks.evaluator:EvaluatorTask",
    "unconditional": "condiff.tasks.unconditional:UnconditionalTask",
    "classifier": "condiff.tasks.noisy_classifier:NoiseAwareClassifierTask",
    "vae": "condiff.tasks.vae:VAETask",
    "latent_cfg": "condiff.tasks.latent_cfg:LatentCFGTask",
    "guidance_distillation": "condiff.tasks.distillation:GuidanceDistillationTask",
    "consistency_distillation": "condiff.tasks.distillation:ConsistencyDistillationTask",
    "progressive_distillation": "condiff.tasks.distillation:ProgressiveDistillationTask",
    "distribution_matching": "condiff.tasks.distribution_matching:DistributionMatchingTask",
    "spatial": "condiff.tasks.spatial:SpatialConditionTask",
}
