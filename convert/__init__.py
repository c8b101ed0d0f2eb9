"""Rebuild ``deepcr_jax/weights/`` from the deepCR 0.3.1 wheel: ``python -m convert``."""
