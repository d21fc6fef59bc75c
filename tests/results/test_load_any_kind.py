"""Result.load reads every kind back in a fresh interpreter, where no part has been imported yet."""
import json
import re
import subprocess
import sys
from pathlib import Path

import lmscope

from lmscope.results.base import KIND_PACKAGES, result_kinds


def test_result_load_in_a_fresh_interpreter_knows_the_parts_kinds(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "circuit_faithfulness", "format": 1}))
    code = ("import sys; from lmscope.results import Result\n"
            "assert 'lmscope.circuits' not in sys.modules\n"
            "try:\n    Result.load(sys.argv[1])\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # the kind is known (the fields are missing, so reading fails on them, not on the kind)
    assert "unknown result kind" not in out.stdout and out.stdout.strip()


def test_every_kind_defined_in_the_source_is_registered():
    src = Path(lmscope.__file__).parent
    defined = {m for f in src.rglob("*.py") if f.name != "base.py"
               for m in re.findall(r'^class \w+\(Result, kind="(\w+)"', f.read_text(encoding="utf-8"), flags=re.M)}
    assert len(defined) > 40
    assert set(result_kinds()) == defined
    assert len(KIND_PACKAGES) == len(set(KIND_PACKAGES))
