"""The documentation's references resolve: relative links in the Markdown files, and the `.md` files
that code and pyproject.toml cite (`see docs/design.md`)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "build", "out", ".pytest_cache"}


def files(*patterns):
    for pattern in patterns:
        for p in ROOT.rglob(pattern):
            if not SKIP & set(p.relative_to(ROOT).parts):
                yield p


def test_markdown_links_resolve():
    broken = []
    for md in files("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", md.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_cited_markdown_files_exist():
    missing = []
    anywhere = {p.name for p in files("*.md")}          # a bare name ("see RESULTS.md") may live in any folder
    for f in files("*.py", "*.toml", "*.md"):
        for name in re.findall(r"\b([\w./-]+\.md)\b", f.read_text(encoding="utf-8")):
            if name.startswith(("http", "www.")) or ("/" not in name and name in anywhere):
                continue
            if not ((ROOT / name).exists() or (f.parent / name).exists()):
                missing.append(f"{f.relative_to(ROOT)} cites {name}")
    assert not missing, missing
