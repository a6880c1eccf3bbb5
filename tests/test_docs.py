"""The documentation of errors and warnings covers every class a user can meet."""

from pathlib import Path

import ppl_lvm as lvm

ROOT = Path(__file__).resolve().parents[1]


def test_every_error_and_warning_class_has_a_row_in_docs_errors():
    text = (ROOT / "docs" / "errors.md").read_text()
    classes = [name for name in lvm.__all__ if isinstance(getattr(lvm, name), type)
               and issubclass(getattr(lvm, name), (lvm.PplLvmError, lvm.PplLvmWarning))]
    assert len(classes) >= 10
    missing = [name for name in classes if f"| `{name}` |" not in text]
    assert not missing, f"docs/errors.md has no row for {missing}"
