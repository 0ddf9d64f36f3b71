"""Makes TensorFlow unimportable, like on a JAX-only accelerator machine.

Put this folder on PYTHONPATH of a subprocess (tests/test_jax_backend.py).
"""

import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ImportError(f"{name} is blocked: this process checks the JAX backend")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
