"""The optimizers on Keras's JAX backend, with TensorFlow unimportable.

This is how the package runs (and is timed) on an accelerator machine that
has JAX but no TensorFlow: `import keras_rmda` must not need TensorFlow,
and the update rules, written with `keras.ops`, must match the NumPy
reference there too, eagerly and under `jax.jit`.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# The backend-neutral tests: golden tests against the NumPy reference (eager
# and jitted), every optimizer's apply under XLA, and fit leaving exact zeros.
TESTS = [
    "test_rmda_golden.py",
    "test_prox.py",
    "test_shared_groups.py",
    "test_optimizer_contract.py::test_apply_compiles_with_xla_and_matches_eager",
    "test_optimizer_contract.py::test_fit_leaves_exact_zero_groups[rmda]",
]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_backend_neutral_suites_pass_on_jax_without_tensorflow():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.join(HERE, "without_tensorflow"), HERE]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *[os.path.join(HERE, t) for t in TESTS]]
    # No timeout of its own: pytest-timeout is the hang guard; a loaded machine is
    # only slower, never a failure.
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail, tail


def test_import_needs_no_tensorflow():
    """Cheap and always run: the package imports with TensorFlow blocked."""
    env = dict(os.environ, KERAS_BACKEND="numpy",
               PYTHONPATH=os.path.join(HERE, "without_tensorflow"))
    code = ("import sys, keras_rmda; "
            "assert not any(m.startswith('tensorflow') for m in sys.modules), 'tf imported'; "
            "print(keras_rmda.RMDA().name)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.strip() == "rmda", result.stderr[-2000:]
