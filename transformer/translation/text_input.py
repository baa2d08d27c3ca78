"""The text the command lines translate, read as bytes and checked one line at a time.

A line is what lies between two ``\\n`` bytes (a ``\\r`` before the ``\\n`` is dropped), so lines
in = lines out: Unicode's other line breaks (form feed, U+2028, ...) stay inside their line, as
they would not if the text were split by :meth:`str.splitlines`. Each line is decoded as UTF-8
here, not by a text stream, so that a bad byte is reported with its line number:

* ``errors="strict"`` raises :class:`BadInput` at the first line that is not UTF-8, naming the
  line, the bytes and what to do; the lines before it have already been yielded.
* ``errors="replace"`` puts U+FFFD in place of each bad byte sequence and says so in the line's
  ``notes``.

Control characters (NUL, escape, DEL, ...; tab excepted) are not text a model was trained on:
each is replaced by a space, and the line's ``notes`` say so. A UTF-8 byte-order mark at the
start of the input is dropped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

ERRORS = ("strict", "replace")
ERRORS_HELP = (
    "what to do with a line that is not valid UTF-8: strict stops there with a message naming "
    "the line (the lines before it are written); replace puts U+FFFD in place of each bad byte "
    "sequence, says so on stderr and translates the line"
)
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
UTF16_BYTE_ORDER_MARKS = (b"\xff\xfe", b"\xfe\xff")  # little- and big-endian


def utf16_message(name: str, raw: bytes) -> str | None:
    """What to say when the first line ``raw`` of ``name`` starts as UTF-16 does (Windows
    PowerShell's ``>`` writes it); None if it does not."""
    if not raw.startswith(UTF16_BYTE_ORDER_MARKS):
        return None
    return (
        f"{name} is UTF-16 (it starts with the byte order mark {raw[:2].hex(' ')}), not UTF-8: "
        "convert it (iconv -f utf-16 -t utf-8)"
    )


class BadInput(ValueError):
    """Input that cannot be used as given; the message names the place and what to do."""


@dataclass(frozen=True)
class Line:
    """One input line: its 1-based ``number``, its decoded ``text``, and ``notes`` saying what
    was changed to make it text (empty if nothing)."""

    number: int
    text: str
    notes: tuple[str, ...] = ()


def check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")


def decode_line(raw: bytes, where: str, errors: str = "strict") -> tuple[str, tuple[str, ...]]:
    """``raw`` decoded as UTF-8, control characters made spaces; and notes on what was changed.

    ``where`` names the line in messages (``"line 5 of in.de"``). Raises :class:`BadInput`
    for invalid UTF-8 when ``errors`` is ``"strict"``.
    """
    check_errors(errors)
    notes = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.end].hex(" ")
        if errors == "strict":
            raise BadInput(
                f"{where}: not valid UTF-8 (bytes {bad} at byte {err.start + 1}); convert the "
                "text to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --errors replace to "
                "translate it with U+FFFD in place of the bad bytes"
            ) from None
        text = raw.decode("utf-8", errors="replace")
        notes.append(f"invalid UTF-8 (bytes {bad} at byte {err.start + 1}, ...) replaced by U+FFFD")
    text, controls = replace_control_characters(text)
    if controls:
        names = ", ".join(sorted({f"U+{ord(c):04X}" for c in controls}))
        notes.append(f"{len(controls)} control character(s) ({names}) replaced by spaces")
    return text, tuple(notes)


def replace_control_characters(text: str) -> tuple[str, list[str]]:
    """``text`` with every control character but tab replaced by a space; the ones replaced."""
    found = [c for c in text if c != "\t" and unicodedata.category(c) == "Cc"]
    if not found:
        return text, found
    controls = set(found)
    return "".join(" " if c in controls else c for c in text), found


def read_lines(stream: BinaryIO, name: str, errors: str = "strict") -> Iterator[Line]:
    """Each line of the binary ``stream`` (named ``name`` in messages), read as it is needed.

    Raises :class:`BadInput` when the stream is empty (no bytes at all: nothing to translate)
    or UTF-16 (whatever ``errors`` says) and, with ``errors="strict"``, at the first line that is
    not UTF-8.
    """
    check_errors(errors)
    number = 0
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(BYTE_ORDER_MARK):
            raw = raw[len(BYTE_ORDER_MARK) :]
        if number == 1 and (message := utf16_message(name, raw)):
            raise BadInput(message)  # with --errors replace too: every line would be garbage
        raw = raw.removesuffix(b"\n").removesuffix(b"\r")
        text, notes = decode_line(raw, f"line {number} of {name}", errors)
        yield Line(number, text, notes)
    if number == 0:
        raise BadInput(f"{name} is empty: there is nothing to translate (one sentence a line)")


def argument_text(value: str, option: str, errors: str = "strict") -> tuple[str, tuple[str, ...]]:
    """A command-line argument checked like a line of input (:func:`decode_line`).

    Python hands over bytes of the command line that are not UTF-8 as lone surrogates
    (``surrogateescape``); they are turned back into bytes here so that they get the same
    message, or the same U+FFFD, as a bad line of a file.
    """
    try:
        raw = value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte was escaped to: invalid UTF-8 as well
        raw = value.encode("utf-8", errors="surrogatepass")
    return decode_line(raw, option, errors)
