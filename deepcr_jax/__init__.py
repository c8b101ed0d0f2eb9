"""deepcr-jax: deepCR cosmic-ray detection and inpainting in JAX/Flax.

Quick use::

    import deepcr_jax
    mask = deepcr_jax.clean(image)                        # (ny, nx) bool, e- input
    mask, cleaned = deepcr_jax.clean(image, inpaint="medmask")
    cleaner = deepcr_jax.load("ACS-WFC", inpaint="ACS-WFC-F606W-2-32")
    params = deepcr_jax.load_params("ACS-WFC")            # functional core
    prob = jax.jit(deepcr_jax.predict)(params, stamps)    # (n, ny, nx)

Modules: ``arch`` (the UNet topology), ``nets`` (flax modules), ``weights``
(the ``.npz`` format), ``zoo`` (registry), ``model`` (preprocessing,
``predict``), ``tiling``/``engine`` (compiled tiled forward), ``native``
(CPU kernels), ``cleaner`` (``clean``/``load``), ``medmask``, ``hst``/
``fits``/``files`` (FITS data), ``simulate``, ``evaluate``, ``training``,
``compat`` (drop-in ``deepCR``), ``cli``; ``convert`` reads PyTorch files.
"""

from deepcr_jax.api import clean, inpaint, load
from deepcr_jax.batch import clean_files
from deepcr_jax.cleaner import Cleaner, CleanReport
from deepcr_jax.engine import tune_host_allocator
from deepcr_jax.model import ModelParams, load_params, predict
from deepcr_jax.zoo import MODELS, list_models

__version__ = "0.1.0"

__all__ = [
    "MODELS",
    "CleanReport",
    "Cleaner",
    "ModelParams",
    "__version__",
    "clean",
    "clean_files",
    "inpaint",
    "list_models",
    "load",
    "load_params",
    "predict",
    "tune_host_allocator",
]
