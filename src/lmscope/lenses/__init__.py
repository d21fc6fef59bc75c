"""Lecture part 4: the model explains itself.

Read a layer's residual stream as the output: logit_lens (LensResult), the tuned lens (TunedLens,
train_tuned_lens, evaluate_tuned_lens -> TunedLensEval); decompose a logit into its parts:
direct_logit_attribution (DLAResult); let the model put a hidden state into words: patchscope (PatchscopeConfig ->
PatchscopeResult); fix a two-hop query by patching a late state early: backpatch (BackpatchResult); which language
the middle layers think in: latent_language (LatentLanguageResult); is a relation a linear map W s + b:
lre (LreConfig, Relation -> LreResult).

Shared with other parts: norm_affine (the gain and bias of a (Layer|RMS)Norm module, read by probing it) and
show_token (a token for a table cell, spaces made visible), layer_ranges ('0-2, 5').
"""
from lmscope.lenses.backpatch import BackpatchResult, backpatch
from lmscope.lenses.dla import DLAResult, direct_logit_attribution, norm_affine
from lmscope.lenses.latent_language import LatentLanguageResult, latent_language
from lmscope.lenses.logit_lens import LensResult, logit_lens
from lmscope.lenses.lre import LreConfig, LreResult, Relation, load_relation, lre, relation_from_pairs
from lmscope.lenses.patchscope import PatchscopeConfig, PatchscopeResult, patchscope
from lmscope.lenses.text import layer_ranges, show_token
from lmscope.lenses.tuned_lens import TunedLens, TunedLensEval, evaluate_tuned_lens, train_tuned_lens

__all__ = ["BackpatchResult", "DLAResult", "LatentLanguageResult", "LensResult", "LreConfig", "LreResult",
           "PatchscopeConfig", "PatchscopeResult", "Relation", "TunedLens", "TunedLensEval", "backpatch",
           "direct_logit_attribution", "evaluate_tuned_lens", "latent_language", "layer_ranges", "load_relation",
           "logit_lens", "lre", "norm_affine", "patchscope", "relation_from_pairs", "show_token",
           "train_tuned_lens"]
