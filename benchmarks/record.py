"""Benchmark results as data: `benchmarks/results/<name>.json`, beside any plots.

Each file holds what was run (the command), where (machine, versions), when,
the rows a benchmark printed and its summary line, so a figure in the README
can always be traced to the run that produced it.
"""

import datetime
import json
import os
import platform
import sys

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def environment():
    """The machine and the versions a result was measured with."""
    versions = {"python": platform.python_version()}
    for module in ("keras", "tensorflow", "jax", "numpy", "tensorflow_datasets"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    try:
        import keras

        versions["keras_backend"] = keras.backend.backend()
    except ImportError:
        pass
    return {
        "machine": {"system": platform.system(), "arch": platform.machine(),
                    "processor": _cpu_model(), "cpu_count": os.cpu_count()},
        "versions": versions,
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def path(name, suffix=".json"):
    """`benchmarks/results/<name><suffix>` (the folder is created)."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    return os.path.join(RESULTS_DIR, name + suffix)


def write(name, rows, summary, settings=None):
    """Write `rows` (list of dicts) and `summary` (the last printed line) as JSON."""
    data = {
        "benchmark": name,
        "command": " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "settings": settings or {},
        "rows": rows,
        "summary": summary,
    }
    target = path(name)
    with open(target + ".partial", "w") as f:
        json.dump(data, f, indent=1, default=float)
        f.write("\n")
    os.replace(target + ".partial", target)
    print(f"results written to {os.path.relpath(target)}", flush=True)
    return target
