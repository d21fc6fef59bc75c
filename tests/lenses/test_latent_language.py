import json

import pytest
import torch
from conftest import random_model

from lmscope.core.errors import InputError
from lmscope.lenses.latent_language import translation_prompt, first_token, latent_language, load_words

WORDS = [{"en": "dog", "fr": "chien", "es": "perro"}, {"en": "book", "fr": "livre", "es": "libro"},
         {"en": "water", "fr": "eau", "es": "agua"}, {"en": "house", "fr": "maison", "es": "casa"}]


def test_probabilities_are_softmax_of_unembedded_resid_post_at_the_last_token():
    m = random_model("llama")
    res = latent_language(m, WORDS, n_shots=0, batch_size=3)   # batches of 3 and 1: padding exercised
    assert res.n_words == 4 and len(res.p_english) == m.n_layers
    p_en = torch.zeros(m.n_layers, dtype=torch.float64)
    p_es = torch.zeros(m.n_layers, dtype=torch.float64)
    for q, w in enumerate(WORDS):
        prompt = translation_prompt(WORDS, q, [], "fr", "es")
        assert prompt == f'Français: "{w["fr"]}" - Español: "'
        acts = m.run(prompt, read="resid_post.*").acts
        for layer in range(m.n_layers):
            p = torch.softmax(m.unembed(acts[f"resid_post.{layer}"][0, -1]).float(), -1)
            p_en[layer] += p[first_token(m, w["en"])].item() / 4
            p_es[layer] += p[first_token(m, w["es"])].item() / 4
    assert res.p_english == pytest.approx(p_en.tolist(), abs=2e-6)
    assert res.p_target == pytest.approx(p_es.tolist(), abs=2e-6)
    assert m.tokenizer.decode([first_token(m, "dog")]) == "d"   # byte tokenizer, no leading space


def test_shots_prompt_and_outputs():
    m = random_model("llama")
    res = latent_language(m, WORDS, n_shots=2, seed=3)
    lines = res.example_prompt.split("\n")
    assert len(lines) == 3 and lines[-1] == 'Français: "chien" - Español: "'
    assert all('"chien"' not in line for line in lines[:-1])
    assert res == latent_language(m, WORDS, n_shots=2, seed=3)
    out = json.loads(json.dumps(res.to_json()))
    assert out["english_over_target"] == [i for i in range(m.n_layers) if res.p_english[i] > res.p_target[i]]
    assert [t.name for t in res.figure().data] == ["English (en)", "target (es)"]
    assert "P(es)" in res.summary()


def test_bad_input():
    m = random_model("llama")
    with pytest.raises(InputError, match="same"):
        latent_language(m, WORDS, src="es", dst="es")
    with pytest.raises(InputError, match="n_shots"):
        latent_language(m, WORDS, n_shots=4)
    with pytest.raises(InputError, match="non-empty"):
        latent_language(m, [{"en": "a", "fr": "b"}] * 3, n_shots=1)


@pytest.mark.default_model
def test_word_list_on_the_default_tokenizer(smollm2):
    words = load_words()
    assert len(words) >= 40
    assert len({w["en"] for w in words}) == len(words)
    tok = smollm2.tokenizer
    for w in words:
        en, fr, es = (first_token(smollm2, w[k]) for k in ("en", "fr", "es"))
        assert en != es and en != fr, w
        # in the prompt the word follows an opening quote: its first token there is the standalone first token
        pre = tok('Español: "', add_special_tokens=False)["input_ids"]
        ctx = tok(f'Español: "{w["es"]}"', add_special_tokens=False)["input_ids"]
        assert ctx[:len(pre)] == pre and ctx[len(pre)] == es, w


def test_cli_latent_language(capsys, monkeypatch):
    import importlib
    from lmscope.cli import main
    ll = importlib.import_module("lmscope.lenses.latent_language")   # the module; the attribute is the function
    monkeypatch.setattr(ll, "load_words", lambda: WORDS)
    assert main(["latent-language", "--model", "random:llama", "--shots", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_words"] == 4 and out["n_shots"] == 1 and len(out["p_english"]) == 3
