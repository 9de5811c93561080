"""Small pieces of the port's error messages, written once.

Every message about bad input says what was received, what is allowed and what to do
(docs/differences.md: bad input); these helpers give the parts
that several modules share.
"""

import difflib


def closest(value, allowed, cutoff=0.5):
    """The allowed value closest to `value` (case-insensitive), or None if none is close."""
    match = difflib.get_close_matches(str(value).lower(), [str(a) for a in allowed], n=1,
                                      cutoff=cutoff)
    return match[0] if match else None


def first_line(error, limit=300):
    """The first line of an exception's message (TensorFlow's are long), at most
    `limit` characters; the exception's type name when it has no message."""
    text = getattr(error, "message", None) or str(error)
    text = text.strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
