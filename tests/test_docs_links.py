"""The README as a front door, and the documentation's links.

Every relative link in README.md and docs/*.md names an existing file and, with a `#fragment`, an
existing heading of that Markdown file (GitHub's anchor rules). The README stays short, starts with
the two commands CI runs, and its consumer example sets `manageExtensions` where it is shown.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

from secure_webhooks.configuration.config_errors import STACK_CONFIG
from secure_webhooks.configuration.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: [text](target) outside code; images too. Targets with a scheme (https:, mailto:) are not checked.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces as '-', repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [match.group(1) for line in prose(path.read_text(encoding="utf-8")) for match in LINK.finditer(line)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_anchors():
    """The checks above would notice a broken link: the README links to docs/, and anchors follow GitHub."""
    assert "docs/delivery.md" in links(README)
    assert "use-it-on-supabase" in anchors(README)
    assert "stack-config-keys-and-parse_settings-keys" in anchors(ROOT / "docs" / "own-program.md")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_readme_is_a_front_door():
    """Short; the two commands first; prerequisites, Supabase and own-program use on its first two screens."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    headings = {line[3:]: number for number, line in enumerate(lines, 1) if line.startswith("## ")}
    first = ("Prerequisites", "Run the demo, run the tests", "Use it on Supabase", "Use it in your own Pulumi program")
    for heading in first:
        assert headings.get(heading, 10_000) <= 110, heading
    first_block = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert [line.split("#")[0].strip() for line in first_block] == ["scripts/demo.sh", "scripts/test.sh"]
    assert "exec scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_consumer_example_sets_manage_extensions_where_it_is_shown():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(block for block in blocks if "parse_settings(" in block)
    call = next(
        node
        for node in ast.walk(ast.parse(example))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_settings"
    )
    raw = call.args[0]
    assert isinstance(raw, ast.Dict)
    values = {ast.literal_eval(k): v for k, v in zip(raw.keys, raw.values, strict=True)}
    assert isinstance(values["manageExtensions"], ast.Constant) and values["manageExtensions"].value is False
    assert "pulumi-resource-postgresql" in example  # the comment there says why


def test_the_readme_stack_config_example_is_valid_config():
    """The README's `Pulumi.<stack>.yaml` example for tables of your own passes every config rule."""
    text = README.read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    config = yaml.safe_load(block)["config"]
    raw = {key.removeprefix("secure-webhooks:"): value for key, value in config.items()}
    settings = parse_settings(raw, key_names=STACK_CONFIG)
    assert [(w.schema, w.table) for w in settings.webhooks] == [("public", "orders"), ("billing", "invoices")]
