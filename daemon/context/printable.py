"""Names and arguments made safe for people to read: one line, no terminal escapes.

Process names (comm), executables and command lines are chosen by whoever runs the
process, so they may hold newlines (a fake log line), ESC (terminal control), BEL, bytes
that are not UTF-8, or invisible format characters (Unicode category Cf: U+202E turns the
rest of a line around, U+200B hides inside a name that then reads like another). Every
human-facing output shows them through `printable`: control and format characters as
backslash escapes, undecodable bytes as \\xNN, and a literal backslash doubled, so two
different names never print alike.
"""

from __future__ import annotations

import shlex
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:          # an undecodable byte (surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
        return f"\\x{o:02x}"
    if o in (0x2028, 0x2029) or 0xD800 <= o <= 0xDFFF:   # line separators, lone surrogates
        return f"\\u{o:04x}"
    if unicodedata.category(c) == "Cf":     # bidi overrides, zero-width characters, tags
        return f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}"
    return c


def printable(value: bytes | str) -> str:
    """`value` as one printable line (bytes are read as UTF-8, bad bytes kept as \\xNN)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if value.isprintable() and "\\" not in value:
        return value
    return "".join(_char(c) for c in value)


def reprinted(text: str) -> str:
    """Text that was escaped by `printable` when it was written (an alert read back from
    journald or a JSON-lines file): shown as it is, except that any control character it
    holds (a file someone else wrote) is escaped too. Backslashes stay single."""
    if text.isprintable():
        return text
    return "".join(c if c == "\\" else _char(c) for c in text)


def command_line(args: list[bytes]) -> str:
    """argv as one printable line a POSIX shell reads back as the same words (shlex.join:
    `it's` becomes 'it'"'"'s', which a shell takes as one word, where 'it\\'s' is not)."""
    return shlex.join(printable(a) for a in args)
