"""densa.images: geometry against MNIST's recipe, safe decoding, and the realistic test-set accuracy bar."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from realistic import make_set, naive

import densa
from densa.inference import images
from densa.inference.images import ImageError, NoInk, UnsupportedImage, prepare


def png(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def stroke_image(size=(300, 200), paper=235, ink=20) -> Image.Image:
    """A dark, off-centre, lopsided stroke (a thick hook) near the top-left of light paper."""
    im = Image.new("L", size, paper)
    d = ImageDraw.Draw(im)
    d.line([(30, 20), (110, 30), (60, 120)], fill=ink, width=9)
    d.ellipse([(40, 100), (70, 130)], fill=ink)
    return im


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, column) in index coordinates: pixel (i, j) sits at (i, j)."""
    a = a.astype(np.float64)
    i = np.arange(a.shape[0])
    return float(a.sum(1) @ i / a.sum()), float(a.sum(0) @ i / a.sum())


def ink_box(a: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_mnist_geometry_of_an_off_centre_stroke():
    out = prepare(png(stroke_image()))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    h, w = ink_box(out)
    assert max(h, w) == 20 and min(h, w) <= 20  # fitted to the 20x20 box, aspect kept
    cy, cx = center_of_mass(out)
    # MNIST's convention (measured on its 60k training digits): centre of mass at pixel (14, 14)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, (cy, cx)
    assert out.max() == 255 and out[0].max() == out[:, 0].max() == 0  # light ink on black, margin


def test_polarity_tint_alpha_and_formats_agree():
    """Dark-on-light, light-on-dark, RGB on tinted paper, transparent background: the same 28x28."""
    ref = prepare(png(stroke_image()))
    inverted = Image.eval(stroke_image(), lambda v: 255 - v)
    tinted = Image.merge("RGB", [stroke_image(paper=p, ink=i) for p, i in ((240, 30), (228, 30), (200, 90))])
    alpha = Image.new("LA", (300, 200), (0, 0))
    alpha.putalpha(Image.eval(stroke_image(), lambda v: 255 - v))
    for variant in (inverted, tinted, alpha):
        out = prepare(png(variant)).astype(int)
        assert np.abs(out - ref).mean() < 6, np.abs(out - ref).mean()
    for fmt in ("JPEG", "BMP", "GIF", "WEBP"):
        out = prepare(png(stroke_image().convert("RGB"), fmt)).astype(int)
        assert np.abs(out - ref).mean() < 8, (fmt, np.abs(out - ref).mean())


def test_a_28x28_mnist_digit_comes_back_almost_unchanged(synth):
    """An MNIST-style input (already prepared) is a fixed point, up to resampling."""
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 11:17] = 255  # a 20-tall bar, centre of mass at (13.5, 13.5) -> shifted to 14
    out = prepare(png(Image.fromarray(digit)))
    assert ink_box(out) == (20, 6)
    assert center_of_mass(out) == pytest.approx((14, 14), abs=0.5)


def test_fashion_and_kmnist_rules():
    im = png(stroke_image())
    fashion, kmnist = prepare(im, "fashion"), prepare(im, "kmnist")
    assert max(ink_box(fashion)) == 28 and max(ink_box(kmnist)) == 28  # longest edge to 28
    h, w = ink_box(fashion)
    rows, cols = np.flatnonzero(fashion.any(1)), np.flatnonzero(fashion.any(0))
    assert abs((rows[0] + rows[-1]) / 2 - 13.5) <= 0.5 and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5
    with pytest.raises(densa.DensaError, match="unknown preprocessing rule 'nope'"):
        prepare(im, "nope")


def test_thin_pen_is_thickened_towards_mnist_strokes():
    im = Image.new("L", (400, 400), 250)
    ImageDraw.Draw(im).line([(120, 60), (280, 60), (170, 340)], fill=0, width=3)  # a 7 in fine pen
    out = prepare(png(im)).astype(np.float32) / 255
    assert images.stroke_width(out) >= 1.4


