"""Names for MongoDB error codes, for stats keyed by ``codeName``.

Servers send ``codeName`` beside ``code`` in command errors, but only ``code`` in ``writeErrors`` entries;
this table names the codes a proxy meets most, and anything else becomes ``Location<code>`` as MongoDB's
own unnamed assertion codes are spelled.
"""

from __future__ import annotations

from typing import Any

CODE_NAMES: dict[int, str] = {
    2: "BadValue",
    9: "FailedToParse",
    11: "UserNotFound",
    13: "Unauthorized",
    14: "TypeMismatch",
    18: "AuthenticationFailed",
    26: "NamespaceNotFound",
    28: "PathNotViable",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    55: "InvalidDBRef",
    56: "EmptyFieldName",
    57: "DottedFieldName",
    59: "CommandNotFound",
    64: "WriteConcernFailed",
    66: "ImmutableField",
    79: "UnknownReplWriteConcern",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    91: "ShutdownInProgress",
    100: "UnsatisfiableWriteConcern",
    112: "WriteConflict",
    121: "DocumentValidationFailure",
    189: "PrimarySteppedDown",
    251: "NoSuchTransaction",
    262: "ExceededTimeLimit",
    10107: "NotWritablePrimary",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
}
"""Names of the error codes met most often. Servers put ``codeName`` in command errors but not in
``writeErrors`` entries (``{index, code, errmsg}``), so write errors are named from this table; a code it
does not know is named ``Location<code>``, MongoDB's own spelling for codes without a name."""


def code_name(code: int | None, name: str | None = None) -> str:
    """The name errors are counted under: the server's ``codeName``, else a known name for ``code``."""
    if name:
        return name
    if code is None:
        return "UnknownError"
    return CODE_NAMES.get(code) or f"Location{code}"


def write_error_name(write_error: Any) -> str:
    """``codeName`` of one entry of ``ReplySummary.write_errors``: a name, a code, a (code, name) pair, or a
    mapping with ``code`` / ``codeName``."""
    if isinstance(write_error, str):
        return write_error
    if isinstance(write_error, int):
        return code_name(write_error)
    if isinstance(write_error, dict):
        code = write_error.get("code")
        return code_name(code if isinstance(code, int) else None, write_error.get("codeName"))
    if isinstance(write_error, tuple | list):
        codes = [part for part in write_error if isinstance(part, int) and not isinstance(part, bool)]
        names = [part for part in write_error if isinstance(part, str) and part]
        return code_name(codes[0] if codes else None, names[0] if names else None)
    code = getattr(write_error, "code", None)
    return code_name(code if isinstance(code, int) else None, getattr(write_error, "code_name", None))
