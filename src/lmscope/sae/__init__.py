"""Sparse autoencoders (part 2, automated): architectures, training, evaluation, feature dashboards, interop.

    sae = train_sae(TrainConfig(out="runs/sae_l12", harvest="runs/harvest_l12"), StoreSource(store, "resid_post.12"))
    evaluate_sae(model, load_sae("runs/sae_l12"), "wiki")          # FVU, L0, dead, CE recovered, KL
    write_dashboards(feature_stats(model, sae), "figures/sae", latents)
"""
from .architectures import ARCHITECTURES, SAE, SAEOutput, build_sae
from .config import SAEConfig, TrainConfig
from .dashboard import write_dashboards
from .data import ModelSource, StoreSource, TensorSource
from .evaluate import EvalResult, evaluate_sae
from .features import feature_stats, logit_effect
from .interop import detect_format, load_sae, save_sae
from .steer import steer
from .synthetic import SyntheticFeatures, SyntheticSource, synthetic_benchmark
from .trainer import TrainResult, train_sae

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "EvalResult", "ModelSource", "StoreSource",
           "SyntheticFeatures", "SyntheticSource", "TensorSource", "TrainConfig", "TrainResult", "build_sae",
           "detect_format", "evaluate_sae", "feature_stats", "load_sae", "logit_effect", "save_sae", "steer",
           "synthetic_benchmark", "train_sae", "write_dashboards"]
