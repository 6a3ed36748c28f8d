"""Digits from real paper and light: accuracy per condition for the default recipe and the cnn preset.

    python benchmarks/bench_photos.py [--n 500] [--negatives 100] [--runs DIR] [--pictures docs/img/photos]

Renders N digits of MNIST's *test* split per condition of tests/realistic.py (shadow, ruled paper,
pencil, rotation, ...; every other one saved as JPEG, as phones send them), prepares each with
densa.images as `densa predict` does, and prints each model's accuracy per condition. An image the
preparation refuses ("no digit found") counts as wrong. Beside it, the same digits' ink alone (the
same strokes, turn and tilt as black ink on white, no paper or light; realistic.photo_and_ink): what
the model makes of the condition's geometry and pen when preparation has nothing to undo; and all of
MNIST's test digits turned by up to +-20 degrees inside their own frame. Then the not-a-digit set
(letters, lines, scribbles, ...): the share that preparation already refuses as having no digit. Last,
abstention: for each model, the share of the not-a-digit set refused (by preparation or by the model's
decision), the share of the realistic digits refused, and the ROC AUC of the decision's score (digits
against not-digits; a refusal by preparation scores as the most refused).

The two runs (`densa train --seed 0` and `densa train --preset cnn --seed 0`) are trained once into
--runs (default: densa's user cache, bench-photos/) and reused; the rendered images are cached there too.
--pictures writes a small grid per condition (photos above, what the model sees below) and one of the
negatives, for docs/photos.md.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realistic  # noqa: E402

import densa  # noqa: E402
from densa.core.data import cache_dir, load_dataset  # noqa: E402
from densa.inference.images import ImageError, prepare  # noqa: E402

PRESETS = {"seed": "default recipe", "cnn": "cnn preset"}


def trained(runs: Path, preset: str) -> Path:
    out = runs / preset
    if not (out / "model.safetensors").exists():
        cmd = [sys.executable, "-m", "densa", "train", "--preset", preset, "--seed", "0", "--out", str(out)]
        print("training:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def files_for(condition: str, n: int, seed: int, runs: Path, ds) -> tuple[list[bytes], np.ndarray, list]:
    """The condition's N photos as PNG/JPEG bytes (alternating), their labels, and each photo's ink
    alone as a PNG (realistic.photo_and_ink: the same strokes and geometry, no paper or light); cached."""
    path = runs / "photos" / f"{condition}-{n}-{seed}-ink.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    pixels, labels, _, inks = realistic.photo_and_ink_set(
        ds.test_images.numpy(), ds.test_labels.numpy(), condition, n, seed
    )
    files = [realistic.encode(p, "JPEG" if i % 2 else "PNG", 85) for i, p in enumerate(pixels)]
    ink_files = [realistic.encode(a) for a in inks]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps((files, labels, ink_files)))
    return files, labels, ink_files


def prepared(files: list[bytes]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 (N, 28, 28) (blank where refused), a mask of the refused ones, and the refusals' reasons."""
    out, refused, reasons = np.zeros((len(files), 28, 28), np.uint8), np.zeros(len(files), bool), []
    for i, f in enumerate(files):
        try:
            out[i] = prepare(f, "mnist")
        except ImageError as e:
            refused[i] = True
            reasons.append(str(e).split(": ", 1)[-1])
    return out, refused, reasons


