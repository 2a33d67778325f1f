"""Fuzzing the command parser's text rules (issue 19, finding 5) and the escaping of text on its way out.

Whatever a console (or anyone who can publish on the command topic) sends, a command is applied only when its
text fields hold no control, separator, surrogate or bidirectional character; a refusal names the field and the
character's code point and is itself printable; text escaped for a terminal or the log is one inert line.
"""

from __future__ import annotations

import logging
import unicodedata
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.common.safetext import EscapingFormatter, forbidden_char, printable
from monitor.incidents import MAX_MODERATOR, MAX_REASON, CommandError, IncidentBook, IncidentPolicy, NewIncident
from pipelines.base import Finding

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
hostile = st.sampled_from(["\n", "\r", "\t", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029",
                           "\ud800", "\udfff", *BIDI])
# Mostly ordinary text (letters of many scripts, punctuation, emoji, format characters like ZWJ), now and then
# one hostile character anywhere in it.
ordinary = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters=BIDI)
texts = st.one_of(
    st.text(ordinary, max_size=40),
    st.builds(lambda a, c, b: a + c + b, st.text(ordinary, max_size=20), hostile, st.text(ordinary, max_size=20)),
    st.text(st.one_of(ordinary, hostile), max_size=40),
)


def _book() -> tuple[IncidentBook, Any]:
    book = IncidentBook(IncidentPolicy(), {"b1": "high"}, lambda: 1000.0)
    f = Finding("known_content", "s1", 1.0, 1000.0, "b1", "e1", "pdq", 4, 31, 90, "ab" * 32, "label", ())
    inc = next(e.incident for e in book.on_sample("s1", 1.0, [f]) if isinstance(e, NewIncident))
    return book, inc


def _bad(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in BIDI for c in text)


@settings(max_examples=400, deadline=None)
@given(texts, texts, st.sampled_from(["acknowledge", "escalate", "dismiss", "terminate"]))
def test_command_text_rules(moderator: str, reason: str, action: str) -> None:
    book, inc = _book()
    cmd = {"schema_version": 1, "type": "command", "command_id": str(uuid.uuid4()), "action": action,
           "incident_id": inc.incident_id, "stream_id": inc.stream_id, "moderator": moderator, "reason": reason}
    try:
        outcome = book.apply_command(cmd)
    except CommandError as exc:
        msg = str(exc)
        assert msg.isprintable(), msg
        other_rule = not moderator.strip() or len(moderator) > MAX_MODERATOR or len(reason) > MAX_REASON
        if "U+" in msg:
            assert _bad(moderator) or _bad(reason), msg
            assert msg.startswith(("moderator:", "reason:")), msg
        else:  # refused for another rule: empty or too long
            assert other_rule, msg
        assert book.get(inc.incident_id).status == "open"  # nothing applied
        return
    assert not _bad(moderator) and not _bad(reason)
    assert outcome.changed and outcome.incident.history[-1].moderator == moderator.strip()


@settings(max_examples=400, deadline=None)
@given(st.text(st.one_of(ordinary, hostile), max_size=60))
def test_printable_is_one_inert_line(text: str) -> None:
    out = printable(text)
    assert forbidden_char(out) is None and "\x1b" not in out and len(out.splitlines()) <= 1
    assert (out == text) == (forbidden_char(text) is None)
    out.encode("utf-8")  # no lone surrogate left: a log file or terminal can take it


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(ordinary, hostile), max_size=60))
def test_text_log_lines_never_carry_escapes_or_breaks(text: str) -> None:
    fmt = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("monitor.app.engine", logging.INFO, __file__, 1, "by %s (%r)", (text, text), None)
    line = fmt.format(record)
    assert len(line.splitlines()) == 1 and forbidden_char(line) is None
