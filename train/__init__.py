"""Entry point: ``python -m train --config NAME [--workdir DIR] [--overwrite] [key=value ...]``.

A thin shell over :func:`deepcr_jax.training.cli_main`; the library does the work.
"""
