"""Model types; importing this package registers them in basicsr's MODEL_REGISTRY."""
from . import restoration_model  # noqa: F401
