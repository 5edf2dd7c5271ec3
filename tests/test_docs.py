"""The reference tables in docs/ are the code's own: each committed table equals the one
tools/gendocs.py generates (the study config's keys and defaults in docs/STUDIES.md, from the
settings dataclasses; ``loraplace run --help`` in docs/CLI.md, from the parser). When a setting
or an option changes, rerunning the generator is all it takes to pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gendocs.py"


def _gendocs():
    spec = importlib.util.spec_from_file_location("gendocs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gendocs = _gendocs()


@pytest.mark.parametrize("page", list(gendocs.TARGETS))
def test_the_committed_table_is_the_generated_one(page):
    if gendocs.committed(page) != gendocs.generated(page):
        pytest.fail(
            f"the generated table in {page} is out of date; regenerate it with: {gendocs.COMMAND}",
            pytrace=False,
        )


def test_every_settings_field_has_a_row_with_its_default():
    from dataclasses import fields

    from loraplace.settings import DataConfig, TrainingSettings, field_doc

    table = gendocs.study_keys()
    for cls, section in ((DataConfig, "data"), (TrainingSettings, "training")):
        for f in fields(cls):
            assert f"| `{section}.{f.name}` |" in table
            assert field_doc(cls, f.name), f"{cls.__name__}.{f.name} has no field doc"
    assert "| `training.seeds` | `[0, 1]` |" in table  # the default a config resolves to
    assert "| `plans` |" not in table  # compiled state, not a key


def test_run_help_is_formatted_at_a_fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    text = gendocs.run_help()
    assert text.startswith("```text\n$ loraplace run --help\nusage: loraplace run")
    assert max(len(line) for line in text.splitlines()) <= gendocs.HELP_COLUMNS
    assert any(len(line) > 80 for line in text.splitlines())
    monkeypatch.setenv("COLUMNS", "200")
    assert gendocs.run_help() == text


def test_check_mode_names_the_command_when_a_table_is_stale(tmp_path, monkeypatch, capsys):
    for page in gendocs.TARGETS:
        copy = tmp_path / page
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((gendocs.ROOT / page).read_text())
    monkeypatch.setattr(gendocs, "ROOT", tmp_path)
    assert gendocs.main(["--check"]) == 0
    studies = tmp_path / "docs" / "STUDIES.md"
    studies.write_text(studies.read_text().replace("| `data.dataset` |", "| `data.datset` |"))
    assert gendocs.main(["--check"]) == 1
    assert gendocs.COMMAND in capsys.readouterr().err
    assert gendocs.main([]) == 0 and gendocs.main(["--check"]) == 0  # rewritten in place


def test_the_reading_documents_stay_short_and_their_links_resolve():
    # A reader takes in RESULTS.md and the README in a minute (issue #40): at most 5,000 words
    # and 300 lines. Every relative link of the README and docs/ points at a file that exists.
    root = Path(__file__).resolve().parents[1]
    assert len((root / "docs" / "RESULTS.md").read_text().split()) <= 5000
    assert len((root / "README.md").read_text().splitlines()) <= 300
    import re

    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert broken == []
