"""`python -m keras_rmda` runs the `keras-rmda` command."""

import sys

from keras_rmda.cli import main

sys.exit(main())
