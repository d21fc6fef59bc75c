"""Part 3: circuits. Tasks (clean/corrupt pairs with a metric), activation patching, attribution patching (EAP,
EAP-IG), mask pruning to a minimal faithful circuit, faithfulness, circuit files and graphs."""
from lmscope.circuits.attribution import attribute, compare
from lmscope.circuits.faithfulness import evaluate_circuit
from lmscope.circuits.patching import activation_patching, patch_metric
from lmscope.circuits.prune import PruneConfig, prune
from lmscope.circuits.task_baseline import task_baseline
from lmscope.circuits.tasks import TaskSet, load_task, task_logits

__all__ = ["PruneConfig", "TaskSet", "activation_patching", "attribute", "compare", "evaluate_circuit", "load_task",
           "patch_metric", "prune", "task_baseline", "task_logits"]
