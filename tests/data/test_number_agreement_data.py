"""The bundled number-agreement prompt set: its structure, its tokens, and that the default model mostly agrees."""
from collections import Counter, defaultdict

import pytest
import torch

import lmscope
from lmscope.data.number_agreement import KINDS, AgreementPrompt, load_number_agreement

pytestmark = pytest.mark.default_model

ITEMS = load_number_agreement()


def test_counts():
    assert len(ITEMS) >= 240
    by_kind = Counter(p.kind for p in ITEMS)
    assert set(by_kind) == set(KINDS)
    assert all(by_kind[k] >= 100 for k in KINDS), by_kind
    assert all(isinstance(p, AgreementPrompt) for p in ITEMS)


def test_filter_by_kind():
    for kind in KINDS:
        sub = load_number_agreement(kind)
        assert sub and all(p.kind == kind for p in sub)
    assert sum(len(load_number_agreement(k)) for k in KINDS) == len(ITEMS)


def test_bad_kind_is_one_clear_error():
    with pytest.raises(lmscope.InputError, match="subject-verb") as err:
        load_number_agreement("verb-object")
    assert "\n" not in str(err.value)


def test_balance_and_pairs():
    assert {p.number for p in ITEMS} == {"singular", "plural"}
    for kind in KINDS:
        numbers = Counter(p.number for p in ITEMS if p.kind == kind)
        assert numbers["singular"] == numbers["plural"], (kind, numbers)
    pairs = defaultdict(list)
    for p in ITEMS:
        pairs[p.pair].append(p)
    for pid, (a, b, *rest) in pairs.items():
        assert not rest, f"pair {pid} has more than two items"
        assert {a.number, b.number} == {"singular", "plural"}, pid
        assert a.kind == b.kind, pid
        assert (a.correct, a.wrong) == (b.wrong, b.correct), pid
        assert a.prompt != b.prompt, pid
    assert len(pairs) * 2 == len(ITEMS)


def test_prompts_well_formed():
    prompts = [p.prompt for p in ITEMS]
    dupes = [t for t, c in Counter(prompts).items() if c > 1]
    assert not dupes, dupes
    for p in ITEMS:
        assert p.prompt.strip() == p.prompt and p.prompt, p
        assert p.correct != p.wrong, p
        assert p.correct.startswith(" ") and p.wrong.startswith(" "), p
    # varied vocabulary: not one template repeated
    assert len({p.correct for p in ITEMS if p.kind == "determiner-noun"}) >= 50
    assert len({p.correct for p in ITEMS if p.kind == "subject-verb"}) >= 20


def test_forms_are_single_tokens(smollm2):
    for p in ITEMS:
        assert smollm2.token_id(p.correct) != smollm2.token_id(p.wrong), p   # token_id raises unless one token


def test_default_model_prefers_the_agreeing_form(smollm2):
    m = smollm2
    margins = []
    with torch.no_grad():
        for i in range(0, len(ITEMS), 64):
            batch = ITEMS[i:i + 64]
            run = m.run([p.prompt for p in batch])
            last = run.attention_mask.sum(1) - 1                          # right padding: last real token per row
            logp = run.logits[torch.arange(len(batch)), last].float().log_softmax(-1)
            good = torch.tensor([m.token_id(p.correct) for p in batch])
            bad = torch.tensor([m.token_id(p.wrong) for p in batch])
            rows = torch.arange(len(batch))
            margins += (logp[rows, good] - logp[rows, bad]).tolist()
    acc = sum(x > 0 for x in margins) / len(margins)
    assert acc > 0.7, f"accuracy {acc:.3f}"
    for kind in KINDS:
        sub = [x for x, p in zip(margins, ITEMS) if p.kind == kind]
        assert sum(x > 0 for x in sub) / len(sub) > 0.7, kind
        assert sum(sub) / len(sub) > 1.0, kind                            # mean log-prob margin, nats
