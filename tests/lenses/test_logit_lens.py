import json
import re

import torch

import lmscope
from lmscope.cli import main
from conftest import plain_logits, random_model


def test_lens_json_on_a_random_model(capsys):
    assert main(["lens", "hello", "--model", "random:gemma2", "--json", "--target", "o", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = random_model("gemma2")
    assert out["model"] == "random:gemma2" and out["tokens"] == ["h", "e", "l", "l", "o"]
    assert out["kind"] == "logit_lens" and len(out["top"]) == 3
    logits = plain_logits(m, m.encode("hello")[0])[0]
    probs = torch.softmax(logits, -1)
    for layer in out["top"]:
        assert len(layer) == 5 and all(len(p) == 3 for p in layer)
    for pos, entry in enumerate(out["top"][-1]):  # the last entry is the model's own output
        assert entry[0]["id"] == int(logits[pos].argmax())
        assert abs(entry[0]["prob"] - float(probs[pos].max())) < 1e-5
    target = out["target"]
    o = m.token_id("o")
    assert target["token"] == "o" and len(target["rank"]) == len(target["prob"]) == 3
    assert target["rank"][-1] == int((logits[-1] > logits[-1, o]).sum()) + 1
    assert abs(target["prob"][-1] - float(probs[-1, o])) < 1e-5


def test_lens_intermediate_layers_read_through_final_norm_and_unembedding():
    m = random_model("gpt_neox")
    result = lmscope.logit_lens(m, "abc", top_k=2)
    resid = m.run("abc", read=["resid_post.1"]).acts["resid_post.1"][0]
    probs = torch.softmax(m.unembed(resid), -1)
    values, idx = probs.topk(2, dim=-1)
    for pos in range(3):
        assert [t.id for t in result.top[1][pos]] == idx[pos].tolist()
        assert [round(t.prob, 5) for t in result.top[1][pos]] == [round(v, 5) for v in values[pos].tolist()]


def test_lens_html_is_self_contained(tmp_path):
    page = tmp_path / "lens.html"
    assert main(["lens", "hello", "--model", "random:llama", "--html", str(page)]) == 0
    text = page.read_text()
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]*\bsrc=", text), "no external script: the page must work offline"
    assert [p.name for p in tmp_path.iterdir()] == ["lens.html"]


def test_summary_names_every_layer():
    result = lmscope.logit_lens(random_model("qwen2"), "hi there", target="e")
    lines = result.summary().splitlines()
    assert sum(line.strip().split(" ")[0].isdigit() for line in lines) == 3
    assert "target 'e'" in result.summary()


def test_saved_json_round_trips_with_a_normal_file_mode(tmp_path):
    result = lmscope.logit_lens(random_model("llama"), "hi", top_k=2)
    path = result.save(tmp_path / "lens.json")
    assert json.loads(path.read_text()) == result.to_json()
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_result_round_trips_through_result_load(tmp_path):
    from lmscope.results import Result
    for target in (None, "e"):
        result = lmscope.logit_lens(random_model("llama"), "hi there", top_k=2, target=target)
        assert Result.load(result.save(tmp_path / f"lens{target}.json")).to_json() == result.to_json()
