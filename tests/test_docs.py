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


def test_examples_that_budget_cpu_seconds_lift_the_default_wall_budget():
    """distill_attention / train_draft_heads stop at time_budget_s (default 300 wall seconds) or cpu_budget_s,
    whichever comes first: an example that asks for CPU seconds without time_budget_s=None (or its own wall
    budget) would stop at 300 wall seconds, not at the CPU seconds it shows."""
    short = []
    for f in files("*.md", "*.py"):
        if {"tests", "benchmarks"} & set(f.relative_to(ROOT).parts):     # benchmarks: records of past runs
            continue
        for call in re.findall(r"(?:distill_attention|train_draft_heads)\([^()]*\)", f.read_text(encoding="utf-8")):
            if "cpu_budget_s=" in call and "time_budget_s=" not in call:
                short.append(f"{f.relative_to(ROOT)}: {call}")
    assert not short, short
