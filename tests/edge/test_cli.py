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


SERVES_FROZEN = """
import gc, sys
import uvicorn
from edge.cli import main
def serve(app, **_kw):  # where the server would serve: what the collector still walks
    print(gc.get_freeze_count(), len(gc.get_objects()), flush=True)
uvicorn.run = serve
sys.exit(main(["server", "--port", sys.argv[1], "--db", sys.argv[2]]))
"""


def test_the_server_serves_with_its_startup_objects_out_of_the_collectors_passes(tmp_path: Path) -> None:
    from tests.conftest import free_port

    # edge.allocator.freeze_startup_objects: the app, its routes, models and tables built, then
    # frozen before the first request, in the process's own run of ``wetmarket server``.
    p = subprocess.run([sys.executable, "-c", SERVES_FROZEN, str(free_port()),
                        f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    frozen, walked = (int(x) for x in p.stdout.split()[:2])
    assert frozen > 100_000 and walked < frozen // 10


def test_each_of_several_server_processes_freezes_its_own_app(tmp_path: Path) -> None:
    import os

    from server.cli import WORKER_SETTINGS_ENV
    from server.settings import Settings

    probe = ("import gc; from server.cli import worker_app; app = worker_app(); "
             "print(gc.get_freeze_count(), type(app).__name__)")
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", admin_token="t" * 32)
    env = {**os.environ, WORKER_SETTINGS_ENV: settings.model_dump_json()}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    frozen, kind = p.stdout.split()
    assert int(frozen) > 100_000 and kind == "FastAPI"


def test_version_names_package_and_legal_software() -> None:
    from importlib.metadata import version

    from edge.legal import LEGAL_VERSION, legal_checksum

    p = run("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout == (f"wetmarket {version('wetmarket')} "
                        f"(legal software {LEGAL_VERSION} {legal_checksum()[:8]})\n")


def _start_server(port: int, db: str) -> tuple[subprocess.Popen[str], str]:
    import os

    env = {**os.environ, "WETMARKET_ADMIN_TOKEN": "restart-test-admin-token"}
    p = subprocess.Popen([WETMARKET, "server", "--port", str(port), "--db", db],
                         stderr=subprocess.PIPE, text=True, env=env)
    assert p.stderr is not None
    return p, p.stderr.readline()


def _health_closing(port: int, p: subprocess.Popen[str]) -> int:
    """GET /healthz with ``Connection: close`` and read to the end before closing: the server
    has closed first (that end of file is its FIN), so its side of the connection (on the
    server's port) lingers in TIME_WAIT once it has stopped.  (An HTTP client may close as
    soon as it has the body, before the server does, and then TIME_WAIT is on the client's
    side: the port would be free and the test would prove nothing.)"""
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := s.recv(4096):
                    answer += chunk
            return int(answer.split(b" ", 2)[1])
        except OSError:
            assert p.poll() is None and time.monotonic() < deadline, "server did not answer"
            time.sleep(0.1)


def test_server_restarts_at_once_on_its_port(tmp_path: Path) -> None:
    """A restart within a minute finds the port in TIME_WAIT: that is free, as uvicorn sees it."""
    from tests.conftest import free_port

    port = free_port()
    db = f"sqlite:///{tmp_path / 'm.db'}"
    for restart in (False, True):
        if restart:
            # What a restart meets: a plain bind (without SO_REUSEADDR) is refused.
            with socket.socket() as s, pytest.raises(OSError, match="in use"):
                s.bind(("127.0.0.1", port))
        p, first = _start_server(port, db)
        try:
            assert first.startswith(f"market server on http://127.0.0.1:{port}/"), first
            assert _health_closing(port, p) == 200
        finally:
            p.terminate()
            p.wait(20)


def test_train_only_modules_are_the_train_extras() -> None:
    """edge.cli's list names a module of each of pyproject.toml's train extras, and none of the
    runtime's."""
    import tomllib
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement

    from edge.cli import TRAIN_ONLY_MODULES

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    by_dist: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(dist.lower().replace("_", "-"), set()).add(module)

    def modules(requirement: str) -> set[str]:
        return by_dist[Requirement(requirement).name.lower().replace("_", "-")]

    for requirement in project["optional-dependencies"]["train"]:
        assert modules(requirement) & TRAIN_ONLY_MODULES, requirement
    for requirement in project["dependencies"]:
        assert not modules(requirement) & TRAIN_ONLY_MODULES, requirement


def test_training_without_the_train_extras_is_one_clear_line(tmp_path: Path) -> None:
    """As in the venv of `make demo`: the train extras' modules are not there to import."""
    script = (
        "import sys\n"
        "from edge.cli import TRAIN_ONLY_MODULES, main\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in TRAIN_ONLY_MODULES:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    p = subprocess.run([sys.executable, "-c", script, "model", "train", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=120)
    line = one_clear_line(p)
    assert line.startswith("wetmarket model: error: this needs the training extras (")
    assert "pip install -e '.[train]'" in line
    assert not (tmp_path / "run").exists()
