"""`lmscope lab` through main(): binds loopback by default, warns for another host, refuses a bad port. The server
itself is not started (uvicorn.run is replaced); tests/lab runs a real one."""
import importlib.util

import pytest

from lmscope.cli import main

HAS_LAB = importlib.util.find_spec("uvicorn") is not None and importlib.util.find_spec("starlette") is not None


@pytest.mark.skipif(not HAS_LAB, reason="the lab's extra is not installed")
def test_lab_binds_loopback_and_warns_for_another_host(monkeypatch, capsys, tmp_path):
    import uvicorn
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert main(["lab", "--model", "random:llama", "--port", "8799", "--runs", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8799
    assert "http://127.0.0.1:8799/" in err and "WARNING" not in err
    assert (tmp_path / "r").is_dir()
    assert main(["lab", "--model", "random:llama", "--host", "0.0.0.0", "--port", "8799",
                 "--runs", str(tmp_path / "r")]) == 0
    assert "WARNING: binding 0.0.0.0" in capsys.readouterr().err and calls[-1]["host"] == "0.0.0.0"


def test_lab_refuses_a_bad_port(capsys):
    assert main(["lab", "--model", "random:llama", "--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
