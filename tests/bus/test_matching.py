"""subject_matches agrees with a plain regex reference of NATS wildcard semantics."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mams.bus.base import BusSubjectError, validate_pattern, validate_subject
from mams.bus.memory import subject_matches

_TOKENS = st.sampled_from(["a", "b", "ab"])
_SUBJECTS = st.lists(_TOKENS, min_size=1, max_size=5).map(".".join)


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from(["a", "b", "ab", "*"]), min_size=0, max_size=5))
    if draw(st.booleans()) or not tokens:
        tokens.append(">")
    return ".".join(tokens)


def _reference(pattern: str, subject: str) -> bool:
    parts = []
    for token in pattern.split("."):
        parts.append({"*": r"[^.]+", ">": r"[^.]+(?:\.[^.]+)*"}.get(token, re.escape(token)))
    return re.fullmatch(r"\.".join(parts), subject) is not None


@given(_patterns(), _SUBJECTS)
def test_matches_reference(pattern: str, subject: str) -> None:
    assert subject_matches(pattern, subject) == _reference(pattern, subject)


@given(_SUBJECTS)
def test_a_subject_matches_itself(subject: str) -> None:
    assert subject_matches(subject, subject)


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.x.c", False),
        ("a.>", "a", False),
        ("a.>", "a.b.c", True),
        (">", "a", True),
        ("*", "a.b", False),
        ("a.b", "a.bc", False),
    ],
)
def test_examples(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize("subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a*.b"])
def test_bad_publish_subjects(subject: str) -> None:
    with pytest.raises(BusSubjectError):
        validate_subject(subject)


@pytest.mark.parametrize("pattern", ["a.>.b", ">.a", "", "a..b", "a>"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(BusSubjectError):
        validate_pattern(pattern)
