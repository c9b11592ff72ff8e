"""The method document is in the repository, and every citation of it points at a section that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"
CITATION = re.compile(r"docs/method\.md((?:#[a-z0-9-]+)?)((?:, #[a-z0-9-]+)*)")


def _anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", METHOD.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _cited_files() -> list[Path]:
    return [*sorted((ROOT / "th_edit").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")), ROOT / "README.md"]


def test_every_citation_names_an_existing_section():
    anchors = _anchors()
    cited = []
    for path in _cited_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            for anchor in re.findall(r"#([a-z0-9-]+)", match.group(0)):
                cited.append(anchor)
                assert anchor in anchors, f"{path.relative_to(ROOT)} cites docs/method.md#{anchor}, which has no heading"
    assert len(cited) >= 15  # the code cites its sections, not just the file


def test_nothing_cites_the_reference_outside_the_repository():
    for path in _cited_files():
        text = path.read_text(encoding="utf-8")
        if path.name == "test_method_doc.py":
            continue
        assert "METHOD.md" not in text, f"{path.relative_to(ROOT)} cites METHOD.md; cite docs/method.md"
        assert "../shared" not in text, f"{path.relative_to(ROOT)} cites ../shared"


def test_the_document_covers_the_method():
    anchors = _anchors()
    for section in ("conventions", "folding-norms", "singular-components", "composition-scores", "receiver-resolution",
                    "baseline-and-z", "the-tiled-fast-path", "exact-edits", "tasks", "metrics", "paired-statistics",
                    "channels", "roles-from-data", "data-check", "agreement", "search", "subspace"):
        assert section in anchors
