"""PatchScope and back-patching generate all their patched runs in one batch (one edit list per row): the same
texts as one generation per cell (the old path)."""
from conftest import random_model
from lmscope.core.edits import replace
from lmscope.lenses.backpatch import answer_starts, backpatch
from lmscope.lenses.patchscope import patch_edit, patchscope, placeholder_position, resolve_template


def test_patchscope_grid_batched_equals_one_generation_per_cell():
    m = random_model("llama")
    # the placeholder is the template's last token, so each patch reaches the first generated token
    r = patchscope(m, "The cat sat on the mat", layers=[0, 1, 2], target_layers=[0, 2], max_new_tokens=5,
                   template="say ?", placeholder="?")
    template, placeholder = resolve_template("say ?", "?")
    tpos = placeholder_position(m, template, placeholder)
    acts = m.run("The cat sat on the mat", read=["resid_post.*"]).acts
    old = [m.generate(template, [patch_edit(c.target_layer, acts[f"resid_post.{c.source_layer}"][0, -1], tpos)],
                      max_new_tokens=5) for c in r.cells]
    assert [c.text for c in r.cells] == [g.text for g in old] and len(old) == 6
    assert len({tuple(g.token_ids) for g in old}) > 1          # the patches act differently (ids: bytes may not decode)


def test_backpatch_batched_equals_one_generation_per_pair():
    m = random_model("qwen2")
    items = [{"query": "ab cd ef", "answer": "q"}, {"query": "1 2 3", "answer": "z"}]
    r = backpatch(m, items, layers=[0, 1, 2])
    for i, (x, q) in enumerate(zip(items, r.queries)):
        last = len(x["query"]) - 1
        states = {s: m.run(it["query"], read=[f"resid_post.{s}"]).acts[f"resid_post.{s}"][0, -1]
                  for s in (1, 2) for it in [x]}
        donor = items[(i + 1) % len(items)]["query"]
        others = {s: m.run(donor, read=[f"resid_post.{s}"]).acts[f"resid_post.{s}"][0, -1] for s in (1, 2)}
        fixed, control = [], []
        for s, t in [(1, 0), (2, 0), (2, 1)]:
            for st, found in ((states, fixed), (others, control)):
                text = m.generate(x["query"], [replace(f"resid_post.{t}", st[s], positions=[last])],
                                  max_new_tokens=2).text
                found.append(text)
        assert not q.correct
        got_fixed = {(s, t): text for s, t, text in q.fixed_by}
        assert all(got_fixed.get(p) == text for p, text in zip([(1, 0), (2, 0), (2, 1)], fixed)
                   if answer_starts(text, x["answer"]))
        assert len(q.fixed_by) == sum(answer_starts(t, x["answer"]) for t in fixed)
        assert len(q.control_fixed_by) == sum(answer_starts(t, x["answer"]) for t in control)
