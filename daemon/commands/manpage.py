"""The man page (sysdream.8) and the bash and zsh completions of the command line,
generated from its parser (daemon/commands/cli.py), so that none can drift from it; the
page by argparse-manpage, the completions by shtab (build-time tools: the shipped files
are generated, the daemon never imports them). tests/daemon/test_cli_docs.py keeps the
shipped files in sync:

    .venv/bin/python -m sysdream.daemon.commands.manpage man > packaging/sysdream.8
    .venv/bin/python -m sysdream.daemon.commands.manpage bash > packaging/sysdream.bash-completion
    .venv/bin/python -m sysdream.daemon.commands.manpage zsh > packaging/sysdream.zsh-completion
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap

from ..exitcodes import Exit
from .cli import build_parser

EXIT_TEXT = {
    Exit.OK: "success", Exit.FAILURE: "an internal error (a bug: please report it)",
    Exit.USAGE: "bad command line or value", Exit.NO_PRIVILEGES: "no privileges",
    Exit.BPF_UNAVAILABLE: "no bpf() syscall", Exit.TRACEPOINT_MISSING: "a tracepoint is missing",
    Exit.HEADERS_MISSING: "kernel headers missing", Exit.BCC_MISSING: "bcc missing",
    Exit.RING_BUFFER_UNSUPPORTED: "no BPF ring buffer",
    Exit.PROGRAM_LOAD: "the BPF program failed to load",
    Exit.BAD_TRACE: "bad trace file, or one record cannot write (disk full)",
    Exit.BAD_MODEL: "bad model bundle (missing, corrupt, modified, unsigned where keys are "
                    "trusted, or another format version)",
    Exit.BAD_CONFIG: "bad configuration", Exit.METRICS_PORT: "the metrics port cannot be bound",
    Exit.STATE_DIR: "the state directory cannot be created or written",
    Exit.FLEET_ENDPOINT: "a fleet server address cannot be bound",
    Exit.UNTRUSTED: "an input that claims to come from sysdream but did not (a journald "
                    "alert entry another user wrote)",
    Exit.ANOMALOUS: "score --exit-status: a window was above the bound (no error)",
    Exit.NOT_RUNNING: "status: no daemon runs with this state directory (or its status is "
                      "stale)",
    Exit.MISSING_PACKAGE: "a Python package an option needs is not installed (matplotlib, "
                          "the plots extra, for --plot)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C, SIGINT); SIGTERM stops with 0",
}


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln
                     for ln in out.splitlines())


def _for_the_page(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser as the page shows it: usage lines wrapped at 80 columns whatever the
    terminal that generates it (argparse reads $COLUMNS: the shipped file would differ by
    who ran the command), the verbs under VERBS, --version listed once, and the epilog
    left out (its examples and exit codes become EXAMPLES and EXIT STATUS below), as is the
    description (NAME has it)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in (parser, *sub.choices.values()):
        p.formatter_class = functools.partial(p.formatter_class, width=80)
        for a in p._actions:
            if isinstance(a, argparse._VersionAction) and p is not parser:
                a.help = argparse.SUPPRESS
    for verb in sub._choices_actions:     # argparse-manpage 4.8 writes a verb's help raw
        verb.help = _esc(verb.help or "")
    next(g for g in parser._action_groups if sub in g._group_actions).title = "verbs"
    parser.epilog = parser.description = None
    return parser


def man() -> str:
    """sysdream.8, by argparse-manpage (a kept generator: every verb with its usage,
    description and options by group, hidden options left out), with the sections it
    cannot take from a parser added: synopsis, examples, exit status, files, see also."""
    from argparse_manpage.manpage import Manpage

    from ..version import version

    parser = build_parser()
    name = parser.description
    examples = textwrap.dedent(
        parser.epilog.split("\n\nexit codes:")[0].removeprefix("examples:\n"))
    page = Manpage(_for_the_page(parser), format="single-commands-section")
    # no date: a build date would make the shipped page stale every day
    page.section, page.date, page.manual = 8, "", "System Administration"
    page.source, page.description = f"sysdream {version()}", name
    page.add_section("synopsis", "=", "\n".join([
        ".B sysdream", "\\fIVERB\\fR [\\fIOPTIONS\\fR]", ".br",
        ".B sysdream", "\\fB\\-\\-version\\fR"]))
    page.add_section("description", "=", _esc(
        "sysdream traces every process's syscalls with eBPF, learns what normal looks "
        "like on this host, and raises an alert (journald, JSON lines, syslog, a webhook) "
        "when a process departs from it. `sysdream run` is the service; the other verbs "
        "record, train, score, explain and tune."))
    page.add_section("examples", "=", "\n".join([".nf", _esc(examples), ".fi"]))
    status = [_esc("Every failure prints one line on standard error naming the fix.")]
    for code in Exit:
        status += [".TP", f"\\fB{int(code)}\\fR", _esc(EXIT_TEXT[code])]
    page.add_section("exit status", "=", "\n".join(status))
    page.add_section("files", "=", "\n".join([
        ".TP", "/etc/sysdream/sysdream.toml",
        _esc("the configuration (every key: /usr/share/doc/sysdream/configuration.md)"),
        ".TP", "/var/lib/sysdream",
        _esc("the state directory: baselines, the learnt model, allow.json")]))
    page.add_section("see also", "=", "journalctl(1), systemd.exec(5)")
    return str(page)


def _completing_parser() -> argparse.ArgumentParser:
    """The parser with file completion on every option that takes a value other than a
    number or a choice (shtab completes choices itself)."""
    import shtab

    parser = build_parser()
    for p in (parser, *_verbs(parser).values()):
        for a in p._actions:
            if a.nargs != 0 and a.choices is None and a.type not in (int, float):
                a.complete = shtab.FILE
    return parser


def completion(shell: str) -> str:
    """bash or zsh completion, by shtab (a kept generator: it follows argparse's verbs,
    options and choices; zsh gets each option's help as its description)."""
    import shtab

    return shtab.complete(_completing_parser(), shell)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("man", "bash", "zsh"):
        sys.exit("usage: python -m sysdream.daemon.commands.manpage man|bash|zsh")
    sys.stdout.write(man() if what == "man" else completion(what))
