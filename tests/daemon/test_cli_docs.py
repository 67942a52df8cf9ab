"""The man page and the bash and zsh completions are generated from the parser (manpage.py)
and shipped in packaging/: they stay in sync with it, the page renders without a groff
warning, and the completion completes verbs, options and choices in a real bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

from speed import scaled

from sysdream.daemon.commands import manpage

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def test_the_shipped_man_page_and_completion_are_the_parsers():
    fix = ("regenerate: .venv/bin/python -m sysdream.daemon.commands.manpage man|bash|zsh"
           " > packaging/...")
    assert (PACKAGING / "sysdream.8").read_text() == manpage.man(), fix
    assert (PACKAGING / "sysdream.bash-completion").read_text() == manpage.completion("bash"), fix
    assert (PACKAGING / "sysdream.zsh-completion").read_text() == manpage.completion("zsh"), fix


def test_the_man_page_renders_cleanly_and_names_every_verb_and_exit_code():
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PACKAGING / "sysdream.8")],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", str(PACKAGING / "sysdream.8")],
                          capture_output=True, text=True, timeout=scaled(60)).stdout
    for verb in ("run", "train", "keygen", "allow", "explain", "doctor"):
        assert f"   {verb}\n" in text, verb
    assert "--trusted" not in text and "--sign" in text and "EXIT STATUS" in text


def complete(words: list[str]) -> list[str]:
    script = (f"source {PACKAGING / 'sysdream.bash-completion'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
              f"COMP_CWORD={len(words) - 1}; _shtab_sysdream; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                       timeout=scaled(30))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completes_verbs_options_and_choices():
    assert complete(["sysdream", "tr"]) == ["train"]
    assert "keygen" in complete(["sysdream", ""])
    assert complete(["sysdream", "run", "--con"]) == ["--config"]
    assert complete(["sysdream", "doctor", "--format", ""]) == ["text", "json"]
    assert "--alert-confidence" in complete(["sysdream", "train", "--al"])


# the long-running verbs: their output is alerts (--json-lines) and log lines, not a result
SERVICES = {"run", "agent", "server", "worker"}


def test_every_verb_that_prints_takes_format_json():
    """One output switch everywhere: a verb added without --format json fails here."""
    import argparse

    from sysdream.daemon.commands.cli import build_parser

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    missing = [verb for verb, p in sub.choices.items() if verb not in SERVICES and not any(
        "--format" in a.option_strings and {"text", "json"} <= set(a.choices or ())
        for a in p._actions)]
    assert missing == []
