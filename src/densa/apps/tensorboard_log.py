"""TensorBoard scalars of a run, for people who already use it (`densa train --tensorboard`).

write_scalars(run) turns RUN/metrics.jsonl into event files in RUN/tensorboard/: every numeric field of
every epoch becomes a scalar at step = epoch ("loss" -> train/loss, "val_acc" -> val/acc), and the test
numbers of summary.json land at the last epoch. It runs when training ends (metrics.jsonl stays the
record); `tensorboard --logdir runs/` then compares runs. Needs the `tensorboard` extra.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..core.errors import DensaError
from ..core.extras import require


def require_tensorboard() -> None:
    require("tensorboard", "tensorboard", "--tensorboard")


def scalar_name(key: str) -> str:
    """metrics.jsonl field -> TensorBoard tag: loss -> train/loss, val_acc -> val/acc, time -> time."""
    if key in ("loss", "acc"):
        return f"train/{key}"
    split, _, name = key.partition("_")
    return f"{split}/{name}" if name else key


def write_scalars(run) -> Path:
    """Write RUN/tensorboard/ from RUN/metrics.jsonl (and summary.json); replaces an older one."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    run = Path(run)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise DensaError(f"{metrics} is missing; TensorBoard scalars come from a run's metrics.jsonl")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    out = run / "tensorboard"
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=".tensorboard."))
    try:
        with SummaryWriter(log_dir=str(tmp)) as w:
            step = 0
            for i, r in enumerate(records):
                step = int(r.get("epoch", i + 1))
                for k, v in r.items():
                    if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        w.add_scalar(scalar_name(k), v, step)
            for k in ("test_loss", "test_acc"):
                if isinstance(summary.get(k), (int, float)):
                    w.add_scalar(scalar_name(k), summary[k], step)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
