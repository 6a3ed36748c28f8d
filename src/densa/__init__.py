"""densa: train, understand and use dense neural networks on MNIST-family data.

The public API is re-exported here lazily, so `import densa` (and `densa --help`) stay fast:
torch is imported only when a name that needs it is first used.

    ds = densa.load_dataset("mnist")
    model = densa.MLP([784, 512, 10])
    history = densa.train(model, ds.train_images, ds.train_labels, epochs=5)
    print(densa.evaluate(model, ds.test_images, ds.test_labels))
"""

import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "DensaError": "errors",
    "DATASETS": "data",
    "Dataset": "data",
    "load_dataset": "data",
    "MLP": "models",
    "CNN": "models",
    "ModelConfig": "config",
    "PRESETS": "config",
    "resolve": "config",
    "build_model": "models",
    "TrainConfig": "config",
    "train": "train",
    "evaluate": "evaluate",
    "predict_proba": "evaluate",
    "predict": "evaluate",
    "Checkpoint": "checkpoint",
    "save": "checkpoint",
    "load": "checkpoint",
    "OnnxPredictor": "export",
    "export_onnx": "export",
}

__all__ = ["__version__", *_EXPORTS]


class _Package(types.ModuleType):
    # `densa.train` and `densa.evaluate` are functions that share their names with the modules
    # densa/train.py and densa/evaluate.py. Importing a submodule would rebind the package
    # attribute to the module; keep the function instead (submodules stay in sys.modules).
    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _EXPORTS:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"densa.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'densa' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
