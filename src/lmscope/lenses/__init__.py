from lmscope.lenses.logit_lens import LensResult, logit_lens

__all__ = ["LensResult", "logit_lens"]
