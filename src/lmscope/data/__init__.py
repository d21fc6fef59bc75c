"""Text sets: bundled prompt sets written for the project, and readers for offline corpora.

    load_contrast, neutral_prompts, concept_contrast   contrast sets (harmful, sentiment, formality, language, ...)
    load_icl_task, load_pairs, load_cities, TASKS      in-context tasks (input -> output pairs), the city table
    load_number_agreement                              subject-verb number agreement prompts
    iter_documents, iter_token_windows                 offline corpora (lmscope.data.corpora)
"""
from lmscope.data.contrast import concept_contrast, load_contrast, neutral_prompts
from lmscope.data.corpora import iter_documents, iter_token_windows
from lmscope.data.icl_tasks import TASKS, load_cities, load_icl_task, load_pairs
from lmscope.data.number_agreement import load_number_agreement

__all__ = ["TASKS", "concept_contrast", "iter_documents", "iter_token_windows", "load_cities", "load_contrast",
           "load_icl_task", "load_number_agreement", "load_pairs", "neutral_prompts"]
