import json
from importlib import resources

import pytest

from lmscope.data.icl_tasks import TASKS, load_cities, load_pairs, load_icl_task
from lmscope.core.errors import InputError


@pytest.mark.parametrize("name", TASKS)
def test_bundled_task_files(name):
    lines = [json.loads(x) for x in resources.files("lmscope.data").joinpath(f"icl_task_{name}.jsonl")
             .read_text(encoding="utf-8").splitlines() if x.strip()]
    assert all(set(row) == {"input", "output"} for row in lines)
    task = load_icl_task(name)
    assert task.name == name and len(task.pairs) == len(lines) >= 60
    inputs = [x for x, _ in task.pairs]
    assert len(set(inputs)) == len(inputs)
    for x, y in task.pairs:
        assert x and y and x == x.strip() and y == y.strip() and x != y
        assert "->" not in x + y and "\n" not in x + y


def test_task_semantics_where_checkable():
    for x, y in load_icl_task("lowercase_uppercase").pairs:
        assert x == x.lower() and y == x.upper()
    pairs = dict(load_icl_task("singular_plural").pairs)
    assert pairs["child"] == "children" and pairs["box"] == "boxes" and pairs["city"] == "cities"
    assert dict(load_icl_task("present_past").pairs)["go"] == "went"
    antonyms = dict(load_icl_task("antonyms").pairs)
    assert antonyms["hot"] == "cold" and antonyms["fast"] == "slow"
    # consistent with the capitals of the LRE relations, where both name the country
    rel = json.loads(resources.files("lmscope.data").joinpath("relations.json").read_text(encoding="utf-8"))
    ours = dict(load_icl_task("country_capital").pairs)
    shared = [(c, cap) for c, cap in rel["country_capital"]["pairs"] if c in ours]
    assert len(shared) >= 20 and all(ours[c] == cap for c, cap in shared)


def test_cities_table():
    cities = load_cities()
    assert len(cities) >= 150
    countries = set(cities.values())
    assert len(countries) >= 40
    per_country = {c: sum(v == c for v in cities.values()) for c in countries}
    assert min(per_country.values()) >= 2
    assert cities["Lyon"] == "France" and cities["Osaka"] == "Japan" and cities["Chicago"] == "the United States"
    for city, country in cities.items():
        assert city not in countries
        assert country[0].isupper() or country.startswith("the ")


def test_load_pairs(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"input": "a", "output": "b"}\n\n{"input": " c ", "output": "d"}\n', encoding="utf-8")
    task = load_pairs(good)
    assert task.name == "good" and task.pairs == (("a", "b"), ("c", "d"))


@pytest.mark.parametrize("text, match", [
    ("", "no pairs"),
    ("\n  \n", "no pairs"),
    ("{not json}\n", "line 1: not JSON"),
    ('{"input": "a", "output": "b"}\n["a", "b"]\n', "line 2: each line must be an object"),
    ('{"input": "a"}\n', "exactly the keys"),
    ('{"input": "a", "output": "b", "extra": 1}\n', "exactly the keys"),
    ('{"input": "a", "output": ""}\n', "non-empty strings"),
    ('{"input": 3, "output": "b"}\n', "non-empty strings"),
    ('{"input": "a -> b", "output": "c"}\n', "'->'"),
    ('{"input": "a", "output": "b"}\n{"input": "a", "output": "c"}\n', "appears twice"),
])
def test_load_pairs_bad(tmp_path, text, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=match):
        load_pairs(path)


def test_load_pairs_missing_and_unknown_task(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="unknown task 'nope'.*antonyms"):
        load_icl_task("nope")


@pytest.mark.default_model
def test_first_token_rule_on_default_tokenizer(smollm2):
    from lmscope.icl.prompts import token_check
    # antonyms, plurals and past tenses were written so the first-token rule is (nearly) the whole word
    for name in ("antonyms", "singular_plural", "present_past"):
        check = token_check(smollm2, load_icl_task(name).pairs)
        assert check["n_multi_token"] <= 2 and check["n_shared_first_token"] <= 2, (name, check)
