"""The public API's trained-model object: densa.save builds the metadata, densa.load gives one interface
for torch and ONNX files, one input rule (core.evaluate.scale_images) and one evaluator (core.evaluate)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

import densa
from densa.core.evaluate import scale_images, score, score_parts, summarize
from densa.core.models import build_model
from densa.inference.onnx_file import export_run


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# --------------------------------------------------------------------------- the one input rule


def test_scale_images_is_the_same_for_numpy_and_torch():
    x = pixels(5)
    a, b = scale_images(x), scale_images(torch.from_numpy(x))
    assert a.dtype == np.float32 and b.dtype == torch.float32
    assert np.array_equal(a, b.numpy()) and np.array_equal(a, x.astype(np.float32) / 255)
    assert scale_images(a) is not None and np.array_equal(scale_images(torch.from_numpy(a)).numpy(), a)
    for bad, words in (
        (np.full((1, 28, 28), 2.0), r"\[0, 1\].*got 2 to 2;"),
        (torch.full((1, 28, 28), -1.0), r"\[0, 1\].*-1 to -1"),
        (np.zeros((1, 28, 28), np.int32), "dtype int32"),
        (torch.zeros(1, 28, 28, dtype=torch.int64), "dtype torch.int64"),
    ):
        with pytest.raises(densa.DensaError, match=words):
            scale_images(bad)


# --------------------------------------------------------------------------- the one evaluator


def test_score_against_sklearn_and_torch_and_by_shards():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(1000, 10, generator=g) * 3, torch.randint(0, 10, (1000,), generator=g)
    r = score(logits, labels)
    probs = torch.softmax(logits.double(), 1).numpy()
    assert r["loss"] == pytest.approx(log_loss(labels.numpy(), probs, labels=range(10)), rel=1e-9)
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert r["correct"] == int((logits.argmax(1) == labels).sum()) and r["n"] == 1000
    assert r["acc"] == r["correct"] / 1000
    parts = [score_parts(logits[i : i + 300], labels[i : i + 300].numpy()) for i in range(0, 1000, 300)]
    summed = {k: sum(p[k] for p in parts) for k in ("loss_sum", "correct", "n")}
    assert summarize(summed)["loss"] == pytest.approx(r["loss"], rel=1e-12)
    assert {k: v for k, v in summarize(summed).items() if k != "loss"} == {
        k: v for k, v in r.items() if k != "loss"
    }
    assert score(torch.empty(0, 10), torch.empty(0)) == {"loss": 0.0, "acc": 0.0, "correct": 0, "n": 0}


# --------------------------------------------------------------------------- models remember their config


def test_models_remember_their_config():
    assert densa.MLP([784, 64, 32, 10], activation="tanh", dropout=0.1).config == densa.ModelConfig(
        hidden=(64, 32), activation="tanh", dropout=0.1
    )
    assert densa.MLP([784, 10]).config == densa.ModelConfig(hidden=())
    assert densa.MLP([576, 128, 10]).config is None  # a CNN's head: not a model on its own
    cnn = densa.CNN(channels=(4,), hidden=(8,), num_classes=5)
    assert cnn.config == densa.ModelConfig(model="cnn", channels=(4,), hidden=(8,), num_classes=5)
    cfg = densa.ModelConfig(hidden=(16,), channels=(3, 3))  # channels mean nothing to an MLP, but are kept
    assert build_model(cfg).config is cfg


def test_save_builds_the_metadata(synth, tmp_path):
    ds = densa.load_dataset("synth")
    torch.manual_seed(0)
    model = densa.MLP([784, 32, 10])
    densa.train(model, ds.train_images, ds.train_labels, epochs=1, batch_size=64)
    path = densa.save(model, tmp_path / "m.safetensors", dataset=ds, metrics={"note": 1})
    loaded = densa.load(path)
    assert isinstance(loaded, densa.TrainedModel) and isinstance(loaded.module, torch.nn.Module)
    assert loaded.module is loaded.model and not loaded.module.training
    assert loaded.config == model.config and loaded.classes == list(ds.classes)
    assert loaded.dataset == "synth" and loaded.preprocess == ds.spec.preprocess
    assert loaded.meta["metrics"] == {"note": 1} and loaded.meta["input"]["scale"] == 1 / 255
    want = densa.predict_proba(model, ds.test_images).numpy()
    assert np.allclose(loaded.predict_proba(ds.test_images), want, atol=1e-6)
    assert loaded.evaluate(ds.test_images, ds.test_labels) == pytest.approx(
        densa.evaluate(model, ds.test_images, ds.test_labels)
    )
    # by name, or a split of the dataset it was trained on, found through DENSA_DATA_DIR
    densa.save(model, tmp_path / "n.safetensors", dataset="synth", train=densa.TrainConfig(epochs=1))
    by_name = densa.load(tmp_path / "n.safetensors")
    assert by_name.meta["train"]["epochs"] == 1
    assert by_name.evaluate(split="test") == loaded.evaluate(ds.test_images, ds.test_labels)


def test_save_refuses_what_it_cannot_describe(tmp_path):
    with pytest.raises(densa.DensaError, match="cannot save a Sequential without its architecture"):
        densa.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), tmp_path / "a")
    with pytest.raises(densa.DensaError, match="5 outputs but dataset 'mnist' has 10 classes"):
        densa.save(densa.MLP([784, 5]), tmp_path / "b.safetensors")
    with pytest.raises(densa.DensaError, match="unknown dataset 'nope'"):
        densa.save(densa.MLP([784, 10]), tmp_path / "c.safetensors", dataset="nope")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- one object, two backends


def test_torch_and_onnx_files_share_one_interface(tiny_run, tmp_path):
    export_run(tiny_run, tmp_path / "m.onnx")
    t, o = densa.load(tiny_run), densa.load(tmp_path / "m.onnx")
    assert type(o).__mro__[1] is densa.TrainedModel and o.module is None and t.module is not None
    assert t.classes == o.classes and t.preprocess == o.preprocess == "mnist" and t.model_id == o.model_id
    assert "via torch" in repr(t) and "via onnxruntime" in repr(o)
    x = pixels(50)
    labels = np.arange(50) % 10
    for m in (t, o):
        p = m.predict_proba(x)
        assert p.shape == (50, 10) and p.dtype == np.float32 and np.allclose(p.sum(1), 1, atol=1e-6)
        # the input rule: uint8 == floats / 255, numpy == torch
        assert np.array_equal(p, m.predict_proba(x.astype(np.float32) / 255))
        assert np.array_equal(p, m.predict_proba(torch.from_numpy(x)))
        assert np.array_equal(m.predict(x), m.logits(x).argmax(1))
        assert m.predict_proba(x[:0]).shape == (0, 10)
        with pytest.raises(densa.DensaError, match=r"shape \(N, 28, 28\), got \(3, 784\)"):
            m.predict_proba(np.zeros((3, 784), np.float32))
        with pytest.raises(densa.DensaError, match=r"\[0, 1\].*0 to 255"):
            m.predict_proba(x.astype(np.float32))
        with pytest.raises(densa.DensaError, match="needs the labels"):
            m.evaluate(x)
    assert np.abs(t.predict_proba(x) - o.predict_proba(x)).max() < 1e-5
    rt, ro = t.evaluate(x, labels), o.evaluate(x, labels)
    assert rt["correct"] == ro["correct"] and abs(rt["loss"] - ro["loss"]) < 1e-5


@pytest.mark.realdata
@pytest.mark.slow
def test_torch_and_onnx_agree_on_real_mnist(mnist_run, tmp_path):
    """densa.load(run).predict_proba(x_uint8) == densa.load(run_onnx).predict_proba(x_uint8) within 1e-5
    on the 10,000 MNIST test images."""
    run, ds = mnist_run
    export_run(run, tmp_path / "run.onnx")
    x = ds.test_images.numpy()
    assert x.dtype == np.uint8 and x.shape == (10_000, 28, 28)
    t, o = densa.load(run), densa.load(tmp_path / "run.onnx")
    pt, po = t.predict_proba(x), o.predict_proba(x)
    worst = float(np.abs(pt - po).max())
    assert worst <= 1e-5, worst
    assert np.array_equal(pt.argmax(1), po.argmax(1))
    rt, ro = t.evaluate(ds.test_images, ds.test_labels), o.evaluate(x, ds.test_labels.numpy())
    assert rt["n"] == ro["n"] == 10_000 and rt["correct"] == ro["correct"] and rt["acc"] > 0.97
    assert abs(rt["loss"] - ro["loss"]) < 1e-5
    print(f"torch vs onnx on MNIST test: max |dp| {worst:.2e}, acc {rt['acc']:.4f}")
