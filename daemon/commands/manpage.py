"""The man page (sysdream.8) and the bash completion of the command line, generated from
its parser (daemon/commands/cli.py), so that neither can drift from it.
tests/daemon/test_cli_docs.py keeps the shipped files in sync:

    .venv/bin/python -m sysdream.daemon.commands.manpage man > packaging/sysdream.8
    .venv/bin/python -m sysdream.daemon.commands.manpage bash > packaging/sysdream.bash-completion
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


def bash() -> str:
    parser = build_parser()
    verbs = _verbs(parser)
    lines = ["# bash completion for sysdream; generated from its parser "
             "(python -m sysdream.daemon.commands.manpage bash)",
             "_sysdream() {",
             "    local cur prev verb",
             "    cur=\"${COMP_WORDS[COMP_CWORD]}\"",
             "    prev=\"${COMP_WORDS[COMP_CWORD-1]}\"",
             "    verb=\"${COMP_WORDS[1]}\"",
             "    if [ \"$COMP_CWORD\" -eq 1 ]; then",
             f"        COMPREPLY=($(compgen -W \"{' '.join(verbs)} --version --help\" "
             "-- \"$cur\"))",
             "        return",
             "    fi",
             "    case \"$prev\" in"]
    files = set()
    for p in verbs.values():
        for a in _options(p):
            if a.option_strings and a.nargs != 0 and a.choices is None:
                files.update(o for o in a.option_strings if o.startswith("--"))
    lines += [f"        {'|'.join(sorted(files))})",
              "            COMPREPLY=($(compgen -f -- \"$cur\")); return;;"]
    for p in verbs.values():
        for a in _options(p):
            if a.choices and a.option_strings:
                opts = "|".join(o for o in a.option_strings if o.startswith("--"))
                lines += [f"        {opts})",
                          f"            COMPREPLY=($(compgen -W \"{' '.join(map(str, a.choices))}\""
                          " -- \"$cur\")); return;;"]
    lines += ["    esac", "    case \"$verb\" in"]
    for name, p in verbs.items():
        opts = sorted(o for a in p._actions for o in a.option_strings)
        lines += [f"        {name})",
                  f"            COMPREPLY=($(compgen -W \"{' '.join(opts)}\" -- \"$cur\"))",
                  "            [ ${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "
                  "\"$cur\"));;"]
    lines += ["    esac", "}", "complete -F _sysdream sysdream", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what not in ("man", "bash"):
        sys.exit("usage: python -m sysdream.daemon.commands.manpage man|bash")
    sys.stdout.write(man() if what == "man" else bash())
