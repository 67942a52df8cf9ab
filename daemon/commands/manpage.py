"""The man page (sysdream.8) and the bash and zsh completions of the command line,
generated from its parser (daemon/commands/cli.py), so that none can drift from it; the
completions by shtab (a build-time tool: the shipped files are generated, the daemon
never imports it). tests/daemon/test_cli_docs.py keeps the shipped files in sync:

    .venv/bin/python -m sysdream.daemon.commands.manpage man > packaging/sysdream.8
    .venv/bin/python -m sysdream.daemon.commands.manpage bash > packaging/sysdream.bash-completion
    .venv/bin/python -m sysdream.daemon.commands.manpage zsh > packaging/sysdream.zsh-completion
"""

from __future__ import annotations

import argparse
import sys

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


def _help_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help or "" for a in sub._choices_actions}


def _esc(text: str) -> str:
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln
                     for ln in out.splitlines())


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, (argparse._HelpAction,
                                                        argparse._VersionAction))]


def man() -> str:
    parser = build_parser()
    helps = _help_of(parser)
    out = [".TH SYSDREAM 8 \"\" \"sysdream\" \"System Administration\"",
           ".SH NAME", "sysdream \\- " + _esc(parser.description or ""),
           ".SH SYNOPSIS", ".B sysdream", "\\fIVERB\\fR [\\fIOPTIONS\\fR]", ".br",
           ".B sysdream", "\\fB\\-\\-version\\fR", ".SH DESCRIPTION",
           _esc("sysdream traces every process's syscalls with eBPF, learns what normal "
                "looks like on this host, and raises an alert (journald, JSON lines, "
                "syslog, a webhook) when a process departs from it. `sysdream run` is the "
                "service; the other verbs record, train, score, explain and tune."),
           ".SH VERBS"]
    for name, p in _verbs(parser).items():
        out += [".SS " + _esc(name), _esc(helps.get(name, ""))]
        for a in _options(p):
            flags = ", ".join(a.option_strings) or a.metavar or a.dest
            meta = ""
            if a.option_strings and a.nargs != 0:
                meta = " " + (a.metavar if isinstance(a.metavar, str) else a.dest.upper())
            out += [".TP", "\\fB" + _esc(flags) + "\\fR" + _esc(meta),
                    _esc(a.help or "") if a.help != argparse.SUPPRESS else ""]
    out += [".SH EXIT STATUS",
            _esc("Every failure prints one line on standard error naming the fix."), ".TP"]
    for code in Exit:
        out += [f"\\fB{int(code)}\\fR", _esc(EXIT_TEXT[code]), ".TP"]
    out.pop()
    out += [".SH FILES", ".TP", "/etc/sysdream/sysdream.toml",
            _esc("the configuration (every key: /usr/share/doc/sysdream/configuration.md)"),
            ".TP", "/var/lib/sysdream",
            _esc("the state directory: baselines, the learnt model, allow.json"),
            ".SH SEE ALSO", "journalctl(1), systemd.exec(5)"]
    return "\n".join(out) + "\n"


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
