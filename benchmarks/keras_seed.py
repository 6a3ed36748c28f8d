"""The seed recipe in Keras 3, the peer densa is measured against (benchmarks/bench_peers.py).

    ~/.cache/densa-bench/keras-venv/bin/python benchmarks/keras_seed.py   (DENSA_DATA_DIR set)

784 -> Dense(512, relu) -> Dense(10) on logits, Adam 1e-3 (epsilon 1e-8, as torch's), sparse categorical
cross-entropy, batch 128, 5 epochs, shuffled each epoch, written the way the Keras guides write it
(model.fit, model.evaluate). It reads the same four MNIST IDX files densa reads, from
$DENSA_DATA_DIR/mnist/ (gzip'd or not), with numpy only: this runs in a venv with Keras and
TensorFlow and without densa or torch. Prints Keras' epoch lines and `test_acc: 0.xxxx`.
"""

import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np


def read_idx(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    opener = open
    if not path.exists():
        path, opener = folder / f"{name}.gz", gzip.open
    with opener(path, "rb") as fh:
        data = fh.read()
    (magic,) = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    if "DENSA_DATA_DIR" not in os.environ:
        sys.exit("set DENSA_DATA_DIR to the folder holding mnist/")
    folder = Path(os.environ["DENSA_DATA_DIR"]) / "mnist"
    x = read_idx(folder, "train-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
    y = read_idx(folder, "train-labels-idx1-ubyte").astype("int64")
    xt = read_idx(folder, "t10k-images-idx3-ubyte").reshape(-1, 784).astype("float32") / 255
    yt = read_idx(folder, "t10k-labels-idx1-ubyte").astype("int64")

    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=128, epochs=5, shuffle=True, verbose=2)
    _, acc = model.evaluate(xt, yt, batch_size=128, verbose=0)
    print(f"keras {keras.__version__} · backend {keras.backend.backend()}")
    print(f"test_acc: {acc:.4f}")


if __name__ == "__main__":
    main()
