from .adapters import ADAPTERS, Adapter, supported_model_types
from .loading import DEFAULT_MODEL, load
from .model import GenerationResult, Model, RunResult
from .sites import Site

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_MODEL", "GenerationResult", "Model", "RunResult", "Site", "load",
           "supported_model_types"]
