"""Lecture part 2: in-context learning as a vector.

    function_vector, FvConfig, FunctionVectorResult   function vectors (Todd et al. 2024): top heads by causal
                                                       indirect effect, summed, added to zero-shot prompts
    task_vector, TaskVectorResult                     task vectors (Hendel et al. 2023): the few-shot state at one
                                                       layer replacing the zero-shot one
    split_pairs, few_shot_prompt, zero_shot_prompt    the prompt format and the build / held-out split
"""
from lmscope.icl.function_vectors import FunctionVectorResult, FvConfig, function_vector
from lmscope.icl.prompts import few_shot_prompt, split_pairs, zero_shot_prompt
from lmscope.icl.task_vectors import TaskVectorResult, task_vector

__all__ = ["FunctionVectorResult", "FvConfig", "TaskVectorResult", "few_shot_prompt", "function_vector",
           "split_pairs", "task_vector", "zero_shot_prompt"]
