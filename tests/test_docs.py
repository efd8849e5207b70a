"""The documentation holds together: every relative link and image in README.md and docs/ resolves (file and
anchor), every docs page is linked from the README, the README stays short, and its test command is where
.ci/run reads it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "checkpoints" / "README.md", REPO / "bench" / "RESULTS.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (brackets there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    """Every link and image target of a markdown page."""
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def anchors_of(text: str) -> set[str]:
    """The heading anchors GitHub makes for markdown text (lower case, punctuation dropped, spaces to hyphens)."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES if page.exists() for target in links(page)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: ... are not checked


def test_the_link_reader_finds_links_and_skips_code() -> None:
    text = "See [a](docs/a.md#x) and ![img](b.png \"t\"). `[no](c.md)`\n```bash\n[no](d.md)\n```\n[f](#g)\n"
    assert LINK.findall(prose(text)) == ["docs/a.md#x", "b.png", "#g"]
    assert anchors_of("# A title\n## Set up: the `x` (1)\n```\n# not a heading\n```\n") == {"a-title", "set-up-the-x-1"}


@pytest.mark.parametrize(("page", "target"), relative_links(),
                         ids=lambda value: value.name if isinstance(value, Path) else value)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(REPO)}: link to {target} points to a missing file"
    if anchor:
        assert resolved.suffix == ".md", f"{page.relative_to(REPO)}: anchor on a non-markdown file: {target}"
        headings = anchors_of(resolved.read_text(encoding="utf-8"))
        assert anchor in headings, f"{page.relative_to(REPO)}: no heading for #{anchor} in {path or 'itself'}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert DOCS and [page.name for page in DOCS if page.resolve() not in linked] == []


def test_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8")) < 10_000


def test_readme_holds_the_test_command_ci_runs() -> None:
    """.ci/run runs the fenced block after README's ``<!-- test command -->`` marker: one command that installs
    both requirements files and runs the tests."""
    after = README.read_text(encoding="utf-8").split("<!-- test command -->\n", 1)
    assert len(after) == 2, "README.md lost its <!-- test command --> marker (.ci/run reads the command there)"
    block = re.match(r"```\w*\n(.*?)\n```", after[1], re.S)
    assert block is not None, "the test command must be the fenced block right after the marker"
    command = block.group(1)
    assert "-r requirements.txt" in command and "-r requirements-dev.txt" in command and "python -m pytest" in command
    ci = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--print-test-command"], capture_output=True, text=True,
                        check=True)
    assert ci.stdout.strip() == command
