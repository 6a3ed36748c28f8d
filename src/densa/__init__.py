"""densa: train, understand and use dense neural networks on MNIST-family data.

The public API is re-exported here lazily, so `import densa` (and `densa --help`) stay fast:
torch is imported only when a name that needs it is first used.

    ds = densa.load_dataset("mnist")
    model = densa.MLP([784, 512, 10])
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=5)
    densa.save(model, "runs/mlp/model.safetensors", dataset=ds)
    trained = densa.load("runs/mlp")  # or an .onnx file from densa.export_onnx / `densa export`
    print(trained.evaluate(ds.test_images, ds.test_labels), trained.predict_proba(ds.test_images[:3]))
    trained.decide(images)  # [densa.Decision]: the answer, or "not sure" / "not a digit" and why
"""

from ._version import __version__

_EXPORTS = {  # public name -> the module that defines it
    "DensaError": "core.errors",
    "DATASETS": "core.data",
    "Dataset": "core.data",
    "load_dataset": "core.data",
    "MLP": "core.models",
    "CNN": "core.models",
    "ModelConfig": "core.config",
    "PRESETS": "core.config",
    "resolve": "core.config",
    "build_model": "core.models",
    "TrainConfig": "core.config",
    "train": "training.loop",
    "evaluate": "core.evaluate",
    "predict_proba": "core.evaluate",
    "predict": "core.evaluate",
    "Checkpoint": "core.checkpoint",
    "save": "core.checkpoint",
    "load": "inference.predictor",
    "TrainedModel": "inference.model",
    "Decision": "inference.decision",
    "fit_detector": "core.detector",
    "OnnxPredictor": "inference.onnx_file",
    "export_onnx": "inference.onnx_file",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"densa.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'densa' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
