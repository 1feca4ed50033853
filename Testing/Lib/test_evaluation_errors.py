"""Errors raised while a case is evaluated name the case, whatever their type."""

from __future__ import annotations

import pytest

from MetaRegistrationLib.adaptation import FrameError
from MetaRegistrationLib.errors import naming_the_case


def test_a_frame_error_is_prefixed_with_the_case_and_keeps_its_type():
    with pytest.raises(FrameError) as caught:
        with naming_the_case("obs007"):
            raise FrameError(2, 3, "has an empty gland label")
    assert str(caught.value) == "case obs007: frame 2 of the 3 given has an empty gland label"
    assert caught.value.index == 2
    with pytest.raises(FrameError, match="^case obs007: frame 2"):  # named once, not twice
        with naming_the_case("obs007"):
            raise caught.value
