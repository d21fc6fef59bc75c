from lmscope.core.models.adapters import ADAPTERS, Adapter, supported_model_types
from lmscope.core.models.loading import DEFAULT_MODEL, load
from lmscope.core.models.model import GenerationResult, Model, RunResult
from lmscope.core.models.sites import Site

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_MODEL", "GenerationResult", "Model", "RunResult", "Site", "load",
           "supported_model_types"]
