"""Optimizers of keras_rmda: one update rule a file, on a shared base."""

from keras_rmda.optimizers.base import ProximalOptimizer
from keras_rmda.optimizers.base import proximal_optimizer_of
from keras_rmda.optimizers.dual_averaging import DualAveragingOptimizer
from keras_rmda.optimizers.rmda import RMDA
