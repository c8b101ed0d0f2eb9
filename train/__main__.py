"""``python -m train``: see :func:`deepcr_jax.training.cli.cli_main`."""

import sys

from deepcr_jax.training.cli import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
