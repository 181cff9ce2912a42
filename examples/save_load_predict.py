"""Train a network briefly, save its weights, load them into a new model, and use that
model: predictions for a few test images and the accuracy on the whole test set.

    python examples/save_load_predict.py [PATH]
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from nnkern import nn, optim
from nnkern.data import load_mnist


def main(path=None, *, epochs=1, limit=10000, data=None, seed=0, backend=None):
    """Returns (test accuracy of the loaded model, whether its predictions equal the original's)."""
    (x_train, y_train), (x_test, y_test) = load_mnist(data)
    model = nn.Sequential(nn.Linear(784, 128, seed=seed), nn.ReLU(), nn.Linear(128, 10, seed=seed + 1),
                          backend=backend)
    model.fit(x_train[:limit], y_train[:limit], epochs=epochs, batch_size=64,
              optimizer=optim.SGD(0.05, momentum=0.9), seed=seed, verbose=False)

    with tempfile.TemporaryDirectory() as scratch:
        path = path or os.path.join(scratch, "mnist_mlp.npz")
        model.save(path)
        print(f"saved the trained model to {path} ({os.path.getsize(path):,} bytes)")
        loaded = nn.load(path, backend=backend)

    same = bool(np.array_equal(loaded.predict(x_test), model.predict(x_test)))
    predicted = loaded.predict_classes(x_test[:10])
    print(f"predicted: {predicted}")
    print(f"true:      {y_test[:10]}")
    loss, accuracy = loaded.evaluate(x_test, y_test)
    print(f"loaded model: test accuracy {accuracy:.2%}, loss {loss:.4f};"
          f" predictions identical to the original's: {same}")
    return accuracy, same


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