def test_blank_and_speck_images_say_no_digit():
    rng = np.random.default_rng(0)
    noisy_paper = np.clip(rng.normal(225, 3, (300, 300)), 0, 255).astype(np.uint8)
    speck = np.full((200, 200), 240, np.uint8)
    speck[100, 100] = 0
    cases = [
        Image.new("L", (280, 280), 255),
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),
        Image.fromarray(noisy_paper),
        Image.fromarray(speck),
    ]
    for im in cases:
        with pytest.raises(NoInk, match="no digit found"):
            prepare(png(im), name="x.png")
    with pytest.raises(NoInk):
        prepare(png(Image.fromarray(noisy_paper), "JPEG", quality=60))


def test_bad_files_are_refused_before_decoding():
    with pytest.raises(UnsupportedImage, match="not a PNG, JPEG, BMP, GIF or WebP image"):
        prepare(b"hello world")
    with pytest.raises(UnsupportedImage, match="looks like TIFF"):
        prepare(png(stroke_image(), "TIFF"))
    with pytest.raises(UnsupportedImage, match="empty"):
        prepare(b"")
    whole = png(stroke_image())
    with pytest.raises(ImageError, match="damaged or cut short"):
        prepare(whole[: len(whole) // 2])
    # over 4096 on a side: refused from the header (a 4097x1 PNG is a few bytes)
    with pytest.raises(ImageError, match="4097x1 pixels; densa reads images up to 4096x4096"):
        prepare(png(Image.new("L", (4097, 1))))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, followed by a tiny zlib stream: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * width
    idat = zlib.compress(row * 64, 9)  # only a few rows: decoding would fail, but it must never start
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_the_header(monkeypatch):
    from PIL import ImageFile

    def no_decoding(*a, **kw):
        raise AssertionError("decoding started")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match="far larger than 4096x4096 pixels"):
        prepare(bomb_png(30000, 30000))  # 900 MP: past Pillow's own limit too
    with pytest.raises(ImageError, match="5000x5000 pixels"):
        prepare(bomb_png(5000, 5000))  # 25 MP: under Pillow's limit, over densa's


def test_a_4096_square_is_accepted_and_bounded():
    im = Image.new("L", (4096, 4096), 255)
    ImageDraw.Draw(im).line([(1000, 800), (1200, 3000)], fill=0, width=120)
    out = prepare(png(im))
    assert out.max() == 255 and max(ink_box(out)) == 20


@pytest.mark.realdata
@pytest.mark.slow
def test_realistic_digits_from_mnist_test_split(mnist_run):
    """The default recipe on 500 MNIST test digits drawn as a person's photos/scans: >= 97% after
    densa's preparation; a naive resize is far worse."""
    run, ds = mnist_run
    files, notes, labels, idx = make_set(ds.test_images.numpy(), ds.test_labels.numpy(), n=500, seed=0)
    model = densa.load(run).model

    def accuracy(x: np.ndarray) -> float:
        return float((densa.predict(model, torch.from_numpy(x)).numpy() == labels).mean())

    prepared = np.stack([prepare(f, "mnist", note) for f, note in zip(files, notes)])
    naive_x = np.stack([naive(f) for f in files])
    acc = {
        "original 28x28": accuracy(ds.test_images.numpy()[idx]),
        "densa.images": accuracy(prepared),
        "naive resize": accuracy(naive_x),
        "naive resize, inverted": accuracy(255 - naive_x),
    }
    print("realistic set (500 MNIST test digits):", ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    assert acc["densa.images"] >= 0.97
    assert acc["naive resize"] <= 0.5 and acc["naive resize, inverted"] <= 0.5


def test_grey_stored_as_rgb_is_read_as_one_grey_channel():
    """The page's canvas and grey scans saved in colour take one channel, with the answer the three
    equal channels give."""
    grey = stroke_image((160, 140))
    three = np.repeat(np.asarray(grey, dtype=np.float32)[..., None] / 255, 3, axis=2)
    rule = images.get_rule("mnist")
    expected = np.round(images.place(images.ink_on_paper(three), rule) * 255).astype(np.uint8)
    for mode in ("RGB", "RGBA"):
        im = grey.convert(mode)
        assert images.colour_pixels(im).shape == (140, 160, 1)
        assert np.array_equal(prepare(png(im)), expected)
    tinted = np.asarray(grey.convert("RGB")).copy()
    tinted[5, 5, 2] ^= 1  # one channel differs in one pixel: colour
    assert images.colour_pixels(Image.fromarray(tinted)).shape == (140, 160, 3)
