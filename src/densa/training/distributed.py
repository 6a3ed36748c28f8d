"""Data-parallel training with torch.distributed: K processes train one model on one global batch.

`torchrun --standalone --nproc-per-node=K -m densa train ...` (or `densa train --nproc K`, which launches
the same through torch.distributed.run) starts K copies of `densa train`. Each joins the process group
(gloo on CPU, nccl on CUDA), takes its own slice of every global batch of the shared seeded permutation
and trains a DistributedDataParallel replica. Gradients are averaged over all images of the global batch,
so the replicas stay identical and follow the steps of one process with the same --batch-size. Only
rank 0 prints and writes the run folder; evaluation is sharded and summed, so every image counts once.
One process is a LocalGroup, a group of one whose collectives are identities: the loop has one path.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

from ..core.errors import DensaError

TIMEOUT_ENV = "DENSA_DIST_TIMEOUT"  # seconds a rank waits for the others at any collective (default 300)


def launched() -> bool:
    """True in a process that torchrun (or densa train --nproc) started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int, device: str) -> None:
    """--nproc may not exceed the GPUs (nccl: one each) or the CPU cores (gloo) of this machine."""
    import torch

    if device == "cuda":
        have, what = torch.cuda.device_count(), "GPUs"
    elif device == "cpu":
        have, what = usable_cpus(), "CPU cores"
    else:
        raise DensaError(f"data-parallel training runs on cpu (gloo) or cuda (nccl), not {device}")
    if nproc > have:
        raise DensaError(
            f"--nproc {nproc} is more than this machine's {have} {what}; use --nproc {have} or fewer "
            f"(for more, start `torchrun --nnodes N ...` on several machines)"
        )


