"""The model, the explicit loop and the Python API: shapes, determinism, and the real-data accuracy bar."""

import importlib
import json
import re

import pytest
import torch

import densa
from densa.cli import main
from densa.core.data import load_dataset
from densa.core.models import count_parameters


def test_mlp_is_the_tutorials_network():
    torch.manual_seed(0)
    model = densa.MLP([784, 512, 10])
    assert [type(m).__name__ for m in model.net] == ["Linear", "ReLU", "Linear"]
    assert count_parameters(model) == 784 * 512 + 512 + 512 * 10 + 10
    x = torch.rand(3, 28, 28)
    assert torch.equal(model(x), model(x.reshape(3, 784))) and model(x).shape == (3, 10)
    deep = densa.MLP([784, 64, 32, 10], activation="tanh", dropout=0.1)
    assert [type(m).__name__ for m in deep.net] == [
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
    ]


def test_bad_mlp_arguments():
    with pytest.raises(densa.DensaError, match=r"activation must be one of relu, .* \(got 'softmax'\)"):
        densa.MLP([784, 10], activation="softmax")
    with pytest.raises(densa.DensaError, match="positive integers"):
        densa.MLP([784, 0, 10])


def test_api_names_are_functions_even_after_submodule_imports():
    import densa.core.evaluate  # noqa: F401
    import densa.training.loop  # noqa: F401

    assert callable(densa.train) and densa.train.__name__ == "train"
    assert callable(densa.evaluate) and densa.evaluate.__name__ == "evaluate"


def _fit(ds, seed, epochs=2):
    torch.manual_seed(seed)
    model = densa.MLP([784, 64, 10])
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=epochs, seed=seed, batch_size=32)
    return model, history


def test_same_seed_same_bits(synth):
    ds = load_dataset("synth")
    a, ha = _fit(ds, 3)
    b, hb = _fit(ds, 3)
    c, _ = _fit(ds, 4)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in ha]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in hb]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_train_learns_and_api_round_trip(synth, tmp_path):
    ds = load_dataset("synth")
    model, history = _fit(ds, 0, epochs=3)
    assert history[-1]["loss"] < history[0]["loss"]
    result = densa.evaluate(model, ds.test_images, ds.test_labels)
    assert result["acc"] > 0.9 and result["n"] == 300
    probs = densa.predict_proba(model, ds.test_images[:7])
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(1), torch.ones(7))
    assert torch.equal(densa.predict(model, ds.test_images[:7]), probs.argmax(1))
    # float input in [0, 1] is the same as uint8
    assert torch.allclose(densa.predict_proba(model, ds.test_images[:7].float() / 255), probs)

    from densa.core.checkpoint import build_meta, dataset_meta

    cfg = densa.ModelConfig(hidden=(64,))
    densa.save(model, tmp_path / "m.safetensors", build_meta(cfg, dataset_meta(ds.spec)))
    loaded = densa.load(tmp_path / "m.safetensors")
    assert not loaded.model.training
    assert torch.equal(
        densa.predict_proba(loaded.model, ds.test_images), densa.predict_proba(model, ds.test_images)
    )


@pytest.mark.realdata
@pytest.mark.slow
def test_default_recipe_on_real_mnist(mnist_run):
    """The seed tutorial's recipe, end to end through the CLI (`densa train`, no flags), on the real files."""
    out, _ = mnist_run
    text = (out.parent / "train-stdout.txt").read_text()
    assert len(re.findall(r"^Epoch \d - loss: \d\.\d{4} - acc: \d\.\d{4}", text, re.M)) == 5
    summary = json.loads((out / "summary.json").read_text())
    print(f"default recipe: test_acc {summary['test_acc']:.4f}, train {summary['train_time_s']:.1f}s")
    assert summary["test_n"] == 10000
    assert summary["test_acc"] >= 0.975
    assert "predictions[0].argmax() = 7" in text and "test_labels[0] = 7" in text


# --------------------------------------------------------------------------- the training options

train_module = importlib.import_module("densa.training.loop")


