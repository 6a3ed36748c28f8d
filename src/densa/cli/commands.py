"""What each `densa` subcommand does, once cli.py has parsed its arguments.

One function per subcommand (`cmd_<name>(args) -> exit code`); each imports what it needs when it
runs, so importing this module costs nothing. Errors are raised as DensaError for main() to print.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .._version import __version__
from ..core.config import SETTINGS
from ..core.errors import DensaError
from ..core.extras import require


def cmd_train(args) -> int:
    import torch

    from ..training.distributed import launched

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume and args.out:
        raise DensaError(f"--resume continues {args.resume} in place; drop --out")
    lock = None
    if args.resume and not launched() and not (args.nproc and args.nproc > 1) and Path(args.resume).is_dir():
        from ..training.runfolder import RunLock

        lock = RunLock(args.resume).acquire()  # before reading the checkpoint: no one else may write it
    try:
        return _train(args, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(args, lock) -> int:
    import torch

    from ..training.distributed import launched
    from ..training.job import run_training
    from ..training.loop import Interrupted

    model_config, config, preset, out, state = _train_configs(args)
    _require_extras(args)  # fail before training, not after it
    ranks = None
    if launched():  # one of several processes started by torchrun (or by --nproc below)
        ranks = data_parallel(args, model_config, config, preset)
    elif args.nproc and args.nproc > 1:
        from ..core.device import resolve_device
        from ..training.distributed import check_nproc, launch

        check_nproc(args.nproc, resolve_device(config.device))
        return launch(args.nproc, args.argv)
    lead = ranks is None or ranks.rank == 0
    if lead:
        print(f"densa {__version__} · torch {torch.__version__}")
    try:
        r = run_training(
            model_config, config, out=out, data_dir=args.data_dir, progress=sys.stdout.isatty(),
            preset=preset, state=state, ranks=ranks, lock=lock,
        )  # fmt: skip
        if ranks is not None:
            ranks.barrier()
    except Interrupted as e:
        if lead:
            _say_interrupted(args, e, ranks)
        return 130
    finally:
        if ranks is not None:
            ranks.close()
    if lead:
        _write_extras(args, r["out"])
    return 0


def _train_configs(args):
    """(model config, train config, preset, run folder, resume state) from the flags (and --resume)."""
    from ..core.config import PRESETS, resolve

    given = {k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}
    if args.resume:
        from ..core.checkpoint import load_state
        from ..training.job import open_resume, resume_configs

        open_resume(Path(args.resume))
        state = load_state(args.resume)
        model_config, config, preset = resume_configs(Path(args.resume), state, given)
        out = Path(args.resume)
    else:
        state = None
        preset = given.pop("preset", "seed")
        model_config, config = resolve(preset, **given)
        out = args.out
    assert preset in PRESETS
    return model_config, config, preset, out, state


def _require_extras(args) -> None:
    if args.report:
        from ..apps.plots import require_matplotlib

        require_matplotlib()
    if args.tensorboard:
        from ..apps.tensorboard_log import require_tensorboard

        require_tensorboard()


def _write_extras(args, out) -> None:
    if args.tensorboard:
        from ..apps.tensorboard_log import write_scalars

        write_scalars(out)
    if args.report:
        from ..apps.report import write_report

        write_report(out, data_dir=args.data_dir)


def _say_interrupted(args, e, ranks) -> None:
    """The one line an interrupted run ends with: where its checkpoint is and the command to resume."""
    again = ["densa", "train", "--resume", str(e.out)]
    again += ["--data-dir", args.data_dir] if args.data_dir else []
    again += ["--threads", str(args.threads)] if args.threads else []
    again += ["--nproc", str(ranks.world)] if ranks is not None else []
    newline = "\n" if sys.stderr.isatty() else ""  # end the progress bar's line
    print(
        f"{newline}densa: {e}; saved {e.out}/checkpoint.pt; resume with: {shlex.join(again)}",
        file=sys.stderr,
    )


def data_parallel(args, model_config, config, preset):
    """Join the process group; every rank must have been started with the same settings as rank 0."""
    from ..core.device import resolve_device
    from ..training.distributed import setup

    ranks = setup(resolve_device(config.device), args.threads)
    try:
        settings = {"preset": preset, **model_config.to_dict(), **config.to_dict()}
        ranks.agree({**settings, "resume": args.resume, "out": args.out})
        if args.nproc:  # densa train --nproc K starts its ranks without it
            raise DensaError("--nproc starts torchrun itself; under torchrun, use its --nproc-per-node")
    except DensaError:
        ranks.close()
        raise
    return ranks


def _load_run(args):
    from ..core.checkpoint import load
    from ..core.data import load_dataset

    ckpt = load(args.run)
    ds = load_dataset(ckpt.dataset, args.data_dir)
    return ckpt, ds


def cmd_evaluate(args) -> int:
    from ..core.metrics import assess_logits, format_confusion, format_table
    from ..inference.model import load_split
    from ..inference.predictor import load

    model = load(args.run)  # the same object, and the same scoring, for .safetensors and .onnx
    ds, images, labels = load_split(model, args.dataset, args.split, args.data_dir)
    r = assess_logits(model.logits(images), labels.numpy(), ds.classes)
    kind = model.meta["model"].get("model", "model") + (" via onnxruntime" if model.module is None else "")
    for key in ("probs", "preds", "labels"):
        del r[key]
    if args.json:
        print(json.dumps({"run": str(model.path), "dataset": ds.name, "split": args.split, **r}))
    else:
        s = args.split
        print(f"run: {model.path} ({kind}, trained on {model.dataset}; {ds.name} {s} split)")
        print(f"{s}_loss: {r['loss']:.4f}")
        print(f"{s}_acc: {r['acc']:.4f} ({r['correct']}/{r['n']})")
        print()
        print(format_table(r))
        print()
        print(format_confusion(r["confusion"], r["classes"]))
        print()
        cal = r["calibration"]
        print(f"expected calibration error: {cal['ece']:.4f} ({len(cal['bins'])} confidence bins)")
    return 0


def cmd_report(args) -> int:
    from ..apps.report import write_report

    write_report(args.run, args.out, dataset=args.dataset, split=args.split, data_dir=args.data_dir)
    return 0


def cmd_predict(args) -> int:
    if (args.test_index is None) == (not args.images):
        raise DensaError("pass image files or folders, or --test-index I (exactly one of them)")
    if args.images or args.save_input:
        require("PIL", "images", "densa predict on image files" if args.images else "--save-input")
    if args.test_index is not None:
        return _predict_test_index(args)
    return _predict_images(args)


def _predict_test_index(args) -> int:

    from ..core.data import load_dataset
    from ..core.evaluate import format_prediction, scale_images
    from ..inference.predictor import open_predictor, result

    predictor = open_predictor(args.run)
    ds = load_dataset(predictor.meta["dataset"]["name"], args.data_dir)
    i, n = args.test_index, len(ds.test_images)
    if not 0 <= i < n:
        raise DensaError(
            f"--test-index {i} is out of range: {ds.name}'s test split has {n:,} images (0 to {n - 1})"
        )
    pixels = ds.test_images[i].numpy()
    probs, decisions = predictor.assess(scale_images(pixels[None]))
    probs, decision = probs[0], decisions[0]
    label = int(ds.test_labels[i])
    if args.save_input:
        from ..inference.predictor import save_inputs

        save_inputs(args.save_input, [(f"test-{i}", pixels)])
    if args.json:
        r = result(predictor, probs, args.top_k, decision)
        print(json.dumps({"index": i, **r, "label": label, "label_class": ds.classes[label]}))
    else:
        import torch

        print(format_prediction(torch.from_numpy(probs), i, label, ds.classes))
        print(f"decision: {decision_line(decision)}")
    return 0


def decision_line(d) -> str:
    """A Decision in one line: '7' when answered, else 'not a digit: <why>' (see inference.decision)."""
    return d.label if d.accepted else f"{d.label}: {d.reason}"


def _predict_images(args) -> int:
    from ..inference.predictor import open_predictor, predict_files, save_inputs

    predictor = open_predictor(args.run, threads=args.threads)
    if predictor.detector is None:
        from ..inference.decision import NO_DETECTOR, article, noun

        thing = article(noun(predictor.dataset, predictor.classes))
        print(f"densa: warning: {NO_DETECTOR.format(file=predictor.path, a=thing)}", file=sys.stderr)
    entries = predict_files(predictor, args.images, args.top_k)
    for path, answer, _, error in entries:
        if error is not None:
            print(f"densa: error: {error}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"file": path, "error": error}), flush=True)
        elif args.json:
            print(json.dumps({"file": path, **answer}), flush=True)
        else:
            top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in answer["top_k"])
            p, k, d = answer["probability"], len(answer["top_k"]), answer["decision"]
            c = answer["predicted_class"]
            said = f"{c} ({p:.3f})" if d["accepted"] else f"{d['label']} (best guess {c}, {p:.3f})"
            print(f"{path}: {said}  top-{k}: {top}", flush=True)
    ok = [(path, pixels) for path, _, pixels, error in entries if error is None]
    if args.save_input and ok:
        save_inputs(args.save_input, ok)
    failed = len(entries) - len(ok)
    if failed:
        raise DensaError(f"{failed} of {len(entries)} image(s) could not be read (see above)")
    return 0


def cmd_serve(args) -> int:
    from ..apps.serve import serve

    serve(
        args.run,
        host=args.host,
        port=args.port,
        threads=args.threads,
        workers=args.workers,
        allow_hosts=getattr(args, "allow_host", ()),
    )
    return 0


def cmd_export(args) -> int:
    from ..inference.onnx_file import FEATURES, INPUT, OUTPUTS, TOLERANCE, export_run

    r = export_run(args.run, args.onnx, force=args.force)
    print(
        f"exported {r['source']} -> {r['path']} ({r['bytes'] / 1e6:.2f} MB, opset {r['opset']}, "
        f"{r['seconds']:.1f}s)"
    )
    print(
        f"verified: onnxruntime matches torch within {r['max_abs_diff']:.1e} (max abs difference of "
        f"probabilities; allowed {TOLERANCE:g})"
    )
    print(
        f"input {INPUT!r}: float32 (batch, 28, 28) in [0, 1]; outputs {', '.join(map(repr, OUTPUTS))}: "
        "(batch, classes)"
    )
    if r["detector"]:
        print(
            f"detector: output {FEATURES!r} and the densa.detector metadata (it refuses what is not a digit)"
        )
    else:
        print(
            f"no detector in {r['source']} (written before densa fitted one): "
            "the file refuses low confidence only"
        )
    return 0


def cmd_data(args) -> int:
    from ..core.data import DATASETS, cache_dir, download, get_spec, load_file, locate, search_dirs

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
                load_file(spec, key, args.data_dir, allow_download=False, verify_source=True)
                print(f"  {f.name:<26} ok  {(f.checksum or f.gz_checksum)[:19]}…  {where}")
            except DensaError as e:
                failed += 1
                print(f"  {f.name:<26} FAILED  {e}")
    if failed:
        raise DensaError(
            f"{failed} file(s) missing or bad (see above); `densa data download` fetches missing files"
        )
    return 0


def cmd_sweep(args) -> int:
    from ..apps.sweep import FIXED, default_storage, run_sweep, show
    from ..core.config import SweepConfig

    require("optuna", "sweep", "densa sweep")  # before a sweep folder is made
    given = {k: getattr(args, k) for k in (*FIXED, "heartbeat") if hasattr(args, k)}
    defaults = SweepConfig()
    name = args.study or f"{given.get('dataset', defaults.dataset)}-{given.get('model', defaults.model)}"
    out = Path(args.out) if args.out else Path("sweeps") / name
    storage = args.storage or default_storage(out)
    if args.show:
        if not args.storage and not (out / "study.db").is_file():
            raise DensaError(f"no sweep in {out}/ (no study.db); start one with `densa sweep --trials N`")
        show(storage, name, top=args.top, data_dir=args.data_dir)
        return 0
    if not args.trials:
        raise DensaError("say how many trials this worker runs: --trials N (or --show to see the study)")
    if not args.storage:
        from ..core.data import get_spec

        get_spec(given.get("dataset", defaults.dataset))  # no sweep folder for a misspelt dataset
        out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_sweep(
        storage, name, given, args.trials, timeout=args.timeout, pruner=args.pruner,
        startup=args.startup_trials, data_dir=args.data_dir,
    )  # fmt: skip
    return 0
