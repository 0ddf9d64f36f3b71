"""`keras-rmda` end to end: real subprocesses for the commands, in-process for errors."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_rmda  # noqa: F401 (registers the objects the .keras files hold)
from keras_rmda import cli
from offline_data import MNIST_DIR
from offline_data import needs_mnist

# No --verbose: output to a pipe must default to one line per epoch.
TINY = ["train", "--preset", "lenet5-mnist", "--optimizer", "rmda", "--milestones", "1,2",
        "--lambda", "0.02", "--batch-size", "64", "--limit-train", "256", "--limit-val", "128",
        "--data-dir", MNIST_DIR]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env.pop("TFDS_DATA_DIR", None)
    return env


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "keras_rmda", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, expect_ok=True):
    out, err = process.communicate(timeout=1500)  # a hang guard, not a speed limit
    if expect_ok:
        assert process.returncode == 0, err[-3000:]
    return process.returncode, out, err


def _run(args, cwd, expect_ok=True):
    return _finish(_start(args, cwd), expect_ok)


def _assert_same_files(a, b):
    one, two = keras.saving.load_model(a), keras.saving.load_model(b)
    for x, y in zip(one.get_weights(), two.get_weights()):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(one.optimizer.variables, two.optimizer.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.slow
@needs_mnist
def test_train_resume_report_and_export(tmp_path):
    # The uninterrupted run and the first part of the interrupted one in parallel.
    straight = _start(TINY + ["--epochs", "3", "--out", "straight"], tmp_path)
    _run(TINY + ["--epochs", "2", "--out", "part"], tmp_path)
    _, out, _ = _finish(straight)
    _, resumed_out, _ = _run(TINY + ["--epochs", "3", "--out", "part", "--resume"], tmp_path)

    assert "Epoch 3/3" in out and "Resuming 'part' after epoch 2." in resumed_out
    assert "total" in out and "Summary: epochs 3" in out
    assert "━" not in out and "\r" not in out  # no progress-bar redraws in a log
    assert "val_accuracy" in out and "iterate_val_accuracy" in out
    _assert_same_files(tmp_path / "straight/checkpoint.keras", tmp_path / "part/checkpoint.keras")
    _assert_same_files(tmp_path / "straight/model.keras", tmp_path / "part/model.keras")
    for run in ("straight", "part"):
        directory = tmp_path / run
        for name in ("accuracy.png", "sparsity.png", "report.txt", "summary.json",
                     "structure.json", "run.json", "metrics.csv"):
            assert (directory / name).is_file(), name
        rows = json.loads((directory / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert {"val_accuracy", "group_sparsity", "learning_rate", "momentum"} <= set(rows[0])
        header = (directory / "metrics.csv").read_text().splitlines()[0]
        assert "group_sparsity" in header and len((directory / "metrics.csv").read_text()
                                                  .splitlines()) == 4
    pairs = zip(json.loads((tmp_path / "straight/metrics.json").read_text()),
                json.loads((tmp_path / "part/metrics.json").read_text()))
    for a, b in pairs:
        for key in ("loss", "val_accuracy", "iterate_val_accuracy", "group_sparsity",
                    "group_flips", "identified_epoch"):
            assert a[key] == b[key], (key, a["epoch"])
    # The resumed epoch compared with the checkpointed one, as the straight run did.
    assert json.loads((tmp_path / "part/summary.json").read_text()) == {
        **json.loads((tmp_path / "straight/summary.json").read_text()),
        "seconds_per_epoch": json.loads((tmp_path / "part/summary.json").read_text())[
            "seconds_per_epoch"]}

    report = _start(["report", "straight/model.keras"], tmp_path)
    _, exported, _ = _run(["export", "straight/model.keras", "--base-dir", "served"], tmp_path)
    _, table, _ = _finish(report)
    assert "conv2" in table and "total" in table
    assert (tmp_path / "served/1/saved_model.pb").is_file() and "served/1" in exported

    # In-process, after the run exists: the output dir holds a different run.
    code, err = _main(["train", *TINY[1:], "--lambda", "0.5", "--out",
                       str(tmp_path / "straight")])
    assert code == 2 and "holds a different run" in err and "strength" in err
    code, err = _main(["train", *TINY[1:], "--epochs", "3", "--out", str(tmp_path / "straight")])
    assert code == 2 and "--resume" in err


@pytest.mark.slow
def test_demo(tmp_path):
    _, out, _ = _run(["demo", "--out", "demo", "--epochs", "6"], tmp_path)
    assert "Planted zero input groups" in out and "Zero groups RMDA found" in out
    assert "total" in out  # the structure report
    assert (tmp_path / "demo/rmda_demo.png").is_file()
    assert (tmp_path / "demo/student/1/saved_model.pb").is_file()


@pytest.mark.slow
def test_user_errors_exit_nonzero_without_traceback(tmp_path):
    # Through the real entry point once: missing data, no network reached.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["train", "--preset", "vgg19-cifar10", "--data-dir", str(empty),
                         "--out", str(tmp_path / "run")], tmp_path, expect_ok=False)
    assert code == 2 and "Traceback" not in err
    assert "'cifar10'" in err and str(empty) in err
    assert os.listdir(empty) == []


def _main(argv, capsys=None):
    import io
    from contextlib import redirect_stderr

    buffer = io.StringIO()
    with redirect_stderr(buffer):
        code = cli.main(argv)
    return code, buffer.getvalue()


@pytest.mark.parametrize("argv,message", [
    (["train", "--preset", "vgg16-cifar10"], "Unknown preset 'vgg16-cifar10'"),
    (["train", "--preset", "lenet5-mnist", "--optimizer", "adam"], "optimizer 'adam'"),
    (["train", "--preset", "lenet5-mnist", "--dataset", "svhn"], "Unknown dataset 'svhn'"),
    (["train", "--preset", "lenet5-mnist", "--optimizer", "msgd", "--lambda", "1"], "msgd"),
    (["report", "missing.keras"], "No model file at 'missing.keras'"),
])
def test_user_errors_in_process(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _main(argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_files_and_foreign_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.keras").write_text("not a zip file")
    for command in ("report", "export"):
        code, err = _main([command, "garbage.keras"])
        assert code == 2 and "Cannot read 'garbage.keras'" in err and "exists" in err
        assert "not found" not in err.lower()
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, err = _main(["train", "--preset", "lenet5-mnist", "--out", str(run)])
    assert code == 2 and "holds no keras-rmda run" in err


@pytest.mark.slow
@needs_mnist
def test_train_under_each_strategy(tmp_path, monkeypatch):
    # A two-worker job on this machine; worker 1 gets its own --out, which must
    # stay absent (only the chief writes). Meanwhile, in this process: default
    # and mirrored (one CPU replica here).
    args = TINY + ["--epochs", "2", "--limit-train", "256"]
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "keras_rmda", *args, "--strategy", "multiworker",
             "--out", f"worker-{index}"], cwd=tmp_path, text=True,
            env=dict(_env(), TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES=""),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    monkeypatch.chdir(tmp_path)
    for strategy in ("default", "mirrored"):
        code, err = _main([*args, "--strategy", strategy, "--out", strategy])
        assert code == 0, err
    for worker in workers:
        try:
            log, _ = worker.communicate(timeout=1500)  # a hang guard
        finally:
            worker.kill()
        assert worker.returncode == 0, log[-3000:]

    assert not (tmp_path / "worker-1").exists()
    default = keras.saving.load_model(tmp_path / "default/checkpoint.keras")
    for run, tolerance in (("mirrored", 1e-6), ("worker-0", 1e-5)):
        model = keras.saving.load_model(tmp_path / run / "checkpoint.keras")
        for a, b in zip(default.get_weights(), model.get_weights()):
            np.testing.assert_allclose(a, b, atol=tolerance, rtol=0, err_msg=run)
        for a, b in zip(default.optimizer.variables, model.optimizer.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=tolerance, rtol=0)
        rows = json.loads((tmp_path / run / "metrics.json").read_text())
        expected = json.loads((tmp_path / "default/metrics.json").read_text())
        for key in ("loss", "val_loss", "val_accuracy", "group_sparsity"):
            np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in expected],
                                       rtol=1e-5, err_msg=f"{run}: {key}")
        assert (tmp_path / run / "model.keras").is_file()


def test_strategy_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    argv = ["train", "--preset", "lenet5-mnist", "--strategy", "multiworker"]
    code, err = _main(argv)
    assert code == 2 and "needs TF_CONFIG" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TF_CONFIG", "not json")
    code, err = _main(argv)
    assert code == 2 and "Received: TF_CONFIG='not json'" in err
    assert not os.listdir(tmp_path)  # nothing was written
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--preset", "lenet5-mnist", "--strategy", "tpu"])
    assert exit_info.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
