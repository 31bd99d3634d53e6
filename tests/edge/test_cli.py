"""The ``wetmarket`` console script answers bad input with one clear line, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

WETMARKET = str(Path(sys.executable).parent / "wetmarket")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WETMARKET, *args], capture_output=True, text=True, timeout=timeout)


def one_clear_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_help_lists_built_commands() -> None:
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("demo", "server", "stall"):
        assert cmd in p.stdout


def test_unknown_flag() -> None:
    line = one_clear_line(run("demo", "--frobnicate"))
    assert "unrecognized arguments: --frobnicate" in line
    assert run("demo", "--frobnicate").returncode == 2


def test_unknown_command() -> None:
    assert "invalid choice" in one_clear_line(run("teleport"))


def test_bad_duration() -> None:
    assert "must be positive" in one_clear_line(run("demo", "--duration", "-3"))


def test_missing_config() -> None:
    line = one_clear_line(run("stall", "--config", "/nonexistent/stall.toml"))
    assert line == "wetmarket stall: error: stall config /nonexistent/stall.toml does not exist"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stall_id = 'S01'\nname = 'x'\n[scale]\nprotocl = 'cas'\n", "scale.protocl: Extra inputs"),
        ("stall_id = 'S01'\nname = 'x'\n[scale]\nmax_g = -5\n", "scale.max_g"),
        ("stall_id = 'S01\n", "not valid TOML"),
        ("name = 'x'\n", "stall_id: Field required"),
        ("stall_id = 'S01'\nname = 'x'\n[[catalogue]]\ncode = '1'\nname_zh = '青菜'\nname_en = 'Greens'\n"
         "price_unit = '斤'\nunit_price_fen = 300\n",
         "catalogue.0.price_unit: Value error, prices are per kg"),
        ("stall_id = 'S01'\nname = 'x'\n[market]\nrounding = 'up'\n", "market.rounding"),
    ],
)
def test_bad_config(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "stall.toml"
    cfg.write_text(text)
    assert expected in one_clear_line(run("stall", "--config", str(cfg)))


@pytest.mark.parametrize("cmd", ["server", "demo"])
def test_occupied_port(cmd: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_clear_line(run(cmd, "--port", str(port)))
    assert line == f"wetmarket {cmd}: error: port {port} on 127.0.0.1 is already in use"


def test_bad_database_url() -> None:
    line = one_clear_line(run("server", "--port", "0", "--db", "mysql://x"))
    assert "unsupported database URL" in line


def test_server_prints_generated_admin_token_once(tmp_path: Path) -> None:
    import os

    from tests.conftest import free_port

    env = {k: v for k, v in os.environ.items() if k != "WETMARKET_ADMIN_TOKEN"}
    db = f"sqlite:///{tmp_path / 'm.db'}"
    for expect_token in (True, False):
        p = subprocess.Popen([WETMARKET, "server", "--port", str(free_port()), "--db", db],
                             stderr=subprocess.PIPE, text=True, env=env)
        assert p.stderr is not None
        lines = [p.stderr.readline()]
        if expect_token:
            lines.append(p.stderr.readline())
        p.terminate()
        p.wait(20)
        text = "".join(lines)
        assert ("shown only this once" in text) is expect_token
        assert "market server on http://127.0.0.1:" in text
