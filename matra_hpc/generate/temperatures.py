"""Temperature specs of a generation sweep: ``start:stop:step`` (stop included) or a comma list.

Temperatures are rounded to two decimals because they name the store's groups (``T0.70``) and
take part in every candidate id; two specs that round to the same group are one temperature.
"""

from __future__ import annotations

import math

from matra_hpc.errors import UsageError

# Sampling divides logits by T: below this the softmax is a hard argmax in float32 anyway.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURES = 10_000


def parse_temperatures(spec: str) -> list[float]:
    """Parse ``"0.7:1.65:0.05"`` (stop included) or ``"0.7,1.0,1.3"`` into sorted unique temperatures."""
    text = spec.strip()
    if not text:
        raise UsageError("empty temperature spec: give start:stop:step (e.g. 0.7:1.65:0.05) or a comma list")
    if ":" in text:
        temps = _parse_range(text)
    else:
        temps = [_number(part, text) for part in text.split(",")]
    rounded = sorted({round(t, 2) for t in temps})
    for t in rounded:
        if not (t >= MIN_TEMPERATURE):
            raise UsageError(f"temperature {t:g} in {spec!r} must be >= {MIN_TEMPERATURE} after rounding to 2 decimals")
    return rounded


def temperature_group(t: float) -> str:
    """The store group (and id field) of a temperature: ``T0.70``."""
    return f"T{t:.2f}"


def group_temperature(name: str) -> float:
    """Inverse of :func:`temperature_group`."""
    if not name.startswith("T"):
        raise ValueError(f"not a temperature group: {name!r}")
    return round(float(name[1:]), 2)


def _number(part: str, spec: str) -> float:
    try:
        value = float(part.strip())
    except ValueError:
        raise UsageError(f"bad temperature {part.strip()!r} in {spec!r}: expected a number") from None
    if not math.isfinite(value):
        raise UsageError(f"bad temperature {part.strip()!r} in {spec!r}: must be finite")
    return value


def _parse_range(spec: str) -> list[float]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise UsageError(f"bad temperature range {spec!r}: expected start:stop:step, e.g. 0.7:1.65:0.05")
    start, stop, step = (_number(p, spec) for p in parts)
    if step <= 0:
        raise UsageError(f"bad temperature range {spec!r}: step must be > 0")
    if stop < start:
        raise UsageError(f"bad temperature range {spec!r}: stop must be >= start")
    # Count steps on the rounded grid so float error neither drops nor adds the stop.
    n_steps = math.floor((stop - start) / step + 1e-6)
    if n_steps + 1 > MAX_TEMPERATURES:
        raise UsageError(f"temperature range {spec!r} has {n_steps + 1} values; at most {MAX_TEMPERATURES}")
    return [start + i * step for i in range(n_steps + 1)]
