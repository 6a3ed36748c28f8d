"""--device and --precision: what is available, when bf16 is allowed, and that bf16 autocast trains."""

import pytest
import torch

import densa
from densa.core import device
from densa.core.data import load_dataset


def test_cpu_flags_decide_fast_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert device.cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert not device.cpu_bf16_is_fast(device.cpu_flags(info))
    assert device.cpu_bf16_is_fast({"avx2", "avx512_bf16"}) and device.cpu_bf16_is_fast({"amx_bf16"})
    assert device.cpu_flags(tmp_path / "missing") == set()


def test_resolve_precision(monkeypatch):
    monkeypatch.delenv(device.FORCE_BF16_ENV, raising=False)
    monkeypatch.setattr(device, "cpu_flags", lambda *a: {"avx2"})
    assert device.resolve_precision("fp32", "cpu") == "fp32"
    assert device.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(densa.DensaError, match="AVX512-BF16/AMX.*use --precision fp32"):
        device.resolve_precision("bf16", "cpu")
    with pytest.raises(densa.DensaError, match="does not use bf16 autocast on mps"):
        device.resolve_precision("bf16", "mps")
    monkeypatch.setenv(device.FORCE_BF16_ENV, "1")
    assert device.resolve_precision("bf16", "cpu") == "bf16"
    assert device.resolve_precision("auto", "cpu") == "fp32"  # auto never picks the slow path
    monkeypatch.setattr(device, "cpu_flags", lambda *a: {"avx2", "amx_bf16"})
    monkeypatch.delenv(device.FORCE_BF16_ENV)
    assert device.resolve_precision("auto", "cpu") == "bf16" == device.resolve_precision("bf16", "cpu")


def test_resolve_device():
    assert device.resolve_device("cpu") == "cpu"
    mps = torch.backends.mps.is_available()
    assert device.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(densa.DensaError, match="--device cuda is not available here"):
            device.resolve_device("cuda")


def test_bf16_autocast_trains(synth, monkeypatch):
    """bf16 where it is forced: the loop runs under autocast and still learns (tiny model: bf16 is slow)."""
    monkeypatch.setenv(device.FORCE_BF16_ENV, "1")
    ds = load_dataset("synth")
    torch.manual_seed(0)
    model = densa.MLP([784, 16, 10])
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=2, precision="bf16", lr=3e-3)
    assert seen[0] == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    assert history[-1]["loss"] < history[0]["loss"]
    assert densa.evaluate(model, ds.test_images, ds.test_labels)["acc"] > 0.5
