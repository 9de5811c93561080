"""The documentation holds together: a short README with the two commands, links to every
page, and no relative link or anchor that leads nowhere.

Plain text checks (no TensorFlow): README.md at most 15,000 bytes; every relative link
(`[text](path)`, `[text](path#anchor)`, `![alt](image)`) in the README, docs/*.md and the
folder READMEs points to a file or folder of the repository, and an anchor into a Markdown
file names one of its headings (GitHub's slugs); the README links every docs page.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_BYTES = 15_000
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS] + [REPO / p for p in (
    "benchmarks/README.md", "results/README.md", "sphere_resnet/results/README.md")]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)


def without_code(text):
    """Text with fenced blocks removed and code spans replaced by placeholder letters, so
    that `# comment` lines and `[x](y)` inside code are not read as Markdown."""
    text = FENCE.sub("", text)
    return CODE_SPAN.sub(lambda m: "c" * len(m.group(2)), text)


def slug(heading):
    """GitHub's anchor for a heading: the text without Markdown, lower case, punctuation
    dropped (letters, digits, `_`, `-` and spaces kept), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links -> their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor GitHub gives the headings of a Markdown file (duplicates get -1, -2...)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen, result = {}, set()
    for _, title in HEADING.findall(text):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def relative_links(path, text=None):
    """(target, resolved path, anchor or None) for each relative link of a Markdown file
    (or of `text`, a part of it)."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    links = []
    for _, target in LINK.findall(without_code(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        links.append((target, resolved, anchor or None))
    return links


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, more than {README_MAX_BYTES}: move the details into "
        "docs/ (or benchmarks/README.md) and link them")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_somewhere(page):
    assert page.exists(), f"{page.relative_to(REPO)} is missing"
    broken = []
    for target, resolved, anchor in relative_links(page):
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: {resolved.relative_to(REPO)} has no heading "
                          f"#{anchor} (it has: {', '.join(sorted(anchors(resolved)))})")
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n  " + "\n  ".join(broken)


def test_readme_links_every_page():
    linked = {resolved for _, resolved, _ in relative_links(README)}
    wanted = [*DOCS, REPO / "benchmarks" / "README.md"]
    missing = [str(p.relative_to(REPO)) for p in wanted if p.resolve() not in linked]
    assert not missing, f"README.md does not link {', '.join(missing)}"


@pytest.mark.parametrize("page", [*DOCS, REPO / "benchmarks" / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_pages_start_with_a_title_and_a_way_back(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines and re.match(r"# \S", lines[0]), f"{page.name}: first line is not a title"
    head = "\n".join(lines[:5])
    assert any(resolved == README for _, resolved, _ in relative_links(page, head)), (
        f"{page.relative_to(REPO)}: no link back to README.md under its title")


@pytest.mark.parametrize("command", [
    "pip install -r requirements.txt && python train_spherenet.py",
    "pip install -r requirements.txt && python -m pytest",
])
def test_readme_gives_the_two_commands(command):
    # CI runs exactly the test command the README gives.
    assert command in README.read_text(encoding="utf-8"), f"README.md lacks `{command}`"


def test_slug_is_githubs():
    assert slug("The switches: `norm` and `w_norm`") == "the-switches-norm-and-w_norm"
    assert slug("The original's checkpoint") == "the-originals-checkpoint"
    assert slug("GPU, mixed precision and XLA") == "gpu-mixed-precision-and-xla"
    assert slug("Figures measured on the 2-core CPU (TF 2.21, batch 32)") == (
        "figures-measured-on-the-2-core-cpu-tf-221-batch-32")


def test_ci_runs_every_test():
    """CI runs the README's command, and that command deselects nothing: resume,
    multi-worker, XLA and mixed precision (the tests marked slow) are checked on every
    landing."""
    ini = (REPO / "pytest.ini").read_text(encoding="utf-8")
    addopts = re.search(r"^addopts\s*=(.*)$", ini, re.M).group(1).split()
    assert "-m" not in addopts and not any(a.startswith("-m") or a == "-k" for a in addopts), (
        f"pytest.ini's addopts deselect tests: {addopts}")
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if "pytest" in line and not line.lstrip().startswith("#")]
    assert commands == ["python -m pytest"], f".ci/run runs {commands}, not the README's command"