def test_default_recipe_is_the_tutorials_loop_bit_for_bit(synth):
    """Oracle: the tutorial's loop written out by hand (Adam 1e-3, batches of 128, seeded permutation)."""
    ds = load_dataset("synth")
    torch.manual_seed(0)
    model = densa.MLP([784, 512, 10])
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=2)

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = ds.train_images.reshape(-1, 784).float() / 255
    for _ in range(2):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(ref(x[idx]), ds.train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [r["epoch"] for r in history] == [1, 2]
    for a, b in zip(model.net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)  # fused vs for-loop Adam differ in the last bits only


def test_lr_schedules():
    c = densa.TrainConfig(lr=1.0, schedule="constant")
    assert [train_module.lr_at(s, 10, c) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    c = densa.TrainConfig(lr=1.0, schedule="onecycle", warmup=0.2)
    lrs = [train_module.lr_at(s, 10, c) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[2:] == sorted(lrs[2:], reverse=True) and 0 < lrs[-1] <= 0.125
    c = densa.TrainConfig(lr=1.0, schedule="cosine")
    assert train_module.lr_at(0, 10, c) == 1.0 and abs(train_module.lr_at(5, 10, c) - 0.5) < 1e-12


def test_random_shift_against_a_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (6, 28, 28), dtype=torch.uint8)
    out = train_module.random_shift(x, 2, g)
    d = torch.randint(-2, 3, (2, 6, 1), generator=torch.Generator().manual_seed(1))
    for i in range(6):
        dy, dx = int(d[0, i]), int(d[1, i])
        want = torch.zeros(28, 28, dtype=torch.uint8)
        ys, xs = slice(max(dy, 0), 28 + min(dy, 0)), slice(max(dx, 0), 28 + min(dx, 0))
        want[ys, xs] = x[i, max(-dy, 0) : 28 - max(dy, 0), max(-dx, 0) : 28 - max(dx, 0)]
        assert torch.equal(out[i], want), (i, dy, dx)
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_holdout_is_seeded_disjoint_and_complete():
    tr, va = train_module.holdout(1000, 0.1, seed=3)
    assert len(va) == 100 and len(tr) == 900
    assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(1000))
    assert torch.equal(train_module.holdout(1000, 0.1, seed=3)[1], va)
    assert not torch.equal(train_module.holdout(1000, 0.1, seed=4)[1], va)
    with pytest.raises(densa.DensaError, match="empty train or val set"):
        train_module.holdout(5, 0.01, seed=0)


@pytest.mark.parametrize(
    "kind, extra",
    [("adam", {}), ("adamw", {"weight_decay": 0.1}), ("sgd", {"lr": 0.05, "nesterov": True})],
)
def test_optimisers_train(synth, kind, extra):
    ds = load_dataset("synth")
    torch.manual_seed(0)
    model = densa.MLP([784, 32, 10])
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=2, optimizer=kind, **extra)
    assert history[-1]["loss"] < history[0]["loss"]
    opt = train_module.make_optimizer(model, densa.TrainConfig(optimizer=kind, **extra))
    group = opt.state_dict()["param_groups"][0]
    assert group["weight_decay"] == extra.get("weight_decay", 0.0) and group["fused"] is True
    assert group.get("decoupled_weight_decay", False) is (kind == "adamw")
    assert group.get("nesterov", False) is extra.get("nesterov", False)


def test_cnn_shapes_and_layers():
    from densa.core.models import CNN

    torch.manual_seed(0)
    model = CNN(channels=(8, 16), hidden=(32,), dropout=0.1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0] is model.features[0] and convs[0].in_channels == 1 and len(convs) == 2
    model.eval()
    x = torch.rand(5, 28, 28)
    out = model(x)
    assert out.shape == (5, 10)
    assert torch.equal(out, model(x.reshape(5, 784))) and torch.equal(out, model(x.reshape(5, 1, 28, 28)))
    # oracle: the same weights applied with plain NCHW functional ops (the model runs channels-last)
    import torch.nn.functional as F

    h = x.reshape(5, 1, 28, 28)
    for conv, bn in ((model.features[0], model.features[1]), (model.features[4], model.features[5])):
        h = F.conv2d(h, conv.weight.contiguous(), padding=1)
        h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False)
        h = F.max_pool2d(F.relu(h), 2)
    lin1, lin2 = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    ref = F.linear(F.relu(F.linear(h.flatten(1), lin1.weight, lin1.bias)), lin2.weight, lin2.bias)
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(densa.DensaError, match="channels must be"):
        CNN(channels=())
    with pytest.raises(densa.DensaError, match=r"dropout must be a number in \[0, 1\)"):
        CNN(dropout=1.0)


def test_presets_resolve_and_flags_override():
    from densa.core.config import PRESETS, resolve

    m, c = resolve("seed")
    assert m == densa.ModelConfig() and c == densa.TrainConfig()
    m, c = resolve("cnn", lr=0.01, hidden=(64,), seed=None)
    assert m.model == "cnn" and m.hidden == (64,) and c.lr == 0.01 and c.seed == 0
    assert c.optimizer == PRESETS["cnn"]["optimizer"] and c.precision == "fp32"
    with pytest.raises(densa.DensaError, match="unknown preset 'best'"):
        resolve("best")
    # a preset's per-dataset tweaks sit between the preset and the flags
    from densa.core.config import PRESET_DATASET_TWEAKS

    tweaks = PRESET_DATASET_TWEAKS[("mlp", "fashion-mnist")]
    c = resolve("mlp", dataset="fashion-mnist")[1]
    assert all(getattr(c, k) == v for k, v in tweaks.items()) and "shift" in tweaks
    assert resolve("mlp")[1].shift == PRESETS["mlp"]["shift"] != tweaks["shift"]
    assert resolve("mlp", dataset="fashion-mnist", shift=3)[1].shift == 3


