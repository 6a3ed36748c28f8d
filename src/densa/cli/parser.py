"""The `densa` command line: argparse subcommands, their flags and defaults, and main().

Defaults come from the config dataclasses, so `--help` always shows the real ones; what each command
does is in commands.py. Bad input ends in one line on stderr (`densa: error: ...`) and a non-zero exit,
never a traceback. torch is imported only inside the commands that need it, so `densa --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from .._version import __version__
from ..core.config import (
    FRACTION,
    MODEL_RULES,
    NONNEG,
    NONNEG_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    TRAIN_RULES,
    ModelConfig,
    Rule,
    SweepConfig,
    TrainConfig,
    field_names,
)
from ..core.errors import DensaError
from . import commands

MODEL_FIELDS = field_names(ModelConfig)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line, and each flag's value checked by its rule after parsing.

    Types only parse (int, float, comma lists); what a value may be is a config Rule (core.config), the
    same one the dataclasses apply when they are built, so a bad flag is refused before anything runs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rules: dict[str, tuple[str, Rule, str]] = {}  # dest -> (flag, rule, complaint)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def check(self, flag: str, rule: Rule, complaint: str = "expected {what}, got {got!r}") -> None:
        """After parsing, the value of `flag` (when given) must pass `rule`; else `complaint` is the error."""
        self.rules[flag[2:].replace("-", "_")] = (flag, rule, complaint)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for dest, (flag, rule, complaint) in self.rules.items():
            value = getattr(namespace, dest, None)
            if value is not None and not rule.test(value):
                self.error(f"argument {flag}: " + complaint.format(what=rule.what, got=as_typed(value)))
        return namespace, extras


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's `(default: X)` after each option, unless its help names the default or it has none."""

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- value parsers (syntax only)


def parses(kind, what: str):
    """A type= function: `kind(s)` (int or float), or a usage error saying `what` the flag takes."""

    def parse(s: str):
        try:
            return kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None

    parse.__name__ = what
    return parse


