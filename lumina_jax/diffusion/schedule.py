"""Time-aware settings (REFERENCE §4).

A setting is either a constant or a schedule `(v0, (t1, v1), (t2, v2), ...)` over the
SHIFTED sampling time t (0 = noise, 1 = data): the value is v0 while t < t1, v1 while
t1 <= t < t2, and so on (thresholds strictly increasing, in [0, 1]).

A tuple is a schedule when every element after the first is a `(number, value)` pair,
so a patch-size constant `(p, pF)` such as `(2, 1)` is never mistaken for one. Patch
sizes may also be written as the paper's "pF x p" strings: "1x2" -> (2, 1),
"2x2" -> (2, 2), "2x4" -> (4, 2).
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Callable

PATCH_SIZES = ((2, 1), (2, 2), (4, 2))  # (p, pF)


def is_schedule(spec: Any) -> bool:
    return (isinstance(spec, (tuple, list)) and len(spec) >= 2
            and all(isinstance(e, (tuple, list)) and len(e) == 2
                    and isinstance(e[0], Real) and not isinstance(e[0], bool)
                    for e in spec[1:]))


def parse_schedule(spec: Any, convert: Callable[[Any], Any] = lambda v: v):
    """-> (v0, ((t1, v1), ...)) with converted values and validated thresholds."""
    if not is_schedule(spec):
        return convert(spec), ()
    v0, rest = convert(spec[0]), tuple((float(t), convert(v)) for t, v in spec[1:])
    ts = [t for t, _ in rest]
    if any(not 0.0 <= t <= 1.0 for t in ts) or any(a >= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"schedule thresholds must be strictly increasing in [0, 1]: {spec!r}")
    return v0, rest


def value_at(spec: Any, t: float, convert: Callable[[Any], Any] = lambda v: v):
    """The setting's value at shifted time t: the last value whose threshold is <= t."""
    value, rest = parse_schedule(spec, convert)
    for threshold, v in rest:
        if t >= threshold:
            value = v
    return value


def parse_patch_size(v: Any) -> tuple[int, int]:
    """A patch size as (p, pF) from (p, pF) or a "pFxp" string (a model checks that it
    has the size: the video model's are PATCH_SIZES, V2A's its own)."""
    if isinstance(v, str):
        pf, p = (int(s) for s in v.lower().split("x"))
        ps = (p, pf)
    else:
        ps = tuple(int(s) for s in v)
    if len(ps) != 2 or min(ps) < 1:
        raise ValueError(f"patch size {v!r} -> (p, pF)={ps} is not a pair of sizes >= 1")
    return ps
