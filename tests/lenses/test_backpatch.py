import json

import pytest

from conftest import random_model
from lmscope.core.edits import replace
from lmscope.core.errors import InputError
from lmscope.lenses.backpatch import backpatch, two_hop_items


def test_bundled_set():
    items = two_hop_items()
    assert len(items) >= 15
    for x in items:
        assert {"first_hop", "second_hop", "query", "answer"} <= set(x)
        assert x["second_hop"]["answer"] == x["answer"] and "{}" in x["second_hop"]["template"]


def test_counts_and_oracle_fix():
    m = random_model("qwen2")
    q1, q2 = "1 2 3", "ab cd ef"
    right = m.generate(q1, max_new_tokens=3).text            # the model's own answer: counted correct
    clean2 = m.generate(q2, max_new_tokens=3).text
    # the answer that pair 2 -> 0 produces, computed independently: that query counts as fixed
    last = len(q2) - 1
    state = m.run(q2, read=["resid_post.2"]).acts["resid_post.2"][0, last]
    fixed = m.generate(q2, edits=[replace("resid_post.0", state, positions=[last])], max_new_tokens=3).text
    wrong_answer = fixed.strip()[:1]
    assert wrong_answer.isprintable() and not clean2.strip().startswith(wrong_answer), "prompts chosen so it differs"
    items = [{"query": q1, "answer": right.strip()[:1]}, {"query": q2, "answer": wrong_answer},
             {"query": "zz yy", "answer": "\u00e9\u00e9\u00e9"}]
    r = backpatch(m, items, layers=[0, 1, 2])
    assert (r.n_queries, r.n_wrong) == (3, 2)
    assert r.queries[0].correct and not r.queries[1].correct
    assert (2, 0) in [(s, t) for s, t, _ in r.queries[1].fixed_by]
    assert all(s > t for q in r.queries for s, t, _ in q.fixed_by)
    assert r.n_fixed == 1 and r.fixed_fraction == pytest.approx(0.5)
    j = json.loads(json.dumps(r.to_json()))
    assert j["oracle"] is True and j["n_queries"] == 3 and j["n_wrong"] == 2 and j["fixed_fraction"] == 0.5
    assert j["pair_fixes"]["2->0"] >= 1 and set(j["pair_fixes"]) == {"1->0", "2->0", "2->1"}
    assert "ORACLE" in r.summary()
    # control: the patched state comes from the next query in the set; counted the same way
    assert r.control_fixed == sum(bool(q.control_fixed_by) for q in r.queries) <= r.n_wrong
    assert j["control_fixed_fraction"] == r.control_fixed / 2


def test_control_with_the_query_as_its_own_donor_equals_the_search():
    m = random_model("qwen2")
    q = "ab cd ef"
    last = len(q) - 1
    state = m.run(q, read=["resid_post.2"]).acts["resid_post.2"][0, last]
    answer = m.generate(q, edits=[replace("resid_post.0", state, positions=[last])], max_new_tokens=3).text.strip()[:1]
    r = backpatch(m, [{"query": q, "answer": answer}], layers=[0, 1, 2])  # one item: it is its own donor
    assert r.n_wrong == 1 and r.n_fixed == 1
    assert r.queries[0].control_fixed_by == r.queries[0].fixed_by and r.control_fixed == 1


def test_bad_input():
    m = random_model("llama")
    with pytest.raises(InputError, match="no two-hop"):
        backpatch(m, [])
    with pytest.raises(InputError, match="answer"):
        backpatch(m, [{"query": "ab"}])
    with pytest.raises(InputError, match="out of range"):
        backpatch(m, [{"query": "ab", "answer": "c"}], layers=[0, 9])
