"""Text columns as the relay reads them: bytes, decoded without ever raising, judged per row.

Every text column is read as bytes (``CAST(... AS BINARY)`` in sql.py), because a table can hold
bytes its column's character set does not allow: MariaDB's utf8mb4 takes CESU-8 (UTF-8-encoded
surrogates) even in a strict ``sql_mode``, and a ``_binary`` literal puts any byte in an ascii
column.  Decoded by the driver, one such row would raise in the middle of a read and stop every
shard; an ascii column would come back with ``?`` for each high byte (a lossy replacement).

Decoding with ``surrogateescape`` is lossless and one-to-one: each byte that is not part of valid
UTF-8 becomes one of U+DC80..U+DCFF, which valid UTF-8 never decodes to.  So an aggregate key stays
unique per byte sequence (SQL compares keys as bytes), :func:`raw` gives the stored bytes back
for SQL, and :func:`problem` tells a value that must not be published, its row is dead-lettered.
"""

from __future__ import annotations

import re

# What surrogateescape makes of a byte that is not valid UTF-8 (any surrogate: none is valid text).
_ESCAPED = re.compile("[\ud800-\udfff]")
SHOWN_BYTES = 60


def decode(value: bytes | bytearray) -> str:
    """A column's bytes as text; never raises."""
    return bytes(value).decode("utf-8", "surrogateescape")


def decode_nullable(value: bytes | bytearray | None) -> str | None:
    return None if value is None else decode(value)


def raw(text: str) -> bytes:
    """The bytes :func:`decode` read (for SQL parameters that must match them exactly); never
    raises (a surrogate :func:`decode` cannot make is encoded as MariaDB stores one: CESU-8)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def problem(text: str, column: str, ascii_only: bool = False) -> str | None:
    """Why the value of ``column`` cannot be published as text (None: it can).  The reason names
    the column and shows its bytes (escaped: it is stored as ``last_error``)."""
    if text.isascii():
        return None
    if ascii_only:
        return f"{column} is not ASCII (the column is ascii): {_bytes(text)}"
    bad = _ESCAPED.search(text)
    if bad is None:
        return None
    at = len(raw(text[: bad.start()]))
    return f"{column} is not valid UTF-8 (byte {at}): {_bytes(text)}"


def shown(text: str) -> str:
    """``text`` safe to print, log, return as JSON or store as ``last_error`` (PyMySQL encodes a
    statement strictly): bytes that are not UTF-8 as ``\\xNN``."""
    if text.isascii() or _ESCAPED.search(text) is None:
        return text
    return raw(text).decode("utf-8", "backslashreplace")


def _bytes(text: str) -> str:
    data = raw(text)
    more = f"... ({len(data)} bytes)" if len(data) > SHOWN_BYTES else ""
    return repr(data[:SHOWN_BYTES]) + more
