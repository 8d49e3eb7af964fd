"""The README's code stays true: its solver snippet runs, its commands match .ci/run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_solver_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    snippets = [b for b in blocks if "jfbjax.fixed_point" in b]
    assert snippets, "README lost its 'use the solver in your own project' snippet"
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in README and 'pip install -e ".[test]"' in ci
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci
    assert "python -m experiments.deblur_celeba" in README
