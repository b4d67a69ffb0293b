"""The bounds of what the farm can hold: ids, frame numbers, counts, strings and floats.

Declared once, here, and used by the request schemas (scheduler/usecases/submissions.py,
api/schemas.py, api/deps.py) and the columns (scheduler/db/tables.py), so that a value
a request accepts always fits where it is stored and computed:

- ids, frame numbers and counts live in 32-bit integer columns (PostgreSQL's
  ``integer``); sizes in bytes in 64-bit ones (``bigint``);
- text is stored as UTF-8 and PostgreSQL's ``text`` holds no NUL: a string with NUL or
  a lone surrogate (which JSON's ``\\ud800`` escapes can carry, and UTF-8 cannot) is
  refused, never stored;
- floats are finite (JSON has no NaN or infinity: one stored could not be sent back).

Pure: standard library only. The pydantic types built on these bounds are
``scheduler.usecases.submissions``' (``Text``, ``Count``, ``Finite``...).
"""

from __future__ import annotations

import math

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
INT64_MAX = 2**63 - 1

ID_MAX = INT32_MAX  # a row id
FRAME_MIN, FRAME_MAX = INT32_MIN, INT32_MAX  # a frame number (negative ones are legal)
FRAME_DIGITS = len(str(FRAME_MAX))  # the most digits a frame number has, sign apart
COUNT_MAX = INT32_MAX  # a count of frames, attempts, chunks, rows
BYTES_MAX = 2**62  # a size in bytes, with room for sums in a bigint

# The longest strings, as the columns declare them.
NAME_MAX = 200  # a job's name, a node's
POOL_MAX = 64  # a pool's, a region's, a limit's name
HOSTNAME_MAX = 255  # a node's host name
METHOD_MAX = 32  # how a frame's energy was metered (rapl, nvml, model, sums of them)
TAG_MAX = 64  # a node tag a job requires
FRAME_SPEC_MAX = 10_000  # a frame spec's text
PATH_MAX = 1024  # a file's path in a manifest

# NUL and the surrogates (U+D800 to U+DFFF, lone in a str: they are never a character),
# as a JSON-Schema (ECMA 262) and Python pattern of a string that has none of them.
TEXT_PATTERN = r"^[^\u0000\ud800-\udfff]*$"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (NUL, a lone surrogate), or None."""
    if "\x00" in value:
        return "must not contain NUL (\\u0000)"
    if any("\ud800" <= char <= "\udfff" for char in value):
        return "must not contain a lone surrogate (\\ud800-\\udfff): it is not a character"
    return None


def is_finite(value: float) -> bool:
    return math.isfinite(value)