def pictures(
    folder: Path, condition: str, files: list[bytes], x: np.ndarray, k: int = 8, side: int = 96
) -> None:
    """A k-wide grid: the photos (thumbnails) above, the prepared 28x28 below (enlarged)."""
    import io

    from PIL import Image

    grid = Image.new("RGB", (k * side, 2 * side), "white")
    for j in range(min(k, len(files))):
        im = Image.open(io.BytesIO(files[j])).convert("RGB")
        im.thumbnail((side - 4, side - 4))
        grid.paste(im, (j * side + (side - im.width) // 2, (side - im.height) // 2))
        seen = Image.fromarray(x[j]).resize((side - 16, side - 16), Image.Resampling.NEAREST)
        grid.paste(seen.convert("RGB"), (j * side + 8, side + 8))
    folder.mkdir(parents=True, exist_ok=True)
    small = grid.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(folder / f"{condition}.png", optimize=True)  # 64 colours: a third of the bytes


def accuracy(model, x: np.ndarray, refused: np.ndarray, labels: np.ndarray) -> float:
    """The share of `x` the model reads right; an image preparation refused counts as wrong."""
    return float(((model.predict(x) == labels) & ~refused).mean())


def cells(shares, mark: str = "") -> str:
    """Table cells of shares as percentages, each wrapped in `mark` ("**": bold)."""
    return " | ".join(f"{mark}{100 * a:.1f}%{mark}" for a in shares)


def turned_mnist(models: dict, ds, seed: int, degrees: float = 20.0) -> None:
    """Each model on all of MNIST's test digits, each turned by a random angle of up to +-degrees inside
    its own 28x28 frame (no paper, no preparation): what the model can do with turned digits at best."""
    from PIL import Image

    images, labels = ds.test_images.numpy(), ds.test_labels.numpy()
    angles = np.random.default_rng([seed, 2000]).uniform(-degrees, degrees, len(images))
    turned = np.stack(
        [
            np.asarray(Image.fromarray(im).rotate(float(a), Image.Resampling.BILINEAR))
            for im, a in zip(images, angles)
        ]
    )
    steep = np.abs(angles) >= degrees / 2
    print(f"\nMNIST's {len(images):,} test digits turned by up to ±{degrees:g}° in their 28x28 frame\n")
    print(f"| model | unturned | turned | turned by {degrees / 2:g}° or more |")
    print("|---|---:|---:|---:|")
    for p, m in models.items():
        right = m.predict(turned) == labels
        plain, turn, far = (m.predict(images) == labels).mean(), right.mean(), right[steep].mean()
        print(f"| {PRESETS[p]} | {100 * plain:.1f}% | {100 * turn:.1f}% | {100 * far:.1f}% |")


def negative_files(kind: str, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng([seed, 1000 + realistic.NEGATIVE_KINDS.index(kind)])
    return [
        realistic.encode(p, "JPEG" if i % 2 else "PNG", 85)
        for i, p in enumerate(realistic.negatives(kind, n, rng))
    ]


def refusal_scores(model, x: np.ndarray, refused: np.ndarray) -> np.ndarray:
    """Each image's Decision.score (refused above 1); infinite where preparation already refused it."""
    scores = np.full(len(x), np.inf)
    if (~refused).any():
        scores[~refused] = [d.score for d in model.decide(x[~refused])]
    return scores


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a not-digit scores above a digit), ties counted half: the area under the ROC curve."""
    above = (negative[:, None] > positive[None, :]).mean()
    ties = (negative[:, None] == positive[None, :]).mean()
    return float(above + ties / 2)


def abstention(models: dict, digit_scores: dict, negative_scores: dict) -> None:
    print("\nabstention: refused = preparation found no digit, or the decision was not an answer\n")
    print("| model | detector | not-digits refused | digits refused | ROC AUC |")
    print("|---|---|---:|---:|---:|")
    for p, m in models.items():
        pos, neg = np.concatenate(digit_scores[p]), np.concatenate(negative_scores[p])
        method = "yes" if m.detector is not None else "none (confidence only)"
        print(
            f"| {PRESETS[p]} | {method} | {100 * (neg > 1).mean():.1f}% | {100 * (pos > 1).mean():.1f}% "
            f"| {roc_auc(pos, neg):.3f} |"
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="digits per condition (default: 500)")
    ap.add_argument("--negatives", type=int, default=100, help="images per not-a-digit kind (default: 100)")
    ap.add_argument("--seed", type=int, default=0, help="picks the digits and renders them (default: 0)")
    ap.add_argument(
        "--runs", type=Path, default=None, help="where the trained runs live (default: user cache)"
    )
    ap.add_argument("--conditions", default=",".join(realistic.CONDITIONS), help="comma-separated subset")
    ap.add_argument("--presets", default="seed,cnn", help="which models (default: seed,cnn)")
    ap.add_argument("--pictures", type=Path, default=None, help="write the condition grids to this folder")
    args = ap.parse_args(argv)
    runs = args.runs or cache_dir() / "bench-photos"
    presets = {p: PRESETS[p] for p in args.presets.split(",")}
    models = {p: densa.load(trained(runs, p)) for p in presets}
    ds = load_dataset("mnist")
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {when}")
    print(f"{args.n} MNIST test digits per condition, seed {args.seed}; accuracy (refused counts as wrong)\n")
    alone = " | ".join(f"{name}, ink alone" for name in presets.values())
    print(f"| condition | {' | '.join(presets.values())} | refused by preparation | {alone} |")
    print("|---|" + "---:|" * (2 * len(presets) + 1))
    photo_accs: dict = {p: [] for p in presets}  # per condition, in order
    ink_accs: dict = {p: [] for p in presets}
    digit_scores: dict = {p: [] for p in presets}
    negative_scores: dict = {p: [] for p in presets}
    for condition in args.conditions.split(","):
        files, labels, ink_files = files_for(condition, args.n, args.seed, runs, ds)
        x, refused, _ = prepared(files)
        ink, ink_refused, _ = prepared(ink_files)
        for p, m in models.items():
            photo_accs[p].append(accuracy(m, x, refused, labels))
            ink_accs[p].append(accuracy(m, ink, ink_refused, labels))
            digit_scores[p].append(refusal_scores(m, x, refused))
        row, ink_row = [a[-1] for a in photo_accs.values()], [a[-1] for a in ink_accs.values()]
        print(f"| {condition} | {cells(row)} | {int(refused.sum())} | {cells(ink_row)} |", flush=True)
        if args.pictures:
            pictures(args.pictures, condition, files, x)
    worst, ink_worst = [min(a) for a in photo_accs.values()], [min(a) for a in ink_accs.values()]
    print(f"| **worst** | {cells(worst, '**')} | | {cells(ink_worst, '**')} |")
    turned_mnist(models, ds, args.seed)
    print(f"\nnot digits: {args.negatives} per kind; refused by preparation (no digit found)\n")
    print("| kind | refused | reasons |")
    print("|---|---:|---|")
    strip = []
    for kind in realistic.NEGATIVE_KINDS:
        files = negative_files(kind, args.negatives, args.seed)
        x, refused, reasons = prepared(files)
        common = sorted(set(reasons), key=reasons.count, reverse=True)[:2]
        print(f"| {kind} | {100 * refused.mean():.0f}% | {'; '.join(common)} |", flush=True)
        strip.append((kind, files[:8], x[:8]))
        for p, m in models.items():
            negative_scores[p].append(refusal_scores(m, x, refused))
    if args.pictures:
        for kind, files, x in strip:
            pictures(args.pictures, f"not-{kind}", files, x)
    abstention(models, digit_scores, negative_scores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