def launch(nproc: int, argv: list[str]) -> int:
    """Run this command again as `nproc` ranks under torch.distributed.run (torchrun --standalone)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The same program again: the running script when its command line holds these arguments (this is
    # how tests/densa_synth.py keeps its datasets), else the installed package. Without --nproc: the
    # ranks learn their number from torchrun, whose own parser would take it for --nproc-per-node.
    script, head = sys.argv[0], sys.argv[1 : len(sys.argv) - len(argv)]
    same = sys.argv[1 + len(head) :] == argv and os.path.isfile(script) and not script.endswith("__main__.py")
    rest = [
        a for a, b in zip(argv, [None, *argv]) if "--nproc" not in (a, b) and not a.startswith("--nproc=")
    ]
    program = [script, *head, *rest] if same else ["-m", "densa", *rest]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))  # each rank sets its own
    for name in list(logging.root.manager.loggerDict):  # torchrun's own reports: densa says it in one line
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", *program])
    try:
        run(args)
    except SignalException:  # Ctrl-C: torchrun passed it on to the ranks, which saved and said how to resume
        return 130
    except ChildFailedError as e:
        failed = sorted(e.failures.items())
        codes = ", ".join(f"rank {r}: exit code {f.exitcode}" for r, f in failed)
        raise DensaError(
            f"{len(failed)} of {nproc} training processes failed ({codes}); see their errors above"
        ) from None
    return 0


def error_of(fn, *args) -> DensaError | None:
    """The DensaError `fn(*args)` raises, or None (to share with Group.check)."""
    try:
        fn(*args)
    except DensaError as e:
        return e
    return None


class LocalGroup:
    """One process as a group of one: the same calls as Group, and each collective is the identity."""

    rank, world, backend = 0, 1, None

    def check(self, error: DensaError | None) -> None:
        if error is not None:
            raise error

    def broadcast(self, obj):
        return obj

    def any(self, flag: bool) -> bool:
        return flag

    def agreed(self, stop):
        return stop

    def wrap(self, model, seed: int, step: int):
        return model

    def part(self, t):
        return t

    def scale(self, loss, n_part: int, n_batch: int):
        return loss

    def sum(self, *values):
        return values

    def evaluate(self, model, images, labels) -> dict:
        from ..core.evaluate import evaluate

        return evaluate(model, images, labels)

    def broadcast_weights(self, model) -> None:
        pass

    def check_weights(self, model, epoch: int) -> None:
        pass


@dataclass
class Group:
    """This process's place in the process group, and the collectives densa's loop needs."""

    rank: int
    world: int
    local_rank: int
    backend: str
    device: object  # torch.device the collectives run on
    local_stop: object = None  # this rank's stop() (Ctrl-C seen here), asked at each step's any()
    stopping: bool = False  # whether any rank's stop() was true at the last step

    # ------------------------------------------------------------------ agreement between ranks

    def agree(self, settings: dict) -> None:
        """Every rank must have been started with rank 0's settings; else all ranks raise the same error."""
        import torch.distributed as dist

        everyone = [None] * self.world
        dist.all_gather_object(everyone, settings)
        first = everyone[0]
        for r, theirs in enumerate(everyone[1:], 1):
            diff = sorted(k for k in set(first) | set(theirs) if first.get(k) != theirs.get(k))
            if diff:
                k = diff[0]
                raise DensaError(
                    f"rank {r} was started with {k}={theirs.get(k)!r} but rank 0 with {k}={first.get(k)!r}: "
                    f"start every rank with the same `densa train` arguments"
                )

    def check(self, error: DensaError | None) -> None:
        """Raise on every rank when any rank has an error (the lowest rank's; other ranks name it)."""
        import torch.distributed as dist

        errors = [None] * self.world
        dist.all_gather_object(errors, None if error is None else str(error))
        for r, message in enumerate(errors):
            if message and r == self.rank:
                raise error
            if message:
                raise DensaError(f"(rank {r}) {message}")

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank: the loop asks this once per step.

        The same tiny all_reduce carries each rank's stop() (see `agreed`), so a step costs one
        collective besides DDP's gradient all_reduce.
        """
        import torch
        import torch.distributed as dist

        stop = bool(self.local_stop and self.local_stop())
        t = torch.tensor([int(flag), int(stop)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        self.stopping = bool(t[1])
        return bool(t[0])

    def agreed(self, stop):
        """A stop() that turns true on every rank at the same step once it is true on one (Ctrl-C)."""
        self.local_stop, self.stopping = stop, False
        return lambda: self.stopping

    # ------------------------------------------------------------------ training

    def wrap(self, model, seed: int, step: int):
        """The DDP replica of `model` (rank 0's weights); ranks > 0 get their own dropout stream."""
        import torch
        from torch.nn.parallel import DistributedDataParallel

        if self.rank:  # else every rank would draw the same dropout masks for its own images
            torch.manual_seed((seed * 1_000_003 + self.rank) * 1_000_003 + step)
        ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=ids)

    def part(self, t):
        """This rank's contiguous slice of a global batch (the slices of all ranks partition it)."""
        return t.tensor_split(self.world)[self.rank]

    def scale(self, loss, n_part: int, n_batch: int):
        """DDP averages gradients over ranks; this makes that the mean over the global batch's images."""
        return loss * (n_part * self.world / n_batch)

    def sum(self, *values):
        """Sums over all ranks of scalar tensors (returned in their own dtypes)."""
        import torch
        import torch.distributed as dist

        t = torch.stack([v.to(self.device, torch.float64) for v in values])
        dist.all_reduce(t)
        return tuple(s.to(v.dtype) for s, v in zip(t, values))

    def sync_buffers(self, model) -> None:
        """Rank 0's buffers (BatchNorm running stats) everywhere: each rank updated its own in training."""
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, src=0)

    def broadcast_weights(self, model) -> None:
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, src=0)

    def evaluate(self, model, images, labels) -> dict:
        """densa.evaluate over all images: each rank scores its shard, the parts are all-reduced."""
        import torch
        import torch.distributed as dist

        from ..core.evaluate import evaluate_parts, summarize

        self.sync_buffers(model)
        parts = evaluate_parts(model, self.part(images), self.part(labels))
        t = torch.tensor(
            [parts["loss_sum"], parts["correct"], parts["n"]], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(t)
        loss_sum, correct, n = t.tolist()
        return summarize({"loss_sum": loss_sum, "correct": correct, "n": n})

    def check_weights(self, model, epoch: int) -> None:
        """The replicas must hold identical weights after every epoch; compared by sha256 on all ranks."""
        import torch.distributed as dist

        h = hashlib.sha256()
        for p in model.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        digests = [None] * self.world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            shown = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
            raise DensaError(
                f"after epoch {epoch} the ranks' weights differ ({shown}); this is a bug in densa"
            )

    def barrier(self) -> None:
        """Wait until every rank is here (the run ends together: no rank leaves while rank 0 writes)."""
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str, threads: int | None = None) -> Group:
    """Join the process group torchrun described in the environment; `device` is 'cpu' or 'cuda'."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    check_nproc(local_world, device)
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        backend, where = "nccl", torch.device("cuda", local_rank)
    else:
        backend, where = "gloo", torch.device("cpu")
    torch.set_num_threads(threads or max(1, usable_cpus() // local_world))  # the cores, split between ranks
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "300")))
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as e:  # no MASTER_ADDR, or rank 0 never came up
        why = " ".join(str(e).split())[:160]
        raise DensaError(
            f"rank {rank} could not join the other {world - 1} ranks ({why}); start it with torchrun"
        ) from None
    return Group(rank, world, local_rank, backend, where)
