"""A person's image -> the 28x28 uint8 a densa model expects, made the way its dataset was made.

`prepare(data, rule)` decodes PNG/JPEG/BMP/GIF/WebP bytes safely (an allow-list of formats; the size is
read from the header and checked before any pixel is decoded), finds the ink (dark ink on light paper
is inverted to MNIST's light-on-dark), removes the paper's tone and noise, and places the ink in 28x28
by the dataset's rule. The rule's name travels in a checkpoint's metadata: meta["dataset"]["preprocess"].
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ..core.errors import DensaError
from ..core.extras import require

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")  # Pillow's names; nothing else is even tried
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_SIDE = 4096  # pixels; checked from the header, before decoding
WORK_SIDE = 1024  # larger images are block-averaged down to this first (the result is 28 px anyway)
MIN_CONTRAST = 0.1  # ink must differ from the paper by 10% of the grey range (~25 levels)
LOCAL_SIDE = 64  # from this size (short side, pixels) the paper is estimated locally, not from the border
MAX_GRAIN = 0.13  # paper whose robust spread is over 13% of the grey range is noise or texture, not paper
# (measured: grainy low-quality JPEG photos of digits reach 0.10; generated noise starts at 0.17)
MIN_INK_PIXELS = 4
TRIM = 0.002  # the crop may leave out this fraction of the ink's mass on each side: stray specks
# MNIST's centre of mass sits at pixel (14, 14) in index coordinates (row, column), not at the
# geometric centre 13.5: measured over the 60,000 training digits, mean (13.996, 14.007), std 0.29.
MNIST_CENTER = 14.0
# MNIST's strokes, as 2 * ink area / ink perimeter of the >50% pixels: median 1.85 px, 5th pct 1.23.
STROKE_MIN, STROKE_TARGET = 1.4, 1.85


class ImageError(DensaError):
    """The bytes are an image densa cannot use (damaged, too large)."""


class UnsupportedImage(ImageError):
    """Not a PNG, JPEG, BMP, GIF or WebP image (or not an image at all)."""


class NoInk(ImageError):
    """No digit to read; `reason` says why: "blank" (nothing stands out from the paper), "faint",
    "specks", "noise" (the whole image is grain or texture) or "lines" (only the paper's lines or a box)."""

    def __init__(self, message: str, reason: str = "blank"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    box: int  # the ink's longer side is scaled to this many pixels
    center: str  # "mass": centre of mass at MNIST_CENTER; "box": bounding box in the middle
    stretch: bool  # ink stretched so stroke cores are 255 and thin strokes thickened (pen scans)


RULES = {
    # LeCun et al.: NIST's binary digits, fitted to 20x20 keeping the aspect ratio (anti-aliased),
    # then placed in 28x28 by centre of mass.
    "mnist": Rule(box=20, center="mass", stretch=True),
    # Xiao et al.: product photos trimmed, longest edge resized to 28, centred on the canvas, negated.
    # Shades inside the garment carry meaning, so no stretching.
    "fashion": Rule(box=28, center="box", stretch=False),
    # Clanuwat et al.: brush characters cut from scanned pages; the published 28x28 characters fill
    # the frame rather than a 20x20 box, so: MNIST's ink handling with fashion's geometry.
    "kmnist": Rule(box=28, center="box", stretch=True),
}


def get_rule(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise DensaError(f"unknown preprocessing rule {name!r}; choose one of: {', '.join(RULES)}") from None


# --------------------------------------------------------------------------- bytes -> grey pixels


def _other_format(data: bytes) -> str:
    """A hint naming a common format that densa does not read."""
    head = data[:64].lstrip()
    for magic, name in (
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"%PDF", "PDF"),
        (b"<svg", "SVG"),
        (b"<?xml", "XML/SVG"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"8BPS", "PSD"),
    ):
        if head.startswith(magic):
            return f" (it looks like {name})"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return " (it looks like HEIC/AVIF)"
    return ""


def decode(data: bytes, name: str = "image"):
    """Bytes -> a loaded PIL image (first frame, EXIF orientation applied), or a one-line ImageError."""
    require("PIL", "images", "reading images")
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise UnsupportedImage(f"{name}: empty file, not an image")
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"{name}: not a PNG, JPEG, BMP, GIF or WebP image{_other_format(data)}; convert it to PNG"
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is far larger than {MAX_SIDE}x{MAX_SIDE} pixels; refused") from None
    except Exception as e:  # Pillow's parsers raise many types for damaged headers
        raise ImageError(f"{name}: damaged image header ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w > MAX_SIDE or h > MAX_SIDE or w < 1 or h < 1:
        raise ImageError(
            f"{name}: image is {w}x{h} pixels; densa reads images up to {MAX_SIDE}x{MAX_SIDE}, "
            "scale it down first"
        )
    try:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # phone photos are often stored sideways
        return im
    except Exception as e:
        raise ImageError(f"{name}: the {im.format} data is damaged or cut short ({e})") from None


def grey_pixels(im) -> np.ndarray:
    """float32 (H, W) in [0, 1], 0 = black. Transparent pixels become a background that contrasts with
    the opaque marks (white behind dark strokes, black behind light ones)."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return np.clip(a / top, 0, 1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha and mode in ("RGBA", "LA") and im.getchannel("A").getextrema()[0] == 255:
        has_alpha = False  # an opaque canvas: alpha says nothing
    if not has_alpha:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255
    mass = alpha.sum()
    marks = float((alpha * grey).sum() / mass) if mass > 0 else 0.0
    paper = 1.0 if marks < 0.5 else 0.0
    return alpha * grey + (1 - alpha) * paper


def colour_pixels(im) -> np.ndarray:
    """float32 (H, W, C) in [0, 1]: the RGB channels of a colour image (C = 3), else grey (C = 1). An
    image stored as RGB whose three channels are equal everywhere (the page's canvas, a grey scan saved
    in colour) is grey: one channel, which the paper's estimate then takes a third of the time over."""
    if im.mode in ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV") or (
        im.mode in ("P", "RGBA") and grey_is_opaque(im)
    ):
        rgb = np.asarray(im.convert("RGB"))
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            rgb = rgb[..., :1]
        return rgb.astype(np.float32) / 255
    return grey_pixels(im)[..., None]


def grey_is_opaque(im) -> bool:
    if "transparency" in im.info:
        return False
    return im.mode != "RGBA" or im.getchannel("A").getextrema()[0] == 255


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average f x f blocks (partial blocks at the edges average what they hold): area downscaling."""
    if f <= 1:
        return a
    from PIL import Image

    if a.ndim == 3:
        return np.stack([block_mean(a[..., c], f) for c in range(a.shape[2])], axis=-1)
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), mode="F").reduce(f))


# --------------------------------------------------------------------------- grey -> ink


def coarse(grey: np.ndarray) -> np.ndarray:
    """2x2 averages (so one hot pixel can't decide), or the image itself when it is tiny."""
    h, w = grey.shape
    if min(h, w) < 8:
        return grey
    e = grey[: h // 2 * 2, : w // 2 * 2]
    return (e[::2, ::2] + e[1::2, ::2] + e[::2, 1::2] + e[1::2, 1::2]) / 4


def dark_on_light(grey: np.ndarray, paper: float) -> bool:
    """The ink is whichever side of the paper reaches further."""
    c = coarse(grey)
    return paper - float(c.min()) >= float(c.max()) - paper


def ink_of(grey: np.ndarray, stretch: bool, name: str = "image") -> np.ndarray:
    """float32 ink in [0, 1] (0 = paper) with the paper's tone, read from the border, and noise removed;
    NoInk if there is none. For images whose paper is even (product photos, small images)."""
    h, w = grey.shape
    b = max(1, min(h, w) // 32)
    frame = np.concatenate([grey[:b].ravel(), grey[-b:].ravel(), grey[:, :b].ravel(), grey[:, -b:].ravel()])
    paper = float(np.median(frame))
    noise = 1.4826 * float(np.median(np.abs(frame - paper)))  # robust std of the paper
    dark_ink = dark_on_light(grey, paper)
    raw = paper - grey if dark_ink else grey - paper
    floor = max(4 * noise, 0.02)
    # unstretched: from the paper to black/white
    full = None if stretch else max((paper if dark_ink else 1 - paper) - floor, 1e-3)
    return scaled(raw, floor, full, name)


def ink_on_paper(px: np.ndarray, name: str = "image") -> np.ndarray:
    """float32 ink in [0, 1] (0 = paper) of a photo or scan of paper (H, W, C): the paper estimated around
    each pixel (shadows, light falling off, coloured paper), its lines and a box around the digit removed."""
    from . import paper

    if not paper.dark_ink(px.mean(axis=2)):
        px = 1 - px
    d = paper.darkness(px)
    level = float(np.median(d))
    grain = 1.4826 * float(np.median(np.abs(d - level)))  # robust std of the paper
    if grain > MAX_GRAIN:
        raise NoInk(
            f"{name}: no digit found: the image is noise or texture (its background varies by "
            f"{grain * 255:.0f} grey levels); photograph the digit on plain paper",
            reason="noise",
        )
    floor = max(4 * grain, 0.02)
    ink, removed = paper.remove_lines(d - np.float32(level), floor)
    try:
        return paper.keep_main(scaled(ink, floor, None, name))
    except NoInk:
        if removed:
            raise NoInk(f"{name}: no digit found: only the paper's lines or a box", reason="lines") from None
        raise


def scaled(raw: np.ndarray, floor: float, full: float | None, name: str) -> np.ndarray:
    """Ink above the noise floor, scaled so 1 is the strokes' core (full=None) or `full` (unstretched)."""
    candidates = raw[raw > floor]
    if candidates.size < MIN_INK_PIXELS:
        raise NoInk(f"{name}: no digit found: the image is blank (nothing stands out from the background)")
    k = int(0.9 * (candidates.size - 1))
    peak = float(np.partition(candidates, k)[k])  # the strokes' core, robust to a few hot pixels
    if peak < MIN_CONTRAST:
        raise NoInk(
            f"{name}: no digit found: the marks differ from the background by only "
            f"{peak * 255:.0f} grey levels",
            reason="faint",
        )
    if full is None:
        t = max(floor, 0.2 * peak)
        scale = peak - t
    else:
        t, scale = floor, full
    ink = raw - np.float32(t)
    ink *= np.float32(1 / scale)
    np.maximum(ink, 0, out=ink)
    np.minimum(ink, 1, out=ink)
    if int((ink > 0.5).sum()) < MIN_INK_PIXELS:
        raise NoInk(
            f"{name}: no digit found: only a few specks stand out from the background", reason="specks"
        )
    return ink.astype(np.float32, copy=False)


def stroke_width(ink: np.ndarray) -> float:
    """2 * area / perimeter of the pixels above half the peak: a stroke's width, in pixels."""
    m = ink > 0.5 * ink.max()
    area = int(m.sum())
    edges = int((m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum())
    edges += int(m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum())
    return 2 * area / max(edges, 1)


# --------------------------------------------------------------------------- ink -> 28x28


def ink_span(profile: np.ndarray, eps: float = TRIM) -> tuple[int, int]:
    """[start, stop) of a mass profile with at most eps of the mass cut from each end."""
    c = np.cumsum(profile, dtype=np.float64)
    start = int(np.searchsorted(c, eps * c[-1], side="right"))
    stop = int(np.searchsorted(c, (1 - eps) * c[-1], side="left")) + 1
    return start, max(stop, start + 1)


def place(ink: np.ndarray, rule: Rule) -> np.ndarray:
    """Crop to the ink, scale its longer side to rule.box, position it in 28x28: float32 in [0, 1]."""
    (r0, r1), (c0, c1) = ink_span(ink.sum(axis=1)), ink_span(ink.sum(axis=0))
    crop = ink[r0:r1, c0:c1]
    f = max(1, max(crop.shape) // (5 * rule.box))  # keep >= 5 source pixels per output pixel
    crop = block_mean(crop, f)
    if rule.stretch:
        s = rule.box / max(crop.shape)  # output pixels per source pixel
        w = stroke_width(crop)
        if w * s < STROKE_MIN:  # a thin pen: thicken in the source to MNIST's typical stroke
            k = 2 * round((STROKE_TARGET / s - w) / 2) + 1
            if k >= 3:
                crop = dilate(crop, k)
    small = fit(crop, rule.box)
    if rule.stretch:
        top = small.max()
        if 0 < top < 1:
            small = small / top
    return position(small, rule.center)


def fit(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longer side is `box` pixels, keeping the aspect ratio (area-averaged when shrinking)."""
    from PIL import Image

    h, w = crop.shape
    s = box / max(h, w)
    size = (max(1, min(box, round(w * s))), max(1, min(box, round(h * s))))
    resample = Image.Resampling.BOX if s <= 1 else Image.Resampling.BILINEAR
    im = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, resample)
    return np.clip(np.asarray(im, dtype=np.float32), 0, 1)


def position(small: np.ndarray, center: str) -> np.ndarray:
    """Put `small` in a 28x28 frame by whole-pixel shifts, as MNIST did: its centre of mass on pixel
    (14, 14) ("mass"; within 0.5 px), or its box in the middle ("box"). The ink always stays in frame."""
    h, w = small.shape
    if center == "mass":
        total = small.sum()
        cy = (small.sum(axis=1) @ np.arange(h)) / total
        cx = (small.sum(axis=0) @ np.arange(w)) / total
        top, left = round(MNIST_CENTER - cy), round(MNIST_CENTER - cx)
    else:
        top, left = (28 - h) // 2, (28 - w) // 2
    top, left = min(max(top, 0), 28 - h), min(max(left, 0), 28 - w)
    out = np.zeros((28, 28), np.float32)
    out[top : top + h, left : left + w] = small
    return out


def dilate(a: np.ndarray, k: int) -> np.ndarray:
    """Grey dilation with a k x k square (k odd): thickens strokes by k - 1 pixels."""
    from PIL import Image, ImageFilter

    im = Image.fromarray(np.pad(a, k // 2), mode="F").filter(ImageFilter.MaxFilter(k))
    return np.asarray(im, dtype=np.float32)


# --------------------------------------------------------------------------- the whole path


def prepare(data: bytes, rule: str = "mnist", name: str = "image") -> np.ndarray:
    """Image file bytes -> uint8 (28, 28), light ink on black, as the dataset of `rule` was made."""
    r = get_rule(rule)
    im = decode(data, name)
    if r.stretch and min(im.size) >= LOCAL_SIDE:  # pen or brush on paper, photographed or scanned
        px = colour_pixels(im)
        ink = ink_on_paper(block_mean(px, -(-max(px.shape[:2]) // WORK_SIDE)), name)
    else:
        grey = grey_pixels(im)
        ink = ink_of(block_mean(grey, -(-max(grey.shape) // WORK_SIDE)), r.stretch, name)
    return np.round(place(ink, r) * 255).astype(np.uint8)


def read_image_file(path, max_bytes: int = 64 << 20) -> bytes:
    """A file's bytes, refusing anything larger than max_bytes without reading it all."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"{path}: file is larger than {max_bytes >> 20} MiB; not a plausible digit image")
    return data


def to_png(pixels: np.ndarray) -> bytes:
    """uint8 (28, 28) -> PNG bytes (what --save-input writes and the page shows)."""
    require("PIL", "images", "writing images")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()
