"""The user guide holds together: docs/flags.md is what the parser says, every relative link
in README.md and docs/*.md points at a file (and a heading) that exists, and the front page
stays short."""

from __future__ import annotations

import re
from pathlib import Path

from attnopt.cli.commands import HIDDEN
from attnopt.cli.flags_page import REGENERATE, flags_markdown

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_flags_page_is_generated_from_the_parser() -> None:
    page = (REPO / "docs" / "flags.md").read_text()
    assert page == flags_markdown(), f"docs/flags.md is out of date: run `{REGENERATE}`"


def test_every_relative_link_points_at_an_existing_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_the_front_page_is_short_and_self_contained() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "../shared" not in readme and not re.search(r"\bissues? \d", readme, re.I)
    results = readme.split("\n## Results\n")[1].split("\n## ")[0]
    rows = [line for line in results.splitlines() if line.startswith("|")][2:]
    assert 1 <= len(rows) <= 10 and all("](" in row for row in rows), rows


def test_the_flags_page_names_every_flag_hidden_from_help() -> None:
    note = flags_markdown().split("## ", 1)[0]
    flags = [f"--{name.replace('_', '-')}" for name in sorted(HIDDEN)]
    assert [flag for flag in flags if f"`{flag}`" not in note] == []
