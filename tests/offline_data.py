"""Where the tests find the prepared offline MNIST (never downloaded).

`$TFDS_DATA_DIR` when it holds mnist, else the project's shared copy beside
the repository (`../shared/data/tensorflow_datasets`). Tests that need it are
skipped, with the directories tried, when neither holds it.
"""

import os

import pytest

_SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                       "data", "tensorflow_datasets"))
_CANDIDATES = [d for d in (os.environ.get("TFDS_DATA_DIR"), _SHARED) if d]


def _holds_mnist(directory):
    return os.path.isdir(os.path.join(directory, "mnist"))


MNIST_DIR = next((os.path.abspath(d) for d in _CANDIDATES if _holds_mnist(d)), _SHARED)
needs_mnist = pytest.mark.skipif(
    not _holds_mnist(MNIST_DIR),
    reason=f"offline MNIST not found in {' or '.join(_CANDIDATES)} (set TFDS_DATA_DIR)")
