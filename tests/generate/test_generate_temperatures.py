"""Temperature specs: ranges include the stop, lists dedupe, bad specs are usage errors."""

from __future__ import annotations

import pytest

from matra_hpc.errors import UsageError
from matra_hpc.generate.temperatures import group_temperature, parse_temperatures, temperature_group


def test_paper_sweep_has_twenty_temperatures_with_the_stop() -> None:
    temps = parse_temperatures("0.7:1.65:0.05")
    assert len(temps) == 20
    assert temps[0] == 0.7 and temps[-1] == 1.65
    assert [temperature_group(t) for t in temps[:2]] == ["T0.70", "T0.75"]
    assert all(group_temperature(temperature_group(t)) == t for t in temps)


def test_comma_list_is_sorted_rounded_and_unique() -> None:
    assert parse_temperatures("1.0, 0.7,0.701") == [0.7, 1.0]
    assert parse_temperatures("1.2") == [1.2]
    assert parse_temperatures("1:1:0.1") == [1.0]


@pytest.mark.parametrize("spec", ["", "a:b:c", "1:0.5:0.1", "0.7:1:0", "0.7:1:-0.1", "0.7:1", "x", "0",
                                  "nan", "0.7,,1", "1:2:3:4", "0.7:inf:0.1"])
def test_bad_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_temperatures(spec)