def as_typed(value) -> str:
    """A parsed value as it would be typed: 1.0 -> '1', (512, 256) -> '512,256'."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def int_list(s: str) -> tuple[int, ...]:
    """'512,256' -> (512, 256); 'none' or '' -> () (a linear classifier)."""
    if s.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths like 512,256, got {s!r}"
        ) from None


def channel_list(s: str) -> tuple[int, ...]:
    """'32,64' -> (32, 64); there is no 'none' for conv widths."""
    try:
        return tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated conv widths like 32,64, got {s!r}"
        ) from None


# what the flags that are not config fields may be (config fields: the config's own rules)
FLAG_TYPES = {
    rule: parses(kind, rule.what)
    for rule, kind in ((POSITIVE_INT, int), (NONNEG_INT, int), (POSITIVE, float), (NONNEG, float))
    + ((PROBABILITY, float), (FRACTION, float))
}


def number_arg(p: Parser, flag: str, rule: Rule, **kw) -> None:
    """An int or float flag whose value must pass `rule` (checked after parsing)."""
    p.add_argument(flag, type=FLAG_TYPES[rule], **kw)
    p.check(flag, rule)


# --------------------------------------------------------------------------- the parser


def presets_help() -> str:
    from ..core.config import PRESET_DATASET_TWEAKS, PRESETS

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


def settings_adder(p: Parser):
    """A config field's flag: absent unless given (so a preset can fill it); help shows the default.

    Its value is checked by the field's rule in MODEL_RULES / TRAIN_RULES (or `rule`, where the CLI
    asks for more, as --val-split does: 0 would mean no split)."""
    mdef, tdef = ModelConfig(), TrainConfig()

    def add(flag, default=None, help="", rule=None, complaint=None, **kw):
        dest = flag[2:].replace("-", "_")
        if default is None:
            value = getattr(mdef, dest) if dest in MODEL_FIELDS else getattr(tdef, dest)
            default = ",".join(map(str, value)) if isinstance(value, tuple) else value
        rule = rule or MODEL_RULES.get(dest) or TRAIN_RULES.get(dest)
        if rule in FLAG_TYPES and "type" not in kw:
            kw["type"] = FLAG_TYPES[rule]
        p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"{help} (default: {default})", **kw)
        if rule is not None and "choices" not in kw and kw.get("action") is None:
            p.check(flag, rule, *([complaint] if complaint else []))

    return add


def data_dir_arg(p: Parser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding <dataset>/ subfolders (else $DENSA_DATA_DIR, "
        "the user cache, /usr/share/datasets, then download)",
    )


def split_args(p: Parser) -> None:
    p.add_argument(
        "--dataset",
        default=None,
        help="evaluate on this dataset (default: the one the model was trained on); "
        "it must have as many classes as the model",
    )
    p.add_argument("--split", choices=["test", "train"], default="test", help="which split")


def threads_arg(p: Parser, default=None, help="CPU threads (default: torch's choice)", **kw) -> None:
    number_arg(p, "--threads", POSITIVE_INT, default=default, help=help, **kw)


def add_train(sub) -> None:
    from ..core.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train a model and write a run folder",
        formatter_class=HelpFormatter,
        description="Train a network; with no flags, the seed tutorial's recipe (784-512-10 MLP, "
        "Adam 1e-3, batch 128, 5 epochs).\n\n" + presets_help(),
    )
    setting = settings_adder(p)
    setting("--preset", choices=list(PRESETS), default="seed", help="named set of defaults (see above)")
    setting("--dataset", help="dataset name")
    data_dir_arg(p)
    model_settings(setting)
    train_settings(setting)
    train_job_args(p)
    p.set_defaults(func=commands.cmd_train)


def model_settings(setting) -> None:
    from ..core.config import ACTIVATIONS, MODELS

    setting("--model", choices=list(MODELS), help="architecture")
    setting(
        "--hidden",
        type=int_list,
        metavar="W[,W...]",
        help="hidden layer widths, e.g. 512,256 ('none' for a linear model; cnn: the head after the convs)",
        complaint="layer widths must be positive (expected {what}), got {got!r}",
    )
    setting(
        "--channels",
        type=channel_list,
        metavar="C[,C...]",
        help="cnn: conv widths, one block each",
        complaint="conv widths must be positive (expected {what}), got {got!r}",
    )
    setting("--activation", choices=list(ACTIVATIONS), help="hidden activation")
    setting("--dropout", metavar="P", help="dropout after each dense hidden layer")


def train_settings(setting) -> None:
    from ..core.config import DEVICES, OPTIMIZERS, PRECISIONS, SCHEDULES

    setting("--epochs", help="passes over the training set")
    setting("--batch-size", help="images per step")
    setting("--lr", help="(peak) learning rate")
    setting("--optimizer", choices=list(OPTIMIZERS), help="optimiser")
    setting("--momentum", metavar="M", help="sgd momentum")
    setting("--nesterov", action=argparse.BooleanOptionalAction, help="sgd: Nesterov momentum")
    setting("--weight-decay", metavar="W", help="L2 (adam, sgd) or decoupled (adamw) weight decay")
    setting("--schedule", choices=list(SCHEDULES), help="LR schedule after the warm-up")
    setting("--warmup", metavar="F", help="fraction of all steps spent ramping the LR up")
    setting("--label-smoothing", metavar="E", help="label smoothing of the cross-entropy")
    setting("--shift", metavar="PX", help="augment: random shifts of up to +-PX pixels")
    setting("--flip", action=argparse.BooleanOptionalAction, help="augment: random left-right mirroring")
    degrees, number = parses(float, "degrees"), parses(float, "a number")
    setting("--rotate", type=degrees, metavar="DEG", help="augment: random rotations of up to +-DEG degrees")
    setting("--scale", type=number, metavar="F", help="augment: random zooms by a factor in [1-F, 1+F]")
    setting("--val-split", rule=FRACTION, metavar="F", help="hold out this fraction of train for validation")
    setting("--early-stop", metavar="N", help="stop after N epochs without a lower val loss")
    setting("--precision", choices=list(PRECISIONS), help="fp32, bf16 autocast, or bf16 only where fast")
    setting("--device", choices=list(DEVICES), help="where to train")
    setting("--seed", help="seed for weight init, shuffling, augmentation, val split")


def train_job_args(p: Parser) -> None:
    """`densa train`'s flags that are not config fields: threads, the run folder, extras, processes."""
    threads_arg(p)
    p.add_argument(
        "--out", metavar="DIR", default=None, help="run folder (default: runs/<dataset>-<model>-<time>)"
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="write the HTML report to RUN/report/ at the end (extra: report)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="write the per-epoch scalars to RUN/tensorboard/ at the end (extra: tensorboard)",
    )
    p.add_argument(
        "--resume", metavar="RUN", default=None, help="continue an interrupted run from its checkpoint.pt"
    )
    number_arg(
        p, "--nproc", POSITIVE_INT, default=None, metavar="K",
        help="train data-parallel in K processes on this machine, as `torchrun --standalone "
        "--nproc-per-node=K -m densa train ...` would (gloo on CPU, nccl on CUDA; --batch-size is the "
        "global batch, split between them) (default: 1)",
    )  # fmt: skip


