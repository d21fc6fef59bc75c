import json

import pytest
import torch
from conftest import random_model

from lmscope.core.errors import InputError
from lmscope.lenses.latent_language import (decoded_vocabulary, latent_language, load_words, prefix_tokens,
                                            translation_prompt)

WORDS = [{"en": "dog", "fr": "chien", "es": "perro"}, {"en": "book", "fr": "livre", "es": "libro"},
         {"en": "water", "fr": "eau", "es": "agua"}, {"en": "house", "fr": "maison", "es": "casa"}]


def _prefix_set_by_hand(model, word):
    """Every token id whose decoded text is word[:i] or ' ' + word[:i], found by decoding the whole vocabulary."""
    prefixes = {word[:i] for i in range(1, len(word) + 1)}
    prefixes |= {" " + p for p in prefixes}
    return [i for i in range(model.vocab_size) if model.tokenizer.decode([i]) in prefixes]


def test_word_probability_is_the_sum_over_its_prefix_tokens():
    m = random_model("llama")
    res = latent_language(m, WORDS, n_shots=0, batch_size=3)   # batches of 3 and 1: padding exercised
    assert res.n_words == 4 and len(res.p_english) == m.n_layers and res.dropped == []
    p_en = torch.zeros(m.n_layers, dtype=torch.float64)
    p_es = torch.zeros(m.n_layers, dtype=torch.float64)
    for q, w in enumerate(WORDS):
        prompt = translation_prompt(WORDS, q, [], "fr", "es")
        assert prompt == f'Français: "{w["fr"]}" - Español: "'
        acts = m.run(prompt, read="resid_post.*").acts
        en, es = _prefix_set_by_hand(m, w["en"]), _prefix_set_by_hand(m, w["es"])
        assert en and es
        for layer in range(m.n_layers):
            p = torch.softmax(m.unembed(acts[f"resid_post.{layer}"][0, -1]).float(), -1).double()
            p_en[layer] += p[en].sum().item() / 4
            p_es[layer] += p[es].sum().item() / 4
    assert res.p_english == pytest.approx(p_en.tolist(), rel=1e-5)
    assert res.p_target == pytest.approx(p_es.tolist(), rel=1e-5)


def test_prefix_tokens_on_a_word_piece_vocabulary():
    vocab = {"b": [1], "bo": [2], " b": [3], " book": [4], "book": [5], "books": [6], "o": [7], " bob": [8]}
    assert prefix_tokens(vocab, "book") == [1, 2, 3, 4, 5]
    with pytest.raises(InputError):
        prefix_tokens(vocab, "")


def test_words_whose_token_sets_overlap_are_dropped():
    m = random_model("llama")
    words = WORDS + [{"en": "cat", "fr": "chat", "es": "gato"}, {"en": "car", "fr": "voiture", "es": "coche"}]
    res = latent_language(m, words, n_shots=1)
    assert res.dropped == ["car"] and "car" not in res.words and res.n_words == 5   # 'c' starts car and coche
    assert set(prefix_tokens(decoded_vocabulary(m), "car")) & set(prefix_tokens(decoded_vocabulary(m), "coche"))


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
    vocab = decoded_vocabulary(smollm2)
    book = prefix_tokens(vocab, "book")
    tok = smollm2.tokenizer
    for piece in ("b", "bo", "book", " b", " book"):
        assert tok(piece, add_special_tokens=False)["input_ids"][0] in book
    # in the prompt the word follows an opening quote: its first token there is one of its prefix tokens
    pre = tok('Español: "', add_special_tokens=False)["input_ids"]
    for w in words:
        ctx = tok(f'Español: "{w["es"]}"', add_special_tokens=False)["input_ids"]
        assert ctx[:len(pre)] == pre and ctx[len(pre)] in prefix_tokens(vocab, w["es"]), w


def test_cli_latent_language(capsys, monkeypatch):
    import importlib
    from lmscope.cli import main
    ll = importlib.import_module("lmscope.lenses.latent_language")   # the module; the attribute is the function
    monkeypatch.setattr(ll, "load_words", lambda: WORDS)
    assert main(["latent-language", "--model", "random:llama", "--shots", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_words"] == 4 and out["n_shots"] == 1 and len(out["p_english"]) == 3
