"""The `densa` command: argparse subcommands over the package's functions.

Defaults come from the config dataclasses, so `--help` always shows the real ones. Bad input ends in
one line on stderr (`densa: error: ...`) and a non-zero exit, never a traceback. torch is imported
only inside the commands that need it, which keeps `densa --help` fast.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import textwrap
from pathlib import Path

from . import __version__
from .config import ModelConfig, TrainConfig, field_names
from .errors import DensaError

MODEL_FIELDS = field_names(ModelConfig)
TRAIN_FIELDS = field_names(TrainConfig)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


# --------------------------------------------------------------------------- value parsers


def _number(kind, test, what):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not test(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    parse.__name__ = what
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
probability = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
fraction = _number(float, lambda v: 0 < v < 1, "a fraction in (0, 1), e.g. 0.1")


def int_list(s: str) -> tuple[int, ...]:
    """'512,256' -> (512, 256); 'none' or '' -> () (a linear classifier)."""
    if s.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 512,256, got {s!r}"
        ) from None
    if any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {s!r}")
    return sizes


def channel_list(s: str) -> tuple[int, ...]:
    sizes = int_list(s)
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected comma-separated conv widths like 32,64, got {s!r}")
    return sizes


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    import torch

    from .config import PRESETS, resolve
    from .run import resume_configs, run_training
    from .train import Interrupted

    if args.threads:
        torch.set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}
    print(f"densa {__version__} · torch {torch.__version__}")
    state = None
    if args.resume:
        from .checkpoint import load_state

        if args.out:
            raise DensaError(f"--resume continues {args.resume} in place; drop --out")
        state = load_state(args.resume)
        model_config, config, preset = resume_configs(Path(args.resume), state, given)
        out = Path(args.resume)
    else:
        preset = given.pop("preset", "seed")
        model_config, config = resolve(preset, **given)
        out = args.out
    assert preset in PRESETS
    try:
        run_training(
            model_config, config, out=out, data_dir=args.data_dir, progress=sys.stdout.isatty(),
            preset=preset, state=state,
        )  # fmt: skip
    except Interrupted as e:
        again = ["densa", "train", "--resume", str(e.out)]
        again += ["--data-dir", args.data_dir] if args.data_dir else []
        again += ["--threads", str(args.threads)] if args.threads else []
        newline = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line
        print(
            f"{newline}densa: {e}; saved {e.out}/checkpoint.pt; resume with: {shlex.join(again)}",
            file=sys.stderr,
        )
        return 130
    return 0


def _load_run(args):
    from .checkpoint import load
    from .data import load_dataset

    ckpt = load(args.run)
    ds = load_dataset(ckpt.dataset, args.data_dir)
    return ckpt, ds


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate

    ckpt, ds = _load_run(args)
    r = evaluate(ckpt.model, ds.test_images, ds.test_labels)
    if args.json:
        print(json.dumps({"run": str(ckpt.path), "dataset": ds.name, "split": "test", **r}))
    else:
        print(f"run: {ckpt.path} ({ckpt.config.model}, {ds.name})")
        print(f"test_loss: {r['loss']:.4f}")
        print(f"test_acc: {r['acc']:.4f} ({r['correct']}/{r['n']})")
    return 0


def cmd_predict(args) -> int:
    from .evaluate import format_prediction, predict_proba

    ckpt, ds = _load_run(args)
    i, n = args.test_index, len(ds.test_images)
    if not 0 <= i < n:
        raise DensaError(
            f"--test-index {i} is out of range: {ds.name}'s test split has {n:,} images (0 to {n - 1})"
        )
    probs = predict_proba(ckpt.model, ds.test_images[i : i + 1])[0]
    label = int(ds.test_labels[i])
    if args.json:
        k = int(probs.argmax())
        print(
            json.dumps(
                {
                    "index": i,
                    "predicted": k,
                    "predicted_class": ds.classes[k],
                    "probability": float(probs[k]),
                    "label": label,
                    "label_class": ds.classes[label],
                    "probabilities": {c: float(p) for c, p in zip(ds.classes, probs)},
                }
            )
        )
    else:
        print(format_prediction(probs, i, label, ds.classes))
    return 0


def cmd_data(args) -> int:
    from .data import DATASETS, cache_dir, download, get_spec, load_file, locate, search_dirs

    names = list(DATASETS) if args.dataset == "all" else [get_spec(args.dataset).name]
    dirs = search_dirs(args.data_dir)
    failed = 0
    for name in names:
        spec = DATASETS[name]
        print(f"{name}: {len(spec.classes)} classes ({', '.join(spec.classes)})")
        for key, f in spec.files.items():
            found = locate(spec, f, dirs)
            where = f"{found[0]}: {found[1]}" if found else "missing"
            if args.action == "info":
                memo = cache_dir() / name / f.name
                extra = (
                    f" (decompressed copy in {memo})"
                    if found and found[1].suffix == ".gz" and memo.is_file()
                    else ""
                )
                hint = f" (would download from {spec.mirrors[0]})" if not found else ""
                print(f"  {f.name:<26} {where}{extra}{hint}")
                continue
            try:
                if args.action == "download" and found is None:
                    path = download(spec, f)
                    where = f"downloaded: {path}"
                load_file(spec, key, args.data_dir, allow_download=False)
                print(f"  {f.name:<26} ok  {(f.checksum or f.gz_checksum)[:19]}…  {where}")
            except DensaError as e:
                failed += 1
                print(f"  {f.name:<26} FAILED  {e}")
    if failed:
        raise DensaError(
            f"{failed} file(s) missing or bad (see above); `densa data download` fetches missing files"
        )
    return 0


# --------------------------------------------------------------------------- the parser


SETTINGS = ("preset", *MODEL_FIELDS, *TRAIN_FIELDS)  # argparse dests that only exist when given


def presets_help() -> str:
    from .config import PRESET_DATASET_TWEAKS, PRESETS

    def show(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)

    lines = ["presets (--preset NAME; explicit flags override the preset's values):"]
    lines.append("  seed  the tutorial's recipe: the defaults shown below")
    for name, values in PRESETS.items():
        if values:
            text = " ".join(f"{k}={show(v)}" for k, v in values.items())
            for (preset, dataset), tweaks in PRESET_DATASET_TWEAKS.items():
                if preset == name:
                    text += f"; on {dataset}: " + " ".join(f"{k}={show(v)}" for k, v in tweaks.items())
            lines += textwrap.wrap(text, 96, initial_indent=f"  {name:<5} ", subsequent_indent=" " * 8)
    return "\n".join(lines)


def settings_adder(p, mdef, tdef):
    """A config field's flag: absent unless given (so a preset can fill it); help shows the default."""

    def add(flag, default=None, help="", **kw):
        dest = flag[2:].replace("-", "_")
        if default is None:
            value = getattr(mdef, dest) if dest in MODEL_FIELDS else getattr(tdef, dest)
            default = ",".join(map(str, value)) if isinstance(value, tuple) else value
        p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"{help} (default: {default})", **kw)

    return add


