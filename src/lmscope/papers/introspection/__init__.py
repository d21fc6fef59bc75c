"""Lindsey 2025, "Emergent introspective awareness": put a concept into the model's residual stream and ask whether
it notices.

    introspect(model, config)        concept injection: "Do you detect an injected thought?" (injection.py)
    prefill_trials(model, config)    prefill an out-of-place word: "Did you mean to say that?" (prefill.py)
    IntrospectionConfig              every option of both (the CLI's flags; stored in each result) (trials.py)
    score_answer, score_prefill_answer   the scoring rules of each protocol
    concept_vectors                  the concept vectors both inject (trials.py)
"""
from lmscope.papers.introspection.injection import IntrospectionResult, introspect, score_answer
from lmscope.papers.introspection.prefill import PrefillResult, prefill_trials, score_prefill_answer
from lmscope.papers.introspection.trials import IntrospectionConfig, concept_vectors

__all__ = ["IntrospectionConfig", "IntrospectionResult", "PrefillResult", "concept_vectors", "introspect",
           "prefill_trials", "score_answer", "score_prefill_answer"]
