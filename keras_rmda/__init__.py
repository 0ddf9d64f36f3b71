"""keras_rmda: train structured (channel-, filter-, neuron-sparse) networks in Keras 3.

RMDA (Huang & Lee, ICLR 2022) as a Keras optimizer, the groupings it
regularises (`keras_rmda.groups`), its proximal regularisers, and the tools
that turn the structure into a smaller, faster model: `structure_report`,
`callbacks.StructureMonitor`, `slim` and `export_for_serving`.
"""

from keras_rmda import callbacks
from keras_rmda import groups
from keras_rmda import datasets
from keras_rmda import experiments
from keras_rmda import models
from keras_rmda import presets
from keras_rmda import prox
from keras_rmda import pruning
from keras_rmda.export import export_for_serving
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