def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="search hyper-parameters with Optuna (many workers may share one study)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run trials of an Optuna study: each trains on the training set minus a seeded val "
        "split\nand is scored by its val accuracy (never the test set); weak trials are pruned after any "
        "epoch.\nThe study lives in an SQLite file in the sweep folder, or in the database given with "
        "--storage,\nwhich workers on many machines can share. Needs: pip install 'densa[sweep]'.",
    )
    number_arg(p, "--trials", POSITIVE_INT, metavar="N", help="trials this worker runs (each its own N)")
    number_arg(p, "--timeout", POSITIVE, metavar="S", help="start no new trial after S seconds")
    p.add_argument("--study", metavar="NAME", help="study name (default: <dataset>-<model>)")
    p.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL of the study's database, e.g. "
        "postgresql://USER:PASSWORD@HOST/DB (default: sqlite:///<out>/study.db)",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="DIR", help="sweep folder, for the default storage (default: sweeps/<study>)"
    )
    sweep_study_args(p)
    threads_arg(p, metavar="N")
    data_dir_arg(p)
    p.add_argument(
        "--show", action="store_true", help="print the leaderboard and the best trial's command (only reads)"
    )
    number_arg(p, "--top", POSITIVE_INT, default=10, metavar="N", help="--show: trials listed (default: 10)")
    p.set_defaults(func=commands.cmd_sweep)


def sweep_study_args(p: Parser) -> None:
    """The SweepConfig fields: fixed for the whole study."""
    from ..core.config import MODELS, PRECISIONS, PRUNERS

    sdef = SweepConfig()
    fixed = "{} (the same for the whole study; default: {})".format
    p.add_argument("--dataset", default=argparse.SUPPRESS, help=fixed("dataset name", sdef.dataset))
    p.add_argument(
        "--model", choices=list(MODELS), default=argparse.SUPPRESS,
        help=fixed("search space and base preset", sdef.model),
    )  # fmt: skip
    number_arg(
        p, "--epochs", POSITIVE_INT, metavar="E", default=argparse.SUPPRESS,
        help=fixed("epochs per trial", "the preset's"),
    )  # fmt: skip
    number_arg(
        p, "--val-split", FRACTION, metavar="F", default=argparse.SUPPRESS,
        help=fixed("held-out fraction of train whose accuracy is maximised", sdef.val_split),
    )  # fmt: skip
    number_arg(
        p, "--seed", NONNEG_INT, default=argparse.SUPPRESS, help=fixed("every trial's seed", sdef.seed)
    )
    p.add_argument(
        "--precision", choices=list(PRECISIONS), default=argparse.SUPPRESS,
        help=fixed("precision", sdef.precision),
    )  # fmt: skip
    p.add_argument(
        "--pruner", choices=list(PRUNERS), default=sdef.pruner,
        help=f"stops weak trials after an epoch (default: {sdef.pruner})",
    )  # fmt: skip
    number_arg(
        p, "--startup-trials", NONNEG_INT, metavar="N", default=sdef.startup_trials,
        help=f"median: complete trials before any is pruned (default: {sdef.startup_trials})",
    )  # fmt: skip
    number_arg(
        p, "--heartbeat", POSITIVE_INT, metavar="S", default=argparse.SUPPRESS,
        help="seconds between a running trial's heartbeats; a trial silent for twice this is marked FAIL "
        "by the next worker (fixed when the study is created: a worker given another value is refused; "
        f"default: {sdef.heartbeat})",
    )  # fmt: skip


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="loss, accuracy, per-class metrics and confusion matrix of a trained model",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder, .safetensors or exported .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON")
    split_args(p)
    data_dir_arg(p)
    p.set_defaults(func=commands.cmd_evaluate)


