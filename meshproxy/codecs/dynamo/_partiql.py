"""Best-effort table names from DynamoDB PartiQL statements.

``ExecuteStatement``, ``BatchExecuteStatement`` and ``ExecuteTransaction`` carry no ``TableName``: the
table is inside the statement text. DynamoDB's PartiQL subset names it in few places, and those are the
only places read here:

* ``SELECT ... FROM t`` / ``FROM "t"`` / ``FROM "t"."index"`` (an index read is a read of its table),
* ``INSERT INTO "t" VALUE {...}``, ``UPDATE "t" SET ...``, ``DELETE FROM "t" WHERE ...``,
* ``EXISTS(SELECT * FROM "t" ...)`` inside ``ExecuteTransaction``.

The reader is a tiny tokenizer, not a parser: it skips string literals ('it''s') and quoted identifiers
("a""b" is the identifier ``a"b``), compares keywords case-insensitively, and returns ``()`` whenever it
is unsure (an unterminated quote, a statement it does not recognise, no identifier where one must be).
Stats would rather miss a table than invent one.
"""

from __future__ import annotations

import functools
from typing import Final

_STATEMENT_KEYWORDS: Final = frozenset({"select", "insert", "update", "delete", "exists"})
_TABLE_FOLLOWS: Final = frozenset({"from", "into"})
_IDENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$")

# Token kinds.
_WORD = 0
_QUOTED = 1
_OTHER = 2


class _UnsureError(Exception):
    """The statement cannot be read with confidence."""


def _tokens(statement: str) -> list[tuple[int, str]]:
    """Words, quoted identifiers (unescaped) and single other characters; string literals dropped."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(statement)
    while i < n:
        c = statement[i]
        if c.isspace():
            i += 1
        elif c == '"' or c == "'":
            pieces: list[str] = []
            i += 1
            while True:
                end = statement.find(c, i)
                if end < 0:
                    raise _UnsureError
                pieces.append(statement[i:end])
                if end + 1 < n and statement[end + 1] == c:  # doubled quote: an escaped quote
                    pieces.append(c)
                    i = end + 2
                    continue
                i = end + 1
                break
            if c == '"':
                out.append((_QUOTED, "".join(pieces)))
        elif c in _IDENT_CHARS:
            start = i
            while i < n and statement[i] in _IDENT_CHARS:
                i += 1
            out.append((_WORD, statement[start:i]))
        else:
            out.append((_OTHER, c))
            i += 1
    return out


def _identifier_at(tokens: list[tuple[int, str]], index: int) -> str:
    """The table identifier starting at ``index`` (``"t"."index"`` and ``t.index`` give ``t``)."""
    if index >= len(tokens):
        raise _UnsureError
    kind, text = tokens[index]
    if kind == _OTHER or not text or (kind == _WORD and text.lower() in _STATEMENT_KEYWORDS):
        raise _UnsureError
    return text


@functools.lru_cache(maxsize=1024)
def tables_in_statement(statement: str) -> tuple[str, ...]:
    """The tables a PartiQL statement reads or writes, in order, no repeats; ``()`` when unsure.

    Cached: applications send the same few parameterised statements over and over.
    """
    try:
        tokens = _tokens(statement)
        if not tokens or tokens[0][0] != _WORD or tokens[0][1].lower() not in _STATEMENT_KEYWORDS:
            return ()
        found: list[str] = []
        if tokens[0][1].lower() == "update":
            found.append(_identifier_at(tokens, 1))
        for index, (kind, text) in enumerate(tokens):
            if kind == _WORD and text.lower() in _TABLE_FOLLOWS:
                table = _identifier_at(tokens, index + 1)
                if table not in found:
                    found.append(table)
        return tuple(found)
    except _UnsureError:
        return ()
