"""The docs stand alone: docs/config.md is what scripts/config_reference.py
makes of configs/base.py now, and the README and docs/ name only files that
exist in the repository (nothing outside it)."""

import re
import subprocess
import sys

from tests.conftest import ROOT

_TOP = ("configs", "modeling", "parallelism", "pallas_kernels", "trainer", "scripts",
        "benchmarks", "docs", "examples", "tests")  # fmt: skip
_PATH = re.compile(r"\b((?:%s)/[\w./*<>-]*[\w*>])" % "|".join(_TOP))


def test_the_config_reference_is_current():
  result = subprocess.run(
    [sys.executable, "scripts/config_reference.py", "--check"], cwd=ROOT, capture_output=True,
    text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr


def test_readme_and_docs_name_only_files_in_the_repository():
  pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  for page in pages:
    text = page.read_text()
    assert "../" not in text, f"{page.name} points outside the repository"
    for path in _PATH.findall(text):
      if any(c in path for c in "*<>") or re.search(r"\b[A-Z_]{4,}\b", path):
        continue  # a pattern or a placeholder (configs/FAMILY.py), not a file
      assert (ROOT / path).exists() or (ROOT / path.split(":")[0]).exists(), (page.name, path)
