"""Sparse autoencoders (part 2, automated): dictionary learning on a model's activations. Architectures (ReLU,
TopK, BatchTopK, JumpReLU; transcoders), training from a harvest folder or straight from the model, evaluation
(FVU, L0, dead latents, CE loss recovered, KL(clean || SAE)), feature dashboards, steering with one latent, a
synthetic planted-feature check, and reading SAELens / sparsify SAEs.

    result = train_sae(TrainConfig(out="runs/sae_l12", harvest="runs/harvest_l12"),
                       StoreSource(open_store("runs/harvest_l12"), "resid_post.12"))     -> TrainResult
    evaluate_sae(model, load_sae("runs/sae_l12"), "wiki")                                 -> EvalResult
    write_dashboards(feature_stats(model, sae), "figures/sae", latents)                   -> DashboardResult
    sae_steer(model, sae, "The city of Lyon is", latent=3685, value=1.0)                  -> SaeSteerResult
    synthetic_benchmark(SyntheticConfig(n_features=64))                                   -> SyntheticResult
"""
from lmscope.sae.architectures import ARCHITECTURES, SAE, SAEOutput, build_sae
from lmscope.sae.config import SAEConfig, TrainConfig
from lmscope.sae.dashboard import DashboardResult, write_dashboards
from lmscope.sae.data import ModelSource, StoreSource, TensorSource
from lmscope.sae.evaluate import EvalResult, evaluate_sae
from lmscope.sae.features import feature_stats, logit_effect
from lmscope.sae.interop import check_against_model, detect_format, load_sae, save_sae
from lmscope.sae.steer import SaeSteerResult, sae_steer, steering_delta
from lmscope.sae.synthetic import (SyntheticConfig, SyntheticFeatures, SyntheticResult, SyntheticSource,
                                   synthetic_benchmark)
from lmscope.sae.trainer import TrainResult, train_sae

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "DashboardResult", "EvalResult", "ModelSource",
           "StoreSource", "SaeSteerResult", "SyntheticConfig", "SyntheticFeatures", "SyntheticResult",
           "SyntheticSource",
           "TensorSource", "TrainConfig", "TrainResult", "build_sae", "check_against_model", "detect_format",
           "evaluate_sae", "feature_stats", "load_sae", "logit_effect", "sae_steer", "save_sae", "steering_delta",
           "synthetic_benchmark", "train_sae", "write_dashboards"]
