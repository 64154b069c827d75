"""The README and docs/: a page a newcomer reads in one screen, links that lead somewhere, a spec
reference that says what the spec's models accept, and CI running the README's test command."""

import re
from pathlib import Path

import pytest

from xattn.tuning import spec_reference

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "dashboards" / "README.md"]
# [text](target) and ![alt](target), outside code spans; targets with a scheme are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def headings_anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {spec_reference.anchor(line.lstrip("#").strip()) for line in text.splitlines() if line.startswith("#")}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def test_the_spec_reference_is_what_the_models_say():
    page = REPO / "docs" / "specs.md"
    assert page.read_text() == spec_reference.with_reference(page.read_text()), (
        "docs/specs.md is stale: run python -m xattn.tuning.spec_reference docs/specs.md"
    )


def test_a_spec_field_without_a_description_stops_the_reference():
    from pydantic import BaseModel

    class Section(BaseModel):
        documented: int = 0
        undocumented: int = 0

    Section.model_fields["documented"].description = "has one"
    with pytest.raises(spec_reference.MissingDescription, match="Section.undocumented has no description"):
        spec_reference.render_reference(Section)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in headings_anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


def test_the_readme_fits_one_screen_and_ci_runs_its_test_command():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    commands = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("    make ")]
    assert commands == ["make demo", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci if line and not line.startswith("#")][-1] == "make test"
