"""The planted-structure study: the data, the student, the scores, a tiny run."""

import keras
import numpy as np
import pytest

from keras_rmda import groups
from keras_rmda.experiments import planted

TINY = {"num_features": 10, "num_train": 256, "num_val": 128, "hidden_units": 4}


def test_planted_zero_groups_are_never_read_by_the_teacher():
    problem = planted.planted_problem(seed=3, **TINY)
    first = keras.ops.convert_to_numpy(problem.teacher.layers[0].kernel)
    assert problem.zero_groups.sum() == round(0.7 * 10)
    assert np.all(first[problem.zero_groups] == 0.0)
    assert np.all(np.any(first[~problem.zero_groups] != 0.0, axis=1))
    x = problem.x_val.copy()
    x[:, problem.zero_groups] = np.random.default_rng(0).normal(size=(len(x), 7)) * 10
    np.testing.assert_allclose(keras.ops.convert_to_numpy(problem.teacher(x)),
                               keras.ops.convert_to_numpy(problem.teacher(problem.x_val)),
                               rtol=1e-5, atol=1e-5)
    assert problem.x_train.shape == (256, 10) and problem.y_val.shape == (128,)
    assert set(np.unique(problem.y_train)) <= set(range(problem.num_classes))


def test_the_same_seed_gives_the_same_problem_and_another_seed_another():
    a, b = planted.planted_problem(seed=1, **TINY), planted.planted_problem(seed=1, **TINY)
    c = planted.planted_problem(seed=2, **TINY)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.zero_groups, b.zero_groups)
    assert not np.array_equal(a.x_train, c.x_train)


def test_student_has_the_teachers_shape_and_input_groups():
    problem = planted.planted_problem(seed=0, **TINY)
    student = planted.student_model(problem, seed=0)
    assert [w.shape for w in student.weights] == [w.shape for w in problem.teacher.weights]
    assert isinstance(planted.first_layer_kernel(student).constraint, groups.InputUnits)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"zero_fraction": 1.0}, "Received: zero_fraction=1.0"),
     ({"num_classes": 1}, "Received: num_classes=1"),
     ({"noise": -1.0}, "Received: noise=-1.0")],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        planted.planted_problem(**kwargs)


def test_recovery_scores():
    planted_zero = np.array([True, True, False, False])
    assert planted.recovery_scores(planted_zero, planted_zero) == (1.0, 1.0, 1.0)
    precision, recall, f1 = planted.recovery_scores([True, False, True, False], planted_zero)
    assert (precision, recall, f1) == (0.5, 0.5, 0.5)
    assert planted.recovery_scores([False] * 4, planted_zero)[2] == 0.0


@pytest.mark.slow
def test_a_tiny_identification_run_reports_every_field():
    results = planted.run_identification(methods=("rmda", "proxsgd"), epochs=4, seeds=(0,),
                                         lambdas=(0.02, 0.5), problem_options=TINY)
    assert set(results) == {"rmda", "proxsgd"}
    for summary in results.values():
        assert summary["strength"] in (0.02, 0.5)
        (run,) = summary["runs"]
        assert [r["epoch"] for r in run["records"]] == [1, 2, 3, 4]
        assert 0 <= run["last_flip_epoch"] <= 4 and 0.0 <= run["f1"] <= 1.0
        flips = [r["epoch"] for r in run["records"] if r["flips"]]
        assert run["last_flip_epoch"] == (flips[-1] if flips else 0)
        assert summary["median_f1"] == run["f1"]
    with pytest.raises(ValueError, match="Received: method='sgd'"):
        planted.run_identification(methods=("sgd",), epochs=1, seeds=(0,), problem_options=TINY)