def add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="figures and a self-contained HTML report of a run (extra: report)",
        formatter_class=HelpFormatter,
        description="Write PNG figures and index.html (images embedded, opens offline): config, "
        "training curves, confusion matrix, most confident mistakes, examples per class, first-layer "
        "weights, reliability diagram.",
    )
    p.add_argument("run", metavar="RUN", help="run folder or .safetensors file")
    p.add_argument("--out", metavar="DIR", default=None, help="report folder (default: RUN/report/)")
    split_args(p)
    data_dir_arg(p)
    p.set_defaults(func=commands.cmd_report)


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files (or look at one test image)",
        formatter_class=HelpFormatter,
        description="Classify your own images: each is prepared the way the model's dataset was made "
        "(see `densa.inference.images`), then classified. A folder predicts every image in it. With "
        "--test-index, the tutorial's quick look at one test image instead. Each answer carries a "
        "decision: the class, or 'not sure' / 'not a digit' when the image is unlike the training digits "
        "(the detector `densa train` stores in the model; see docs/abstain.md).",
    )
    p.add_argument("run", metavar="RUN", help="run folder, .safetensors or exported .onnx file")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="PNG/JPEG/BMP/GIF/WebP files or folders")
    number_arg(p, "--test-index", NONNEG_INT, default=None, metavar="I", help="index into the test split")
    number_arg(p, "--top-k", POSITIVE_INT, default=3, metavar="K", help="classes listed per image")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument(
        "--save-input", metavar="DIR", help="write the 28x28 each image became (what the model saw) as PNG"
    )
    threads_arg(p)
    data_dir_arg(p)
    p.set_defaults(func=commands.cmd_predict)


def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX, checked against torch",
        formatter_class=HelpFormatter,
        description="Write the model of RUN as an ONNX file (dynamic batch size; input float32 "
        "(batch, 28, 28) in [0, 1]; outputs probabilities and logits), after checking that onnxruntime "
        "gives torch's probabilities. Needs the onnx extra: pip install 'densa[onnx]'.",
    )
    p.add_argument("run", metavar="RUN", help="run folder or .safetensors file")
    p.add_argument("--onnx", metavar="OUT.onnx", required=True, help="the ONNX file to write")
    p.add_argument("--force", action="store_true", help="replace OUT.onnx if it exists")
    p.set_defaults(func=commands.cmd_export)


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to draw digits on, and a JSON API",
        formatter_class=HelpFormatter,
        description="Serve a drawing page at / and POST /api/predict (OpenAPI schema at /openapi.json). "
        "Needs the serve extra: pip install 'densa[serve]'.",
    )
    p.add_argument("run", metavar="RUN", help="run folder, .safetensors or exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 opens it to your network)")
    number_arg(p, "--port", NONNEG_INT, default=8000, help="TCP port")
    threads_arg(p, default=1, help="CPU threads per inference")
    number_arg(p, "--workers", POSITIVE_INT, default=1, help="server processes (each loads the model)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=argparse.SUPPRESS,  # no "(default: [])" in the help
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; '*' for any), e.g. behind a proxy; "
        "by default a loopback --host answers only to 127.0.0.1, localhost and [::1]",
    )
    p.set_defaults(func=commands.cmd_serve)


def add_data(sub) -> None:
    p = sub.add_parser(
        "data", help="where dataset files are, verify them, download them", formatter_class=HelpFormatter
    )
    p.add_argument("action", choices=["info", "verify", "download"])
    p.add_argument("--dataset", default="mnist", help="dataset name, or 'all'")
    data_dir_arg(p)
    p.set_defaults(func=commands.cmd_data)


SUBCOMMANDS = (add_train, add_sweep, add_evaluate, add_report, add_predict, add_export, add_serve, add_data)


def build_parser() -> Parser:
    parser = Parser(
        prog="densa", description="Train, understand and use dense neural networks on MNIST-family data."
    )
    parser.add_argument("--version", action="version", version=f"densa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `densa train --nproc K` to start again
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
