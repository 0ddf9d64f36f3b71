"""The momentum c shared by RMDA, RAMDA and ProxSGD: the weight of the new point.

`W ← (1 − c)·W + c·W̃` (or `m ← (1 − c)·m + c·g`): 0.1 is heavy momentum,
1.0 none — the opposite of `keras.optimizers.SGD(momentum=0.9)`.
"""

import warnings

from keras import ops


class NewPointMomentum:
    """Mixin for a `keras.optimizers.Optimizer`: c as a non-trainable variable.

    Callbacks (e.g. `StageSchedule`) change it between steps.
    """

    def _add_momentum(self, momentum):
        check_momentum(momentum)
        if 0.9 <= momentum < 1.0:
            warnings.warn(
                f"{type(self).__name__}(momentum={momentum}): here momentum is "
                "the weight c of the NEW point (0.1 = heavy momentum, 1.0 = "
                "none), the opposite of keras.optimizers.SGD's convention. "
                f"{momentum} means almost no momentum; the paper uses 0.1.",
                stacklevel=4,
            )
        self._momentum = self.add_hyperparameter(momentum, "momentum")

    @property
    def momentum(self):
        """c, the weight of the new point (a variable; assign floats to it)."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        value = float(value)
        check_momentum(value)
        self._momentum.assign(value)

    def _momentum_config(self):
        return {"momentum": float(ops.convert_to_numpy(self._momentum))}


def check_momentum(momentum):
    if not isinstance(momentum, (int, float)) or not 0.0 < momentum <= 1.0:
        raise ValueError(
            "`momentum` (c, the weight of the new point) must be in (0, 1]. "
            f"Received: momentum={momentum}"
        )
