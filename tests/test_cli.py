"""The `ovnk-secondary` command line: --version, and --log-level checked on every component."""

from __future__ import annotations

import argparse
import pathlib
import tomllib

import pytest

from ovnk_secondary import cli
from ovnk_secondary.agent import main as agent_main
from ovnk_secondary.controller import main as controller_main

PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_is_the_projects(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    version = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert capsys.readouterr().out == f"ovnk-secondary {version}\n"


@pytest.mark.parametrize("command", ["controller", "node-agent"])
def test_an_unknown_log_level_is_refused_before_anything_starts(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--log-level", "chatty"])
    assert done.value.code == 2
    assert "argument --log-level: invalid choice: 'CHATTY'" in capsys.readouterr().err


@pytest.mark.parametrize("module", [controller_main, agent_main])
def test_log_level_in_any_case(module: object) -> None:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    required = ["--ovn-nb", "tcp:127.0.0.1:6641"] if module is controller_main else [
        "--node-name", "node-1"]
    assert parser.parse_args([*required, "--log-level", "debug"]).log_level == "DEBUG"
