"""Every relative link in README.md, FINDINGS*.md and docs/*.md resolves: the file (or folder) exists, and a
`#anchor` names a heading of the target Markdown file (GitHub's slugs). README stays short."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *ROOT.glob("FINDINGS*.md"), *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (letters, digits, '-', '_' and spaces
    kept), spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and code spans."""
    return links_of(path.read_text(encoding="utf-8"))


def test_slugs_follow_github():
    assert slug("How world version 3 was chosen") == "how-world-version-3-was-chosen"
    assert slug("Multi-GPU and multi-process training (`accelerate launch`)") == \
        "multi-gpu-and-multi-process-training-accelerate-launch"
    assert slug("Run 3: can it test POCL? Yes") == "run-3-can-it-test-pocl-yes"
    assert links_of("see [a](b.md#c) and `[x](y)` and ![i](f.png \"t\")") == ["b.md#c", "f.png"]


def links_of(text: str) -> list[str]:
    """The link targets of Markdown text, outside code blocks and code spans."""
    return LINK.findall(CODE.sub("", FENCE.sub("", text)))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not checked here
            continue
        file, _, anchor = unquote(target).partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_docs_are_found_and_readme_stays_short():
    assert ROOT / "README.md" in DOCS and len([d for d in DOCS if d.parent.name == "docs"]) >= 6
    assert (ROOT / "README.md").stat().st_size <= 15_000, "README.md is over 15 kB: move detail to docs/"
