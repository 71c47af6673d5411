"""`jamserver serve` options that are decided before any model loads: torch threads and bad values."""

from __future__ import annotations

import logging

import pytest

from jamserver.cli import main
from jamserver.cli.serve import cpu_threads


def test_threads_default_to_half_the_cores(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert cpu_threads(None) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert cpu_threads(None) == 1  # never zero
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert cpu_threads(None) == 1


def test_explicit_threads_are_used_as_given() -> None:
    assert cpu_threads(3) == 3


@pytest.mark.parametrize("argv, named", [
    (["serve", "--threads", "0"], "--threads"),
    (["serve", "--max-batch", "0"], "max_batch"),
])
def test_bad_values_exit_2_naming_the_option_before_loading_a_model(argv, named, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="jamserver"):
        assert main(argv) == 2
    assert any(named in record.getMessage() for record in caplog.records), caplog.text
