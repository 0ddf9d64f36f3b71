"""The momentum c shared by RMDA, RAMDA and ProxSGD: the weight of the new point.

`W ← (1 − c)·W + c·W̃` (or `m ← (1 − c)·m + c·g`): 0.1 is heavy momentum,
1.0 none — the opposite of `keras.optimizers.SGD(momentum=0.9)`.
"""

import warnings

import keras
from keras import ops

from keras_rmda import _checks


class NewPointMomentum:
    """Mixin for a `keras.optimizers.Optimizer`: c as a non-trainable variable.

    Callbacks (e.g. `StageSchedule`) change it between steps.
    """

    def _add_momentum(self, momentum):
        received, momentum = momentum, check_momentum(momentum)
        if 0.9 <= momentum < 1.0:
            warnings.warn(
                f"{type(self).__name__}(momentum={_checks.shown(received)}): here momentum is "
                "the weight c of the NEW point (0.1 = heavy momentum, 1.0 = "
                "none), the opposite of keras.optimizers.SGD's convention. "
                f"{_checks.shown(received)} means almost no momentum; the paper uses 0.1.",
                stacklevel=4,
            )
        self._momentum = self.add_scalar("momentum", momentum, dtype=keras.backend.floatx())

    @property
    def momentum(self):
        """c, the weight of the new point (a variable; assign floats to it)."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum.assign(check_momentum(value))

    def _momentum_config(self):
        return {"momentum": float(ops.convert_to_numpy(self._momentum))}


def check_momentum(momentum):
    """`momentum` as a float in (0, 1] (numpy scalars too), else ValueError."""
    return _checks.number(
        "momentum", momentum, minimum=0.0, maximum=1.0, open_minimum=True,
        label="`momentum` (c, the weight of the new point)",
    )
