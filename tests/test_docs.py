"""The sources the code cites are in the repository: docs/theory.md, and the sections it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
# The old out-of-repository digest, spelled in two parts so that this file does not contain it.
OLD_DIGEST = "THEORY" + ".md"
SKIP_DIRS = {"__pycache__", ".pytest_cache"}

# "docs/theory.md section 4.2", "docs/theory.md sections 1.2 and 3.4", "... sections 4.2-4.6",
# "... sections 1.2, 3.4 and 4.4"; the words may be split across a line break.
_NUMBER = r"\d+(?:\.\d+)*"
CITATION = re.compile(
    rf"docs/theory\.md\s+sections?\s+({_NUMBER}(?:\s*(?:-|,|and)\s*{_NUMBER})*)"
)
MENTION = re.compile(r"docs/theory\.md")
HEADING = re.compile(rf"^#{{2,}}\s+({_NUMBER})\.?\s", re.MULTILINE)


def _source_files() -> list[Path]:
    files = []
    for top in ("src", "tests"):
        for path in sorted((ROOT / top).rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if path.is_file() and not parts & SKIP_DIRS and not any(p.endswith(".egg-info") for p in parts):
                files.append(path)
    return files


def _cited_files() -> list[Path]:
    """The source files whose citations are checked: all but this one, which spells examples out."""
    return [p for p in _source_files() if p != Path(__file__).resolve()]


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def cited_sections(text: str) -> list[str]:
    """Every section number that a "docs/theory.md section(s) ..." citation in ``text`` names."""
    return [n for group in CITATION.findall(text) for n in re.findall(_NUMBER, group)]


def theory_sections(markdown: str) -> set[str]:
    """The numbers of the numbered headings ("## 4. ...", "### 4.2 ...") of a Markdown text."""
    return set(HEADING.findall(markdown))


def test_parsers_on_examples():
    text = ("(docs/theory.md section 4.2); docs/theory.md\n    sections 1.2 and 3.4; "
            "docs/theory.md sections 4.2-4.6, and docs/theory.md sections 1.2, 3.4 and 4.4.")
    assert cited_sections(text) == ["4.2", "1.2", "3.4", "4.2", "4.6", "1.2", "3.4", "4.4"]
    assert theory_sections("# Title\n## 1. One\n### 1.2 Two\nsee section 9\n#### 1.2.3 Three\n") == {
        "1", "1.2", "1.2.3"}


def test_no_file_cites_the_old_digest():
    offenders = [str(p.relative_to(ROOT)) for p in _source_files() if OLD_DIGEST in _text(p)]
    assert offenders == [], f"cite docs/theory.md section N or the paper instead of {OLD_DIGEST}: {offenders}"


def test_every_cited_theory_section_exists():
    sections = theory_sections(THEORY.read_text(encoding="utf-8"))
    assert {"1", "2", "3", "4", "4.1", "4.7", "5", "6"} <= sections
    missing, cited = [], 0
    for path in _cited_files():
        for number in cited_sections(_text(path)):
            cited += 1
            if number not in sections:
                missing.append(f"{path.relative_to(ROOT)}: section {number}")
    assert cited > 0
    assert missing == [], f"these cite sections that docs/theory.md does not have: {missing}"


def test_every_mention_of_the_theory_notes_names_a_section():
    vague = [str(p.relative_to(ROOT)) for p in _cited_files()
             if len(MENTION.findall(_text(p))) != len(CITATION.findall(_text(p)))]
    assert vague == [], f"write 'docs/theory.md section N' so the reader knows where to look: {vague}"
