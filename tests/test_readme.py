"""The README as a user guide: its results are the report's claims table, its links resolve."""

import re
from pathlib import Path

from atop_core.report import README_END, README_START

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_shows_the_claims_table_the_quick_run_wrote():
    block = README.split(README_START, 1)[1].split(README_END, 1)[0]
    table = (ROOT / "tables" / "quick" / "claims.md").read_text().strip()
    assert table and table in block
    report = (ROOT / "REPORT.md").read_text()
    assert table in report and report.index(table) < report.index("## How to read the tables")


def test_every_link_and_path_the_readme_names_is_in_the_repository():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [link for link in links if not link.startswith("http")]
    assert local, "the README links its docs"
    for link in local:
        assert (ROOT / link).exists(), link
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "../shared" not in doc.read_text(), doc.name
