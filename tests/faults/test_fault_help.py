"""Help text: every option of every subcommand shows its default once (it showed
`(default: torch's choice) (default: None)` and `(default: 1) (default: None)`)."""

import argparse
import re

import pytest

from densa.cli import build_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(commands()))
def test_each_option_shows_its_default_once(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal: a fixed width
    text = commands()[command].format_help()
    options = text[text.index("\noptions:\n") :]
    entries = re.split(r"\n(?=  \S)", options)  # one per option; wrapped lines are indented further
    assert len(entries) > 2
    for entry in entries:
        flat = " ".join(entry.split())
        assert flat.count("(default:") <= 1, flat
        assert "(default: None)" not in flat, flat


def test_the_defaults_shown_are_the_real_ones(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    text = " ".join(commands()["train"].format_help().split())
    assert "--threads THREADS CPU threads (default: torch's choice) " in text
    assert (
        "split between them) (default: 1)" in text
        and "--epochs EPOCHS passes over the training set (default: 5)" in text
    )
    sweep = " ".join(commands()["sweep"].format_help().split())
    assert "(fixed when the study is created: a worker given another value is refused; default: 60)" in sweep
