"""A synthetic rule learned by one Linear layer and a sigmoid: a 5-dimensional x is
positive (1) when x[0] > x[4], negative (0) otherwise.

The rule is linear (x[0] - x[4] > 0), so Linear(5, 1) + Sigmoid can represent it exactly;
trained with Adam on the binary cross entropy it gets nearly every sample right, and its
weights point along (1, 0, 0, 0, -1).

    python examples/rule_x0_gt_x4.py
"""

from __future__ import annotations

import numpy as np

from nnkern import nn, optim


def make_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = (x[:, 0] > x[:, 4]).astype(np.float32).reshape(-1, 1)
    return x, y


def main(*, n_train=2000, n_test=1000, epochs=20, batch_size=32, lr=0.05, seed=0, backend=None):
    """Train and test the rule; returns the test accuracy."""
    x_train, y_train = make_data(n_train, seed)
    x_test, y_test = make_data(n_test, seed + 1)
    model = nn.Sequential(nn.Linear(5, 1, init="xavier", seed=seed), nn.Sigmoid(), backend=backend)
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, optimizer=optim.Adam(lr=lr),
              loss="bce", seed=seed, verbose=False)
    predicted = model.predict(x_test) > 0.5
    accuracy = float(np.mean(predicted == (y_test > 0.5)))
    w = model.parameters()[0].ravel()
    print(f"test accuracy {accuracy:.2%} on {n_test} new samples")
    direction = np.array2string(w / np.linalg.norm(w), precision=3)
    print(f"weights / |w|: {direction}  (the rule: (0.707, 0, 0, 0, -0.707))")
    for row, label, p in zip(x_test[:5], y_test[:5, 0], model.predict(x_test[:5])[:, 0]):
        print(f"x = {np.array2string(row, precision=2)}  x[0] > x[4]: {bool(label)!s:5}  p = {p:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
