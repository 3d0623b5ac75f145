"""metrics.jsonl (one JSON object per logged step) and, optionally, TensorBoard, for every training task."""

from __future__ import annotations

import json
from pathlib import Path

from vlm.atomic import atomic_write_text
from vlm.rundir import RunDir


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and, optionally, TensorBoard; written by the main process only."""

    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, start_step: int):
        self.enabled = enabled
        self.path = RunDir(output_dir).metrics
        self.writer = None
        if not enabled:
            return
        if start_step > 0 and self.path.exists():
            self._truncate_after(start_step)  # a resumed run rewrites what came after its checkpoint
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
