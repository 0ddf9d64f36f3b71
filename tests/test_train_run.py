"""`keras-rmda train` run directories on real MNIST: what is reported is what is saved.

In-process through `cli.main` (one TensorFlow import for all of them); the
subprocess tests of the command line are in test_cli.py.
"""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr
from contextlib import redirect_stdout

import keras
import numpy as np
import pytest

import keras_rmda  # noqa: F401 (registers the objects the .keras files hold)
from keras_rmda import cli
from keras_rmda import datasets
from offline_data import MNIST_DIR
from offline_data import needs_mnist

# No milestones: c stays 0.1 < 1, so the iterate W and the saved W̃ differ.
TINY = ["train", "--preset", "lenet5-mnist", "--optimizer", "rmda", "--milestones", "none",
        "--lambda", "0.02", "--batch-size", "64", "--limit-train", "256", "--limit-val", "256",
        "--epochs", "2", "--verbose", "0"]


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_info:  # argparse
            code = exit_info.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
@needs_mnist
def test_reported_figures_are_the_saved_model_s_and_restarts_are_safe(tmp_path):
    run = tmp_path / "run"
    # A run that fails before its first epoch (no data there) ...
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _main(TINY + ["--data-dir", str(empty), "--out", str(run)])
    assert code == 2 and "'mnist'" in err
    assert (run / "run.json").is_file()
    # ... does not block the corrected command, which needs no --resume.
    code, out, err = _main(TINY + ["--data-dir", MNIST_DIR, "--out", str(run)])
    assert code == 0, err
    assert "never completed an epoch" in out

    rows = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    saved = keras.saving.load_model(run / "model.keras")
    val = datasets.load("mnist", "test", 64, data_dir=MNIST_DIR, limit=256)
    results = saved.evaluate(val, verbose=0, return_dict=True)
    assert results["accuracy"] == rows[-1]["val_accuracy"] == summary["val_accuracy"]
    np.testing.assert_allclose(results["loss"], rows[-1]["val_loss"], rtol=1e-6)
    assert "iterate_val_accuracy" in rows[-1] and "iterate_val_accuracy" in summary
    assert f"{summary['val_accuracy']:.4f}" in (run / "report.txt").read_text()
    assert "(model.keras)" in (run / "report.txt").read_text()
    # W ≠ W̃ here: the test compares the two models, not two copies of one.
    checkpoint = keras.saving.load_model(run / "checkpoint.keras")
    assert any(not np.array_equal(a, b)
               for a, b in zip(saved.get_weights(), checkpoint.get_weights()))

    # --resume on a finished run leaves every file as it is.
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, out, err = _main(TINY + ["--data-dir", MNIST_DIR, "--out", str(run), "--resume"])
    assert code == 0, err
    assert "finished 2 epochs already" in out and "left as it is" in out
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # Finished at the last checkpoint but not written (a crash after it):
    # --resume finishes it exactly as fit did, at the prox point.
    (run / "summary.json").unlink()
    (run / "model.keras").unlink()
    code, out, err = _main(TINY + ["--data-dir", MNIST_DIR, "--out", str(run), "--resume"])
    assert code == 0, err
    again = keras.saving.load_model(run / "model.keras")
    for a, b in zip(saved.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@needs_mnist
def test_a_diverging_run_stops_without_writing_a_model(tmp_path):
    run = tmp_path / "run"
    code, out, err = _main(TINY + ["--data-dir", MNIST_DIR, "--out", str(run), "--lr", "1e30"])
    assert code == 1 and "diverged in epoch 1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "model.keras").exists() and not (run / "checkpoint.keras").exists()
    assert not (run / "summary.json").exists()


@pytest.mark.parametrize("flag,value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--lambda", "inf"), ("--lambda", "-1"),
    ("--milestones", ","), ("--milestones", ""), ("--milestones", "30,,60"),
    ("--milestones", "60,30"), ("--milestones", "0"),
])
def test_bad_flag_values_are_one_line_errors(flag, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(["train", "--preset", "lenet5-mnist", flag, value])
    assert code == 2 and flag in err and repr(value) in err
    assert len(err.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_milestones_none_means_one_stage():
    args = cli._parser().parse_args(["train", "--preset", "lenet5-mnist", "--milestones", "none"])
    assert args.milestones == ()


def test_train_help_lists_presets_and_optimizers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line wrap inside hyphenated names
    code, out, _ = _main(["train", "--help"])
    assert code == 0
    text = " ".join(out.split())
    for name in keras_rmda.presets.EXPERIMENTS + keras_rmda.presets.OPTIMIZERS:
        assert name in text, name


def test_truncated_model_file_is_named_as_existing_but_unreadable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.save("whole.keras")
    data = (tmp_path / "whole.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    code, _, err = _main(["report", "cut.keras"])
    assert code == 2 and "'cut.keras'" in err and "exists" in err
    assert "not found" not in err.lower() and len(err.strip().splitlines()) == 1


def test_help_and_flag_mistakes_do_not_import_tensorflow():
    # The console script's launcher parses before the package (hence
    # TensorFlow) is imported; a command that parses runs for real.
    code = ("import sys\nimport keras_rmda_cli\n"
            "for argv in (['--help'], ['train', '--help'], ['train', '--milestones', ',']):\n"
            "    try:\n        keras_rmda_cli.main(argv)\n    except SystemExit:\n        pass\n"
            "print('TF', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
            "print('status', keras_rmda_cli.main(['report', 'no-such-model.keras']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lenet5-mnist" in result.stdout and "'none'" in result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["TF []", "status 2"]
    assert "no-such-model.keras" in result.stderr  # the real command ran