def test_cnn_run_loads_from_the_file_alone(synth, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--preset", "cnn", "--channels", "4,8", "--hidden", "16", "--epochs", "1", "--out", str(out)]
    assert main(["train", "--dataset", "synth", *flags]) == 0
    assert "Conv2d(1, 4, kernel_size=(3, 3)" in capsys.readouterr().out
    ckpt = densa.load(out / "model.safetensors")
    assert ckpt.config.model == "cnn" and ckpt.config.channels == (4, 8)
    assert ckpt.meta["train"]["preset"] == "cnn" and ckpt.meta["train"]["optimizer"] == "adamw"
    assert isinstance(ckpt.model.features[0], torch.nn.Conv2d)
    ds = load_dataset("synth")
    assert (
        densa.evaluate(ckpt.model, ds.test_images, ds.test_labels)["acc"] == ckpt.meta["metrics"]["test_acc"]
    )


def test_val_split_early_stop_and_best_model(synth, tmp_path, capsys, monkeypatch):
    """After epoch 1 the loop climbs the loss (a negative LR): training stops and epoch 1 is kept."""
    real = train_module.lr_at
    monkeypatch.setattr(train_module, "lr_at", lambda s, t, c: real(s, t, c) if s < 7 else -1e-3)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synth", "--epochs", "6", "--val-split", "0.2", "--early-stop", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("Epoch ")]
    assert re.fullmatch(
        r"Epoch 1 - loss: \d\.\d{4} - acc: \d\.\d{4} - val_loss: \d\.\d{4} - val_acc: \d\.\d{4} - time: .*s",
        lines[0],
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(records, key=lambda r: r["val_loss"])
    assert best["epoch"] == 1 and len(records) == 3  # stopped two epochs after the best
    assert all(r["best_epoch"] == best["epoch"] for r in records[best["epoch"] - 1 :])
    ckpt = densa.load(out)
    assert ckpt.meta["metrics"]["best_epoch"] == best["epoch"]
    assert ckpt.meta["metrics"]["val_loss"] == best["val_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["best_epoch"] == best["epoch"]
    # model.safetensors is the best epoch's model, not the last one
    ds = load_dataset("synth")
    val_idx = train_module.holdout(len(ds.train_images), 0.2, 0)[1]
    r = densa.evaluate(ckpt.model, ds.train_images[val_idx], ds.train_labels[val_idx])
    assert r["loss"] == pytest.approx(best["val_loss"], rel=1e-6)


@pytest.mark.realdata
@pytest.mark.slow
def test_one_epoch_on_real_fashion_mnist(real_fashion, tmp_path, capsys):
    """Training on Fashion-MNIST end to end (CI installs Debian's dataset-fashion-mnist)."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    print(f"fashion-mnist, 1 epoch of the seed recipe: test_acc {summary['test_acc']:.4f}")
    assert summary["test_n"] == 10000 and summary["test_acc"] >= 0.80
    assert "test_labels[0] = 9 (Ankle boot)" in text
    assert densa.load(out).classes[0] == "T-shirt/top"


def test_api_preset_with_val_and_early_stop(synth):
    ds = load_dataset("synth")
    model_config, config = densa.resolve("mlp", hidden=(16,), epochs=2)
    model = densa.build_model(model_config)
    x, y = ds.train_images, ds.train_labels
    history = densa.train(model, x[:800], y[:800], config, val=(x[800:], y[800:]), early_stop=5)
    assert [r["epoch"] for r in history] == [1, 2] and {"val_loss", "val_acc", "best_epoch"} <= history[
        0
    ].keys()
    with pytest.raises(densa.DensaError, match="early stopping watches the val loss"):
        densa.train(model, x, y, config, early_stop=2)


def test_random_flip_mirrors_about_half():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8)
    out = train_module.random_flip(x, g)
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(m != k for m, k in zip(mirrored, kept)) and 70 < sum(mirrored) < 130
    want = torch.rand(200, generator=torch.Generator().manual_seed(0)) < 0.5
    assert mirrored == want.tolist()


def test_fast_preset_is_a_small_mlp_with_a_short_recipe():
    model, config = densa.resolve("fast")
    assert model.model == "mlp" and model.hidden == (256, 256) and model.normalize == (0.1307, 0.3081)
    assert config.epochs < densa.TrainConfig().epochs and config.schedule == "onecycle"
    assert config.precision == "fp32" and config.shift == 0 and config.rotate == 0
    assert densa.resolve("fast", epochs=4)[1].epochs == 4


@pytest.mark.realdata
@pytest.mark.slow
def test_fast_preset_on_real_mnist(real_mnist, tmp_path, capsys):
    """`densa train --preset fast` end to end on the real files: the accuracy bar, never a time."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "fast", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    print(f"fast preset: test_acc {summary['test_acc']:.4f}, train {summary['train_time_s']:.1f}s")
    assert summary["test_n"] == 10000 and summary["epochs"] == densa.PRESETS["fast"]["epochs"]
    assert summary["test_acc"] >= 0.975 and "preset: fast" in capsys.readouterr().out
