"""Gao et al. 2025, "Weight-sparse transformers have interpretable circuits" (arXiv 2511.13653), first half:

    model.py        the weight-sparse GPT as a Hugging Face causal LM (model_type lmscope_sparse_gpt), AbsTopK
    data.py         Python standard-library source split by file hash, a 2,048-token byte-level BPE, 256-token windows
    sparsity.py     per-matrix top-k with j weights per neuron, and its annealing schedule
    config.py       SparseTrainConfig (one docstring per field = the CLI flags) and the tiny / cpu / gpu presets
    train.py        weight-sparse training and its dense baseline (weight_frac 1), resumable, DDP under torchrun
    checkpoints.py  model folders and resumable checkpoints; open_model checks a folder before loading it
    tasks.py        binary next-token Python tasks as circuit TaskSets, held out by word, balanced accuracy
    cli.py          lmscope sparse train | tasks
Importing this package registers the model with AutoConfig / AutoModelForCausalLM; lmscope.load("hf:FOLDER")
imports it when the folder's model_type is lmscope_sparse_gpt (lmscope.core.models.adapters.PART_MODEL_TYPES).
"""
from lmscope.papers.weight_sparse.checkpoints import open_model
from lmscope.papers.weight_sparse.config import PRESETS, SparseTrainConfig, preset_config
from lmscope.papers.weight_sparse.model import (MODEL_TYPE, AbsTopK, SparseGPTConfig, SparseGPTForCausalLM,
                                                abstopk)
from lmscope.papers.weight_sparse.tasks import (SPARSE_TASKS, TaskAccuracyResult, build_task, evaluate_tasks,
                                                task_accuracies)
from lmscope.papers.weight_sparse.train import SparseTrainResult, train_sparse

__all__ = ["MODEL_TYPE", "PRESETS", "SPARSE_TASKS", "AbsTopK", "SparseGPTConfig", "SparseGPTForCausalLM",
           "SparseTrainConfig", "SparseTrainResult", "TaskAccuracyResult", "abstopk", "build_task", "evaluate_tasks",
           "open_model", "preset_config", "task_accuracies", "train_sparse"]
