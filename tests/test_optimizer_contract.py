"""The contract every optimizer of keras_rmda keeps, one parametrised suite.

fit, XLA, .keras save/load/continue, MirroredStrategy, mixed precision and
bad input; a new optimizer joins by adding an entry to
optimizer_cases.OPTIMIZERS.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_rmda as kr

import compiled
import optimizer_cases as cases

NAMES = sorted(cases.OPTIMIZERS)


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.trainable_variables]


def _zero_groups(kernel):
    """Input groups (axis −2) of a kernel that are exactly zero."""
    w = keras.ops.convert_to_numpy(kernel)
    return np.all(w == 0.0, axis=tuple(a for a in range(w.ndim) if a != w.ndim - 2))


@pytest.mark.parametrize("name", NAMES)
def test_fit_trains(name):
    model = cases.compile_model(cases.small_cnn(), cases.OPTIMIZERS[name]())
    history = model.fit(*cases.data(), batch_size=16, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0] and np.isfinite(losses).all()
    assert all(np.isfinite(w).all() for w in _weights(model))


@pytest.mark.parametrize("name", NAMES)
def test_fit_leaves_exact_zero_groups(name):
    case = cases.OPTIMIZERS[name]
    model = cases.compile_model(cases.small_cnn(), case(case.sparsifies))
    model.fit(*cases.data(), batch_size=16, epochs=6, verbose=0)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    assert any(_zero_groups(k).any() for k in kernels), "no group was zeroed"


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_no_jit_give_the_same_weights(name):
    results = []
    for jit in (False, True):
        model = cases.compile_model(cases.small_cnn(), cases.OPTIMIZERS[name](), jit_compile=jit)
        model.fit(*cases.data(), batch_size=32, epochs=3, shuffle=False, verbose=0)
        results.append(_weights(model))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("regularizer", [kr.GroupLasso(0.05), kr.L1(0.01), kr.NuclearNorm(0.5)],
                         ids=["group_lasso", "l1", "nuclear"])
def test_apply_compiles_with_xla_and_matches_eager(name, regularizer):
    """TPU/GPU readiness without the hardware: the whole update, every
    regulariser, on static shapes, under XLA alone (no op may fall back)."""
    shapes = [(3, 3, 4, 6), (6,), (24, 10)]  # conv kernel, bias, dense kernel
    groupings = [kr.groups.InputChannels(), None, kr.groups.InputUnits()]
    results = []
    for jit in (False, True):
        variables = []
        for i, (shape, grouping) in enumerate(zip(shapes, groupings)):
            variable = keras.Variable(np.linspace(-1, 1, np.prod(shape)).reshape(shape)
                                      .astype("float32"), name=f"v{i}")
            variable.constraint = grouping
            variables.append(variable)
        optimizer = cases.OPTIMIZERS[name].make(regularizer)
        optimizer.build(variables)
        apply = (compiled.jit_apply(optimizer, variables) if jit else
                 lambda *g: optimizer.apply(list(g), variables))
        for step in range(4):
            step_rng = np.random.default_rng(step)
            apply(*[step_rng.normal(size=s).astype("float32") for s in shapes])
        results.append([keras.ops.convert_to_numpy(v) for v in variables])
    # The nuclear prox's float32 eigendecomposition is less exact (1e-4, as in
    # the golden tests).
    tolerance = 1e-4 if isinstance(regularizer, kr.NuclearNorm) else 1e-5
    for eager, xla in zip(*results):
        assert np.all(np.isfinite(xla))
        np.testing.assert_allclose(xla, eager, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_continue_equals_uninterrupted(name, tmp_path):
    x, y = cases.data()
    model = cases.compile_model(cases.small_cnn(), cases.OPTIMIZERS[name](finalize=False))
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    # A fresh process would only `import keras_rmda`; clear the session to be close.
    keras.backend.clear_session()
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() != {} and loaded.optimizer.regularizer is not None
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        assert a.constraint == b.constraint
    loaded.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(_weights(model), _weights(loaded)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_mirrored_strategy_matches_one_device(name):
    here = os.path.dirname(__file__)
    result = subprocess.run(
        [sys.executable, os.path.join(here, "distributed_run.py"), name],
        capture_output=True, text=True, cwd=here,
        env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["max_diff"] <= 1e-5
    assert report["replicas_agree"]
    if report["steps_after_restart"] is not None:  # optimizers with stages
        assert set(report["steps_after_restart"]) == {0.0}


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision_keeps_exact_zeros(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    case = cases.OPTIMIZERS[name]
    model = cases.compile_model(cases.small_cnn(), case(case.sparsifies, finalize=False))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.fit(*cases.data(), batch_size=16, epochs=6, verbose=0)
    assert all(np.isfinite(w).all() for w in _weights(model))
    inner = kr.proximal_optimizer_of(model)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    zero_groups = [_zero_groups(inner.prox_point(k)) for k in kernels]
    assert any(z.any() for z in zero_groups)
    inner.finalize = True  # through the LossScaleOptimizer, as fit's end does
    model.optimizer.finalize_variable_values(model.trainable_variables)
    for kernel, zeros in zip(kernels, zero_groups):
        assert np.array_equal(_zero_groups(kernel), zeros)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kwargs,message",
    [({"learning_rate": -1.0}, "Received: learning_rate=-1.0"),
     ({"groups": "rows"}, "Received: groups='rows'"),
     ({"regularizer": 0.1}, "Received: regularizer=0.1"),
     ({"use_ema": True}, "use_ema=True")],
)
def test_bad_input_raises_with_the_received_value(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cases.OPTIMIZERS[name](**kwargs)
