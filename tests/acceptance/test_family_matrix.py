"""Every method on every family: it runs, with finite numbers and no hook left behind, or it is refused with one
lmscope error where the table below says so. Tiny settings on the random models; the numbers themselves are
checked by each method's own tests. (This matrix found EAP crashing on Granite and gated logits wrong on the
weight-sparse model.)"""
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

import lmscope
import lmscope.circuits as C
import lmscope.directions as D
import lmscope.icl as I
import lmscope.lenses as L
import lmscope.neurons as N
import lmscope.sae as S
from lmscope.circuits.means import task_means
from lmscope.circuits.nodes import Node, gates
from lmscope.circuits.tasks import TaskSet
from lmscope.core.errors import LmscopeError
from lmscope.core.models.random_models import FAMILIES
from lmscope.lenses.lre import Relation

lre_mod = importlib.import_module("lmscope.lenses.lre")   # the module (lmscope.lenses.lre is also the function)
sys.path.insert(0, str(Path(__file__).parents[1]))
from circuit_toy_task import toy_task  # noqa: E402

NEURON_METHODS = ("integrated_gradients", "find_knowledge_neurons", "neuron_dose_response", "neuron_effects",
                  "record_neurons")
# a norm (Gemma, OLMo 2) or a top-k (the weight-sparse model) after the heads are summed: no head has a write of
# its own; the same three also refuse orthogonalisation (a projection in the weights is not one of what is added)
PER_HEAD = {"dla heads", "function_vector", "attribute eap edges", "attribute eap-ig edges", "orthogonalize"}
REFUSED = {"gemma2": PER_HEAD, "gemma3": PER_HEAD, "olmo2": PER_HEAD, "sparse_gpt": PER_HEAD,
           "mixtral": {"orthogonalize", *NEURON_METHODS}}     # fused experts: no neurons site, no one down projection
POS = ["hello there", "ab", "the cat sat down", "a good day", "yes yes yes"]
NEG = ["xyz", "a much longer prompt here", "q r", "bad day", "no no"]
PAIRS = [(f"w{a}{b}", f"{b}{a}x") for a in "abcdefg" for b in "hij"]
WORDS = [{"en": "dog", "fr": "chien", "es": "perro"}, {"en": "book", "fr": "livre", "es": "libro"},
         {"en": "water", "fr": "eau", "es": "agua"}, {"en": "house", "fr": "maison", "es": "casa"}]
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Pack my box with five dozen liquor jugs. " * 3]


def _task_set(t) -> TaskSet:
    return TaskSet("toy", t.clean, t.corrupt, t.answer, t.wrong, "logit_diff", 0, {}, t.templates)


