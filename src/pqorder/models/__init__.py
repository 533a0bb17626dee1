"""Model loading and adapters (blocks and compressible units of a model)."""

from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight, set_weight
from pqorder.models.loading import LoadedModel, load_model

__all__ = [
    "LoadedModel",
    "compressible_units",
    "decoder_blocks",
    "get_weight",
    "load_model",
    "set_weight",
]
