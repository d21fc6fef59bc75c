"""Circuits (part 3): which components of the model do a task. Tasks are clean / corrupt prompt pairs with a metric
(IOI, greater-than, quote-type, bracket-depth, or a pairs file); activation patching (denoising and noising) and
attribution patching (EAP, EAP-IG) score components; mask pruning (hard-concrete gates) or the top-scored heads give
a circuit, whose faithfulness, necessity and random-circuit baseline are measured on held-out prompts; circuits are
saved as files tied to their model and drawn as graphs.

    task = load_circuit_task(model, "ioi", n=200)          -> TaskSet
    task_baseline(model, task)                             -> TaskBaseline
    activation_patching(model, task, ["resid_pre", "z"])   -> PatchResult
    attribute(model, task, "eap-ig")                       -> AttributionResult
    find_circuit(model, task, PruneConfig(steps=100))      -> (FaithfulnessResult, CircuitFile)
"""
from lmscope.circuits.attribution import AttributionResult, attribute, compare
from lmscope.circuits.circuit_file import CircuitFile, load_circuit
from lmscope.circuits.faithfulness import FaithfulnessResult, evaluate_circuit
from lmscope.circuits.graph import CircuitGraph, circuit_graph
from lmscope.circuits.patching import PatchResult, activation_patching, patch_metric
from lmscope.circuits.prune import PruneConfig, deterministic_gates, expected_kept, prune, sample_gates
from lmscope.circuits.run import evaluate_saved, find_circuit
from lmscope.circuits.task_baseline import TaskBaseline, task_baseline
from lmscope.circuits.tasks import TaskSet, load_circuit_task, task_last_logits, task_logits

__all__ = ["AttributionResult", "CircuitFile", "CircuitGraph", "FaithfulnessResult", "PatchResult", "PruneConfig",
           "TaskBaseline", "TaskSet", "activation_patching", "attribute", "circuit_graph", "compare",
           "deterministic_gates", "evaluate_circuit", "evaluate_saved", "expected_kept", "find_circuit", "load_circuit",
           "load_circuit_task", "patch_metric", "prune", "sample_gates", "task_baseline", "task_last_logits",
           "task_logits"]
