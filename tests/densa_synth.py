"""Run the real `densa` CLI with the synthetic datasets under a folder registered.

    python tests/densa_synth.py DATA_ROOT train --dataset synth --data-dir DATA_ROOT ...

For tests that need a separate process (signals, torchrun); in-process tests use the fixtures.

A test-only hook lets a test stop the training loop at an exact step instead of guessing with sleeps
(environment variables, read by every rank):
  DENSA_TEST_HOLD_STEP=K  before optimiser step K (0-based, counted over the whole run) the process writes
                          HOLD_DIR/held-RANK and waits until HOLD_DIR/release exists; a SIGINT that arrives
                          while it waits is recorded as HOLD_DIR/sigint-RANK once densa's handler ran.
  DENSA_TEST_HOLD_DIR     that folder.
  DENSA_TEST_STEP_SLEEP=S sleep S seconds before every step: the loop runs as on a machine that much slower.
  DENSA_TEST_KILL_AT_RENAME=N  SIGKILL itself at the Nth atomic rename of a run file, its temp file
                          written: a crash in the middle of saving (each epoch writes metrics.jsonl,
                          model.safetensors, checkpoint.pt in that order).
  DENSA_DIST_DIGESTS      a folder: each data-parallel rank appends "EPOCH SHA256" of its weights to
                          rankR.txt after every epoch, just before the ranks compare their weights.
"""

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import register  # noqa: E402

from densa.cli import main  # noqa: E402

HOLD_DEADLINE = 600  # seconds a held process waits for its test before giving up (a safety net only)


def wait_for_files(proc, *paths: Path, timeout: float = 600) -> None:
    """The test's side of the hold: until every path exists (e.g. HOLD_DIR/held-0) while `proc` lives.

    The deadline is a safety net for a hung child, never part of the logic."""
    end = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{[str(p) for p in paths]} did not all appear within {timeout}s"
        time.sleep(0.01)


def install_hook() -> None:
    import importlib

    loop = importlib.import_module("densa.training.loop")
    hold = os.environ.get("DENSA_TEST_HOLD_STEP")
    folder = Path(os.environ.get("DENSA_TEST_HOLD_DIR", "."))
    pause = float(os.environ.get("DENSA_TEST_STEP_SLEEP", "0"))
    rank = os.environ.get("RANK", "0")
    lr_at = loop.lr_at  # called once before every optimiser step, with the run's global step

    def held(step, total, config):
        if pause:
            time.sleep(pause)
        if hold is not None and step == int(hold):
            densa_handler = signal.getsignal(signal.SIGINT)

            def record(signum, frame):
                if callable(densa_handler):
                    densa_handler(signum, frame)
                (folder / f"sigint-{rank}").touch()

            signal.signal(signal.SIGINT, record)
            (folder / f"held-{rank}").touch()
            end = time.monotonic() + HOLD_DEADLINE
            while not (folder / "release").exists():
                if time.monotonic() > end:
                    raise SystemExit(f"held at step {step} for {HOLD_DEADLINE}s and never released")
                time.sleep(0.01)
        return lr_at(step, total, config)

    loop.lr_at = held

    kill_at = int(os.environ.get("DENSA_TEST_KILL_AT_RENAME", "0"))
    if kill_at:
        replace, calls = os.replace, []

        def killing_replace(src, dst):
            if Path(dst).name in ("metrics.jsonl", "model.safetensors", "checkpoint.pt", "summary.json"):
                calls.append(dst)  # a run's own files, not the dataset cache
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst)

        os.replace = killing_replace

    digests = os.environ.get("DENSA_DIST_DIGESTS")
    if digests:
        record_digests(Path(digests))


def record_digests(folder: Path) -> None:
    """Wrap Group.check_weights: each rank writes its own digest, then the ranks compare theirs."""
    import importlib

    group = importlib.import_module("densa.training.distributed").Group
    check_weights = group.check_weights

    def recording(self, model, epoch):
        h = hashlib.sha256()  # over the parameters in model order
        for p in model.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        with open(folder / f"rank{self.rank}.txt", "a") as fh:
            fh.write(f"{epoch} {h.hexdigest()}\n")
        check_weights(self, model, epoch)

    group.check_weights = recording


if __name__ == "__main__":
    register(Path(sys.argv[1]))
    install_hook()
    sys.exit(main(sys.argv[2:]))
