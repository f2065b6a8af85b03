"""domain.frozen.replace: the same result as dataclasses.replace, for the hot path."""

from __future__ import annotations

import dataclasses

import pytest

from mams.domain.frozen import replace
from mams.domain.negotiation import INITIAL, NegotiationState


def test_same_as_dataclasses_replace() -> None:
    changed = replace(INITIAL, phase="buyer_turn", round=3, awaiting=frozenset({"a"}))
    assert changed == dataclasses.replace(
        INITIAL, phase="buyer_turn", round=3, awaiting=frozenset({"a"})
    )
    assert type(changed) is NegotiationState
    assert INITIAL.round == 0  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.round = 4  # type: ignore[misc]


def test_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError, match="no field 'rounds'"):
        replace(INITIAL, rounds=3)


def test_classes_with_post_init_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match=r"needs dataclasses\.replace"):
        replace(Checked(1), x=-1)
