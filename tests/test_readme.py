"""The README's Python examples run as they are written."""

import pathlib
import re
import runpy

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    # run from a file, as a user would, so that site names can be read from the source
    script = tmp_path / "readme_example.py"
    script.write_text("\n".join(blocks))
    namespace = runpy.run_path(str(script))
    assert namespace["fit"].steps > 0


def test_ci_runs_the_readme_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    text = README.read_text()
    assert "torch==2.13.0" in text
    assert "<!-- install -->" in text and "<!-- test -->" in text
    assert "block install" in ci and "block test" in ci


@pytest.mark.parametrize("name", ["latent", "observe", "param", "plate", "markov", "infer", "load"])
def test_readme_mentions_the_public_api(name):
    assert f"lvm.{name}" in README.read_text()
