"""Fixtures of the lab tests: a random model, a runs folder (lab_support.make_runs) and a test client of the lab's
app on them."""
import importlib.util

import pytest
from lab_support import MODEL, make_runs

import lmscope

if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("httpx") is None:
    collect_ignore_glob = ["test_*.py"]      # the lab's extra is not installed: pip install 'lmscope[dev]'


@pytest.fixture(scope="session")
def lab_model():
    return lmscope.load(MODEL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, lab_model):
    folder = tmp_path_factory.mktemp("runs")
    make_runs(folder, lab_model)
    return folder


@pytest.fixture(scope="module")
def client(runs, lab_model):
    from starlette.testclient import TestClient

    from lmscope.lab.app import create_app
    app = create_app(lab_model, MODEL, runs, {"testserver"})
    with TestClient(app) as c:
        c.state = app.app.state.lab
        yield c
    assert not lab_model.has_hooks()
