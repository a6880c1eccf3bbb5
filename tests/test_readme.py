"""The README's Python examples run as they are written."""

import pathlib
import re
import runpy

import pytest

from ppl_lvm import EMResult, Result

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_readme_python_block_runs_alone(index, tmp_path):
    # each block alone, from a file as a user would run it (site names are read from the source)
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    namespace = runpy.run_path(str(script))
    results = [v for v in namespace.values() if isinstance(v, Result)]
    assert results, "each example fits something"
    for result in results:
        assert result.steps > 0 if not isinstance(result, EMResult) else result.n_iter > 0


def test_ci_runs_the_readme_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    text = README.read_text()
    assert "torch==2.13.0" in text
    assert "<!-- install -->" in text and "<!-- test -->" in text
    assert "block install" in ci and "block test" in ci


@pytest.mark.parametrize("name", ["latent", "observe", "param", "plate", "markov", "infer", "load"])
def test_readme_mentions_the_public_api(name):
    assert f"lvm.{name}" in README.read_text()