def _relation(m) -> Relation:
    subjects = ["ab", "cd", "ef", "gh", "ij", "kl"]
    tops = [int(m.run(f"Q {s}").logits[0, -1].argmax()) for s in subjects]
    return Relation("self", "Q {}", tuple((s, str(t)) for s, t in zip(subjects, tops)))


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def _methods(m, tmp_path):
    last, task = m.n_layers - 1, _task_set(toy_task(6, lengths=(7, 9)))
    yield "logit_lens", lambda: lmscope.logit_lens(m, "hello world", target="o", top_k=2)
    yield "dla", lambda: L.direct_logit_attribution(m, "hello world", "o")
    yield "dla heads", lambda: L.direct_logit_attribution(m, "hello world", "o", heads=True)
    yield "patchscope", lambda: L.patchscope(m, "hello", layers=[0, 1], target_layers=[1, 2], max_new_tokens=2)
    yield "backpatch", lambda: L.backpatch(m, [{"query": "1 2 3", "answer": "4"}, {"query": "ab cd", "answer": "g"}],
                                           layers=[0, 1, 2])
    yield "latent_language", lambda: L.latent_language(m, WORDS, n_shots=0, batch_size=3)
    yield "tuned_lens", lambda: L.train_tuned_lens(m, n_tokens=200, steps=3, validation_tokens=40, seed=0,
                                                   progress=False)
    yield "lre", lambda: L.lre(m, _relation(m), layers=[0, last], betas=[1.0], ranks=[2], n_train=3, n_demo=1)
    yield "integrated_gradients", lambda: N.integrated_gradients(m, "hello wor", "l", layers=[0, last], steps=3)
    yield "find_knowledge_neurons", lambda: N.find_knowledge_neurons(m, ["hello wor", "say hello wor"], ["l", "l"],
                                                                     layers=[1], steps=3)
    yield "neuron_dose_response", lambda: N.neuron_dose_response(m, 1, [1, 2], ["hello", "ab cd"], ["a"],
                                                                 factors=[0.0, 2.0])
    yield "neuron_effects", lambda: N.neuron_effects(m, 1, [1, 2], ["hello", "ab cd"], "scale", factor=-5.0,
                                                     generate=2)
    yield "record_neurons", lambda: N.record_neurons(m, [1], TEXTS, n_tokens=128, window=32, batch_size=2, k=3,
                                                     progress=False)
    found = {}
    yield "contrast", lambda: found.setdefault("contrast", D.contrast(m, POS, NEG, last_k=2))
    yield "steer", lambda: D.steer(m, ["hello", "ab cd"], found["contrast"].direction(1, -1), coefs=[0.0, 4.0],
                                   max_new_tokens=2)
    yield "steer ablate", lambda: D.steer(m, ["hello", "ab cd"], found["contrast"].direction(1, -1), mode="ablate",
                                          max_new_tokens=2)
    yield "orthogonalize", lambda: D.orthogonalize(m, torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))
                                                   ).spec
    yield "function_vector", lambda: I.function_vector(m, PAIRS, n_shots=3, n_heads=2, n_mean_prompts=4,
                                                       n_cie_prompts=3, seed=3)
    yield "task_vector", lambda: I.task_vector(m, PAIRS, n_shots=3, n_mean_prompts=4, layers=[0, last], seed=2)
    yield "activation_patching", lambda: C.activation_patching(m, task, batch_size=4)
    for method in ("eap", "eap-ig"):
        yield f"attribute {method}", lambda method=method: C.attribute(m, task, method, steps=2, batch_size=4)
        yield f"attribute {method} edges", lambda method=method: C.attribute(m, task, method, steps=2, edges=True,
                                                                             batch_size=4)
    yield "prune", lambda: C.prune(m, task, C.PruneConfig(steps=2, batch_size=4, n_random=1, target_heads=3))
    yield "evaluate_circuit", lambda: C.evaluate_circuit(m, task, task_means(m, task),
                                                         *gates(m, ["head.0.1", "mlp.0"]), n_random=1)
    yield "circuit_graph", lambda: C.circuit_graph(m, task, [Node("head", 0, 1), Node("mlp", 0), Node("mlp", 2)],
                                                   n_prompts=4)
    yield "generate_batch", lambda: m.generate_batch(["Hello there", "ab"], [lmscope.add("resid_pre.1",
                                                     torch.ones(m.d_model, dtype=m.dtype), positions=[-1])],
                                                     max_new_tokens=3)
    yield "train_sae", lambda: S.train_sae(
        S.TrainConfig(out=str(tmp_path / "sae"), site="resid_post.1", n_tokens=512, batch_size=128, expansion=2, k=4,
                      seq_len=64, shuffle_buffer=256, dead_tokens=500),
        S.ModelSource(m, "resid_post.1", "wiki", seq_len=64, windows_per_pass=4), progress=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_runs_or_is_refused(family, tmp_path, monkeypatch):
    monkeypatch.setattr(lre_mod, "object_token", lambda model, obj: int(obj) % model.vocab_size)
    m = lmscope.load(f"random:{family}")
    outcome = {}
    for name, run in _methods(m, tmp_path):
        try:
            result = run()
        except LmscopeError as e:
            outcome[name] = "refused" if str(e).strip() and "\n" not in str(e).strip() else f"refused, unclear: {e!r}"
        except Exception as e:  # noqa: BLE001 - every crash of the family is listed at once
            outcome[name] = f"crash: {type(e).__name__}: {str(e)[:160]}"
        else:
            data = result.to_json() if hasattr(result, "to_json") else result
            outcome[name] = "ok" if _finite(data) else "non-finite numbers"
        if m.has_hooks():
            outcome[name] += ", hooks left"
    want = {name: "refused" if name in REFUSED.get(family, ()) else "ok" for name in outcome}
    assert outcome == want
