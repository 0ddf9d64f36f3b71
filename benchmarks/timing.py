"""What the step-time benchmarks share; backend-neutral (no TensorFlow import).

`benchmarks/step_time.py` (TensorFlow, CPU) and
`benchmarks/accelerator_step_time.py` (JAX, GPU) time the same comparisons.
"""

import statistics
import time

import keras
import numpy as np

import keras_rmda as kr


def interleaved_times(runs, repeats):
    """{name: [seconds, ...]} of `runs` ({name: fn}), timed A B A B ..."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(runs, repeats):
    """{name: median seconds} of `runs` ({name: fn}), timed A B A B ..."""
    return {name: statistics.median(t) for name, t in interleaved_times(runs, repeats).items()}


def big_variable_set():
    """~25M parameters: VGG/AlexNet-like conv and dense kernels plus biases."""
    shapes = [
        ((3, 3, 256, 512), kr.groups.InputChannels()),
        ((3, 3, 512, 512), kr.groups.InputChannels()),
        ((3, 3, 512, 512), kr.groups.InputChannels()),
        ((4096, 4096), kr.groups.InputUnits()),
        ((4096, 1000), kr.groups.InputUnits()),
        ((512,), None),
        ((4096,), None),
    ]
    rng = np.random.default_rng(0)
    variables = []
    for i, (shape, grouping) in enumerate(shapes):
        v = keras.Variable((0.01 * rng.standard_normal(size=shape)).astype("float32"),
                           name=f"w{i}")
        v.constraint = grouping
        variables.append(v)
    return variables
