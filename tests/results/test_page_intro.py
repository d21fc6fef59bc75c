"""A page's intro is plain text that write_page escapes once: no result kind escapes it itself (which showed
'prompt&#x27;s' on the attribution page), and a note with quotes and brackets reads back as written."""
import html
import inspect

from conftest import random_model
from lmscope.circuits.attribution import attribute
from lmscope.circuits.tasks import TaskSet
from lmscope.results.base import _REGISTRY, Result, result_kinds


def test_no_result_kind_escapes_its_own_intro():
    result_kinds()                                    # every kind registered
    own = [cls for cls in _REGISTRY.values() if cls.page_intro is not Result.page_intro]
    assert len(own) >= 10                             # the check covers real overrides
    for cls in own:
        assert "html.escape" not in inspect.getsource(cls.page_intro), cls.__name__


def test_intro_with_quotes_is_escaped_once(tmp_path):
    m = random_model("llama")
    task = TaskSet(name="toy", clean=[[5, 6, 7, 8]], corrupt=[[5, 9, 7, 8]], answer=[30], wrong=[31],
                   metric_name="logit_diff", n_filtered=0, filtered={}, templates=[0])
    r = attribute(m, task, "eap")
    r.notes.append("it's <b>not</b> bold & fine")
    page = r.save(tmp_path / "a.html").read_text()
    assert html.escape("it's <b>not</b> bold & fine") in page
    assert "&amp;#x27;" not in page and "&amp;lt;" not in page and "<b>not</b>" not in page
