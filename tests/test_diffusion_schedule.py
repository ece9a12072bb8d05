"""Time-aware setting parsing and switching points."""

import pytest

from lumina_jax.diffusion import is_schedule, parse_patch_size, parse_schedule, value_at


def test_constants_and_schedules_are_told_apart():
    assert not is_schedule(6.0) and not is_schedule("1x2")
    assert not is_schedule((2, 1))               # a patch-size constant
    assert is_schedule((20, (0.2, 0)))
    assert is_schedule(((4, 2), (0.03, (2, 2))))
    assert is_schedule(["2x4", [0.03, "2x2"], [0.125, "1x2"]])
    assert parse_schedule(6.0) == (6.0, ())
    assert parse_schedule((2.0, (0.05, 6.0)), float) == (2.0, ((0.05, 6.0),))
    assert parse_schedule(("2x4", (0.03, "2x2"), (0.125, "1x2")), parse_patch_size) == \
        ((4, 2), ((0.03, (2, 2)), (0.125, (2, 1))))


def test_switching_points():
    spec = ("2x4", (0.03, "2x2"), (0.125, "1x2"))
    at = lambda t: value_at(spec, t, parse_patch_size)
    assert at(0.0) == at(0.0299) == (4, 2)
    assert at(0.03) == at(0.1249) == (2, 2)      # switches when t >= threshold
    assert at(0.125) == at(1.0) == (2, 1)
    assert value_at((20, (0.2, 0)), 0.1999) == 20 and value_at((20, (0.2, 0)), 0.2) == 0
    assert value_at(6.0, 0.7) == 6.0
    assert value_at((2, 1), 0.5, parse_patch_size) == (2, 1)


def test_patch_size_and_invalid_schedules():
    assert parse_patch_size("1x2") == (2, 1) and parse_patch_size("2x2") == (2, 2) and parse_patch_size("2x4") == (4, 2)
    assert parse_patch_size((4, 2)) == (4, 2)
    assert parse_patch_size("4x2") == (2, 4)  # parses; a model rejects sizes it does not have
    with pytest.raises(ValueError):
        parse_patch_size("0x2")                         # sizes are >= 1
    with pytest.raises(ValueError):
        parse_schedule((1.0, (0.5, 2.0), (0.3, 3.0)))   # decreasing
    with pytest.raises(ValueError):
        parse_schedule((1.0, (1.5, 2.0)))               # out of [0, 1]
