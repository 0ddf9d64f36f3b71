"""keras_rmda: train structured (channel-, filter-, neuron-sparse) networks in Keras 3.

RMDA (Huang & Lee, ICLR 2022) as a Keras optimizer, the groupings it
regularises (`keras_rmda.groups`), its proximal regularisers, and the tools
that turn the structure into a smaller, faster model: `structure_report`,
`callbacks.StructureMonitor`, `slim` and `export_for_serving`.

The optimizers, regularisers, groupings and structure tools are written with
`keras.ops` and run on every Keras backend; the TensorFlow-only parts (TFDS
pipelines, SavedModel export, the distribution helpers) are imported on
first use, so `import keras_rmda` works where only JAX is installed.
"""

import importlib

from keras_rmda import callbacks
from keras_rmda import groups
from keras_rmda import experiments
from keras_rmda import models
from keras_rmda import presets
from keras_rmda import prox
from keras_rmda import pruning
from keras_rmda.optimizers import RAMDA
from keras_rmda.optimizers import RMDA
from keras_rmda.optimizers import ProxGen
from keras_rmda.optimizers import ProximalOptimizer
from keras_rmda.optimizers import ProxSGD
from keras_rmda.optimizers import ProxSSI
from keras_rmda.optimizers import proximal_optimizer_of
from keras_rmda.regularizers import L1
from keras_rmda.regularizers import GroupLasso
from keras_rmda.regularizers import NuclearNorm
from keras_rmda.callbacks import StageSchedule
from keras_rmda.slim import slim
from keras_rmda.structure import StructureReport
from keras_rmda.structure import structure_report

__version__ = "0.1.0"

# TensorFlow-only attributes, imported on first use.
_LAZY = {
    "datasets": ("keras_rmda.datasets", None),
    "distribute": ("keras_rmda.distribute", None),
    "export_for_serving": ("keras_rmda.export", "export_for_serving"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_rmda' has no attribute '{name}'")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
