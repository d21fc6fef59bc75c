"""`lmscope sparse train` and `lmscope sparse tasks` through main(): --json / --html, the output rule, one-line
errors with exit code 2."""
import json

import pytest

from lmscope.cli import main


@pytest.mark.parametrize("argv, message", [
    (["sparse", "tasks", "/nonexistent-folder"], "not a model folder"),
    (["sparse", "train", "--preset", "huge", "--out", "/tmp/x"], "unknown preset"),
    (["sparse", "train", "--preset", "tiny", "--out", "/tmp/x", "--html", "/nonexistent/dir/x.html"],
     "does not exist"),
])
def test_cli_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_train_json_and_tasks(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["sparse", "train", "--preset", "tiny", "--out", str(out), "--steps", "4", "--json",
                 "--html", str(tmp_path / "t.html")]) in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data["final"]["steps"] == 4 and (tmp_path / "t.html").is_file()
    assert main(["sparse", "train", "--preset", "tiny", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["sparse", "tasks", str(out), "--tasks", "paren_or_bracket", "--n", "5", "--json"]) in (0, None)
    assert "paren_or_bracket" in json.loads(capsys.readouterr().out)["tasks"]