def build_parser() -> Parser:
    from .config import ACTIVATIONS, DEVICES, MODELS, OPTIMIZERS, PRECISIONS, PRESETS, SCHEDULES

    mdef, tdef = ModelConfig(), TrainConfig()
    parser = Parser(
        prog="densa", description="Train, understand and use dense neural networks on MNIST-family data."
    )
    parser.add_argument("--version", action="version", version=f"densa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def data_dir_arg(p):
        p.add_argument(
            "--data-dir",
            metavar="DIR",
            help="folder holding <dataset>/ subfolders (else $DENSA_DATA_DIR, "
            "the user cache, /usr/share/datasets, then download)",
        )

    p = sub.add_parser(
        "train",
        help="train a model and write a run folder",
        formatter_class=HelpFormatter,
        description="Train a network; with no flags, the seed tutorial's recipe (784-512-10 MLP, "
        "Adam 1e-3, batch 128, 5 epochs).\n\n" + presets_help(),
    )
    setting = settings_adder(p, mdef, tdef)
    setting("--preset", choices=list(PRESETS), default="seed", help="named set of defaults (see above)")
    setting("--dataset", help="dataset name")
    data_dir_arg(p)
    setting("--model", choices=list(MODELS), help="architecture")
    setting(
        "--hidden",
        type=int_list,
        metavar="W[,W...]",
        help="hidden layer widths, e.g. 512,256 ('none' for a linear model; cnn: the head after the convs)",
    )
    setting("--channels", type=channel_list, metavar="C[,C...]", help="cnn: conv widths, one block each")
    setting("--activation", choices=list(ACTIVATIONS), help="hidden activation")
    setting("--dropout", type=probability, metavar="P", help="dropout after each dense hidden layer")
    setting("--epochs", type=positive_int, help="passes over the training set")
    setting("--batch-size", type=positive_int, help="images per step")
    setting("--lr", type=positive_float, help="(peak) learning rate")
    setting("--optimizer", choices=list(OPTIMIZERS), help="optimiser")
    setting("--momentum", type=nonneg_float, metavar="M", help="sgd momentum")
    setting("--nesterov", action=argparse.BooleanOptionalAction, help="sgd: Nesterov momentum")
    setting(
        "--weight-decay",
        type=nonneg_float,
        metavar="W",
        help="L2 (adam, sgd) or decoupled (adamw) weight decay",
    )
    setting("--schedule", choices=list(SCHEDULES), help="LR schedule after the warm-up")
    setting("--warmup", type=probability, metavar="F", help="fraction of all steps spent ramping the LR up")
    setting("--label-smoothing", type=probability, metavar="E", help="label smoothing of the cross-entropy")
    setting("--shift", type=nonneg_int, metavar="PX", help="augment: random shifts of up to +-PX pixels")
    setting("--flip", action=argparse.BooleanOptionalAction, help="augment: random left-right mirroring")
    setting("--val-split", type=fraction, metavar="F", help="hold out this fraction of train for validation")
    setting("--early-stop", type=nonneg_int, metavar="N", help="stop after N epochs without a lower val loss")
    setting("--precision", choices=list(PRECISIONS), help="fp32, bf16 autocast, or bf16 only where fast")
    setting("--device", choices=list(DEVICES), help="where to train")
    setting("--seed", type=nonneg_int, help="seed for weight init, shuffling, augmentation, val split")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument(
        "--out", metavar="DIR", default=None, help="run folder (default: runs/<dataset>-<model>-<time>)"
    )
    p.add_argument(
        "--resume", metavar="RUN", default=None, help="continue an interrupted run from its checkpoint.pt"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate", help="test loss and accuracy of a trained model", formatter_class=HelpFormatter
    )
    p.add_argument("run", metavar="RUN", help="run folder or .safetensors file")
    p.add_argument("--json", action="store_true", help="print JSON")
    data_dir_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="the tutorial's quick look at one test image", formatter_class=HelpFormatter
    )
    p.add_argument("run", metavar="RUN", help="run folder or .safetensors file")
    p.add_argument(
        "--test-index", type=nonneg_int, required=True, metavar="I", help="index into the test split"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    data_dir_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "data", help="where dataset files are, verify them, download them", formatter_class=HelpFormatter
    )
    p.add_argument("action", choices=["info", "verify", "download"])
    p.add_argument("--dataset", default="mnist", help="dataset name, or 'all'")
    data_dir_arg(p)
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DensaError as e:
        message = " ".join(str(e).split())  # always one line
    except OSError as e:
        message = f"{e.filename}: {e.strerror}" if e.filename else " ".join(str(e).split())
    except KeyboardInterrupt:
        message = "interrupted"
        print(f"\ndensa: {message}", file=sys.stderr)
        return 130
    print(f"densa: error: {message}", file=sys.stderr)
    return 1
