"""Experiments of keras_rmda: the planted-structure identification study."""

from keras_rmda.experiments.planted import PlantedProblem
from keras_rmda.experiments.planted import planted_problem
from keras_rmda.experiments.planted import run_identification
from keras_rmda.experiments.planted import student_model
