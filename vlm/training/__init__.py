"""The one training loop and what every trainer shares (issue 13, item 3).

A trainer is a `Task` (its model, data, step, validation and checkpoint format) run by `Loop`, which owns the run
folder, step plan, sampler, cadence of logging/validation/checkpoints, stop and time limit, interrupt-save and exact
resume. `vlm.train` (contrastive) and `vlm.segment.train` (segmentation decoder) are the two tasks so far.

    from vlm.training import Loop, Task
    result = Loop(MyTask(cfg), progress=False).run()     # cfg: a dataclass extending vlm.config.RunConfig

Modules: `loop` (Loop, Task, TrainResult, StopRequested), `schedule` (lr_at, param_groups, adamw, scheduler),
`sampler` (StepSampler), `state` (rng_state, restore_rng, config_differences, keys_digest), `metrics` (MetricsLog).
Checkpoint listing and pruning: `vlm.checkpoint` (list_step_checkpoints / latest / prune, with the task's
`is_checkpoint`); the run folder's layout: `vlm.rundir`.
"""

from vlm.training.loop import RESUME_FREE_FIELDS, Loop, StopRequested, Task, TrainResult
from vlm.training.metrics import MetricsLog
from vlm.training.sampler import StepSampler
from vlm.training.schedule import adamw, lr_at, param_groups, scheduler
from vlm.training.state import config_differences, keys_digest, restore_rng, rng_state

__all__ = [
    "RESUME_FREE_FIELDS", "Loop", "MetricsLog", "StepSampler", "StopRequested", "Task", "TrainResult", "adamw",
    "config_differences", "keys_digest", "lr_at", "param_groups", "restore_rng", "rng_state", "scheduler",
]  # fmt: skip
