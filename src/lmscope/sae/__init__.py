"""Sparse autoencoders (part 2, automated): architectures, training, evaluation, feature dashboards, interop.

    sae = train_sae(TrainConfig(out="runs/sae_l12", harvest="runs/harvest_l12"), StoreSource(store, "resid_post.12"))
    evaluate_sae(model, load_sae("runs/sae_l12"), "wiki")          # FVU, L0, dead, CE recovered, KL
    write_dashboards(feature_stats(model, sae), "figures/sae", latents)
"""
from lmscope.sae.architectures import ARCHITECTURES, SAE, SAEOutput, build_sae
from lmscope.sae.config import SAEConfig, TrainConfig
from lmscope.sae.dashboard import write_dashboards
from lmscope.sae.data import ModelSource, StoreSource, TensorSource
from lmscope.sae.evaluate import EvalResult, evaluate_sae
from lmscope.sae.features import feature_stats, logit_effect
from lmscope.sae.interop import detect_format, load_sae, save_sae
from lmscope.sae.steer import steer
from lmscope.sae.synthetic import SyntheticFeatures, SyntheticSource, synthetic_benchmark
from lmscope.sae.trainer import TrainResult, train_sae

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "EvalResult", "ModelSource", "StoreSource",
           "SyntheticFeatures", "SyntheticSource", "TensorSource", "TrainConfig", "TrainResult", "build_sae",
           "detect_format", "evaluate_sae", "feature_stats", "load_sae", "logit_effect", "save_sae", "steer",
           "synthetic_benchmark", "train_sae", "write_dashboards"]
