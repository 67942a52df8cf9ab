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


def _visible(parser):
    import argparse

    return [a for a in parser._actions if a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def test_the_man_page_renders_cleanly_and_names_every_verb_option_and_exit_code():
    import argparse

    from sysdream.daemon.commands.cli import build_parser
    from sysdream.daemon.exitcodes import Exit
    from sysdream.daemon.version import version

    page = str(PACKAGING / "sysdream.8")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # wide and unhyphenated, so that each flag reads whole on one line
    text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", "-rLL=200n", "-rHY=0", page],
                          capture_output=True, text=True, timeout=scaled(60)).stdout
    head, _, rest = text.partition("\nVERBS\n")
    assert head.startswith("SYSDREAM(8)") and f"sysdream {version()}" in text.splitlines()[-1]
    verbs_part, _, rest = rest.partition("\nEXAMPLES\n")
    examples, _, rest = rest.partition("\nEXIT STATUS\n")
    status, _, rest = rest.partition("\nFILES\n")
    assert "/etc/sysdream/sysdream.toml" in rest and "SEE ALSO" in rest
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sections = ("\n" + verbs_part).split("\n   sysdream ")[1:]
    assert [s.split("\n")[0] for s in sections] == list(sub.choices)
    for (verb, p), section in zip(sub.choices.items(), sections, strict=True):
        # an option's tag line, e.g. "-o DIR, --output DIR", is indented 14 columns
        tags = {w.rstrip(",") for ln in section.splitlines()
                if ln.startswith(" " * 14) and ln[14] != " " for w in ln.split()}
        for a in _visible(p):
            shown = a.option_strings or [a.metavar or "{" + ",".join(a.choices) + "}"]
            assert set(shown) <= tags, (verb, shown)
    assert "sysdream run --model model --no-journald" in examples
    assert "--trusted" not in text and "input\n" not in sections[list(sub.choices).index("score")]
    for code in Exit:
        assert f"\n       {int(code)} " in status, code


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
