"""The README's Python examples run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index].replace("/tmp/", f"{tmp_path}/")
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    for expected in re.findall(r"print\(.*\)[ \t]+# (.*)", BLOCKS[index]):
        assert expected.strip() in printed.replace("\n", " ")


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    text = README.read_text()
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
