"""`jamserver worker` options that are refused before any model loads (loading one takes a while)."""

from __future__ import annotations

import logging

import pytest

from jamserver.cli import main
from jamserver.cli.worker import default_name

REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("argv, named", [
    (["worker", "--redis", "http://127.0.0.1:6379"], "--redis"),
    (["worker", "--redis", REDIS, "--name", "gpu 0"], "--name"),
    (["worker", "--redis", REDIS, "--claim-after", "0"], "--claim-after"),
    (["worker", "--redis", REDIS, "--heartbeat-seconds", "-1"], "--heartbeat-seconds"),
    (["worker", "--redis", REDIS, "--max-batch", "0"], "--max-batch"),
    (["worker", "--redis", REDIS, "--threads", "0"], "--threads"),
])
def test_bad_values_exit_2_naming_the_option_before_loading_a_model(argv, named, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="jamserver"):
        assert main(argv) == 2
    assert any(named in record.getMessage() for record in caplog.records), caplog.text


def test_redis_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["worker"])
    assert exit_info.value.code == 2
    assert "--redis" in capsys.readouterr().err


def test_the_default_name_is_a_legal_key_part() -> None:
    from jamserver.cluster.keys import checked_name

    assert checked_name("name", default_name()) == default_name()
