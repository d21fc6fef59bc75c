"""Lecture part 2, one layer: directions in activation space.

    contrast, ContrastConfig, Contrast   difference of means, PCA of pairs and a held-out probe at every layer
    difference_of_means, concept_vector, prompt_hash
    Direction, save_vector, load_vector, read_metadata     one direction and its safetensors file
    fit_probe, Probe                logistic probe
    selection_sweep, SweepConfig, SweepResult, best_direction   induce / bypass / KL sweep (Arditi et al. 2024)
    steer, SteerConfig, SteeringResult, steering_edits, ablation_edits   steering and directional ablation
    steering_dose_response, DoseConfig, SteeringDoseResponse, kl_cost, sentiment_score, refusal_score
    orthogonalize, save_orthogonalized     directional ablation baked into a copy of the weights
    truth_direction, TruthConfig, TruthResult   the truth direction (Marks & Tegmark 2023) and ITI head probes
"""
from lmscope.directions.contrast import Contrast, ContrastConfig, concept_vector, contrast, difference_of_means, prompt_hash
from lmscope.directions.orthogonalize import orthogonalize, save_orthogonalized
from lmscope.directions.probes import Probe, fit_probe
from lmscope.directions.steering import SteerConfig, SteeringResult, ablation_edits, steer, steering_edits
from lmscope.directions.steering_eval import (DoseConfig, SteeringDoseResponse, kl_cost, refusal_score,
                                              sentiment_score, steering_dose_response)
from lmscope.directions.sweep import SweepConfig, SweepResult, best_direction, selection_sweep
from lmscope.directions.truth import TruthConfig, TruthResult, truth_direction
from lmscope.directions.vector_files import Direction, load_vector, read_metadata, save_vector

__all__ = ["Contrast", "ContrastConfig", "Direction", "DoseConfig", "Probe", "SteerConfig", "SteeringDoseResponse", "SteeringResult",
           "SweepConfig", "SweepResult", "TruthConfig", "TruthResult", "ablation_edits", "best_direction", "concept_vector",
           "contrast", "difference_of_means", "fit_probe", "kl_cost", "load_vector", "orthogonalize",
           "prompt_hash", "read_metadata", "refusal_score", "save_orthogonalized", "save_vector", "selection_sweep",
           "sentiment_score", "steer", "steering_dose_response", "steering_edits", "truth_direction"]
