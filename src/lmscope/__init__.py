"""lmscope: a laboratory for looking inside trained language models."""
from lmscope.core import __version__
from lmscope.core.edits import Edit, add, interpolate, mean_ablate, project_out, replace, scale, zero
from lmscope.core.errors import EditError, InputError, LmscopeError, ModelSpecError, SiteError
from lmscope.lenses.logit_lens import LensResult, logit_lens
from lmscope.core.models import DEFAULT_MODEL, Model, Site, load

__all__ = ["DEFAULT_MODEL", "Edit", "EditError", "InputError", "LensResult", "LmscopeError", "Model",
           "ModelSpecError", "Site", "SiteError", "add", "interpolate", "load", "logit_lens", "mean_ablate", "project_out",
           "replace", "scale", "zero"]
