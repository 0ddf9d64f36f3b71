"""Optimizers of keras_rmda: one update rule a file, on a shared base."""

from keras_rmda.optimizers.base import ProximalOptimizer
from keras_rmda.optimizers.base import proximal_optimizer_of
from keras_rmda.optimizers.dual_averaging import DualAveragingOptimizer
from keras_rmda.optimizers.rmda import RMDA
from keras_rmda.optimizers.prox_gen import ProxGen
from keras_rmda.optimizers.prox_sgd import ProxSGD
from keras_rmda.optimizers.prox_ssi import ProxSSI
from keras_rmda.optimizers.ramda import RAMDA
