"""The model, the explicit loop and the Python API: shapes, determinism, and the real-data accuracy bar."""

import json
import re

import pytest
import torch

import densa
from densa.cli import main
from densa.data import load_dataset
from densa.models import count_parameters


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
    with pytest.raises(densa.DensaError, match="unknown activation 'softmax'"):
        densa.MLP([784, 10], activation="softmax")
    with pytest.raises(densa.DensaError, match="positive integers"):
        densa.MLP([784, 0, 10])


def test_api_names_are_functions_even_after_submodule_imports():
    import densa.evaluate  # noqa: F401
    import densa.train  # noqa: F401

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

    from densa.checkpoint import build_meta, dataset_meta

    cfg = densa.ModelConfig(hidden=(64,))
    densa.save(model, tmp_path / "m.safetensors", build_meta(cfg, dataset_meta(ds.spec)))
    loaded = densa.load(tmp_path / "m.safetensors")
    assert not loaded.model.training
    assert torch.equal(
        densa.predict_proba(loaded.model, ds.test_images), densa.predict_proba(model, ds.test_images)
    )


@pytest.mark.realdata
@pytest.mark.slow
def test_default_recipe_on_real_mnist(real_mnist, tmp_path, capsys):
    """The seed tutorial's recipe, end to end through the CLI, on the real files."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert len(re.findall(r"^Epoch \d - loss: \d\.\d{4} - acc: \d\.\d{4}", text, re.M)) == 5
    summary = json.loads((out / "summary.json").read_text())
    print(f"default recipe: test_acc {summary['test_acc']:.4f}, train {summary['train_time_s']:.1f}s")
    assert summary["test_n"] == 10000
    assert summary["test_acc"] >= 0.975
    assert "predictions[0].argmax() = 7" in text and "test_labels[0] = 7" in text
