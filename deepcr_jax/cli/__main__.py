"""``python -m deepcr_jax.cli``: the same as the ``deepcr-jax`` command."""

import sys

from deepcr_jax.cli import main

sys.exit(main())
