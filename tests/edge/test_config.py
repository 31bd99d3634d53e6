"""The stall config loader: the Sale contract's item names, the older ones, and the token file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edge import ConfigError
from edge.catalogue import Catalogue
from edge.config import load_config

HEAD = "stall_id = 'S01'\nname = '王记鲜果'\n"
ITEM = "unit_price_fen = 300\nprice_unit = '500g'\nlabel = 'Regular-Tomato'\n"


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "stall.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("names", [
    "plu = '2001'\nname = '西红柿'\nname_en = 'Tomato'\n",       # the contract's (README's) names
    "code = '2001'\nname_zh = '西红柿'\nname_en = 'Tomato'\n",   # the catalogue's, as before
])
def test_catalogue_items_load_under_either_name(tmp_path: Path, names: str) -> None:
    cfg = load_config(write(tmp_path, HEAD + "[[catalogue]]\n" + names + ITEM))
    item = Catalogue(cfg.catalogue).get("2001")
    assert (item.code, item.name_zh, item.name_en, item.unit_price_fen) == ("2001", "西红柿", "Tomato", 300)
    assert cfg.catalogue[0].label == "Regular-Tomato"


@pytest.mark.parametrize(("names", "expected"), [
    ("plu = '20 01'\nname = '西红柿'\nname_en = 'Tomato'\n", "catalogue.0.plu: String should match"),
    ("code = '20 01'\nname_zh = '西红柿'\nname_en = 'Tomato'\n", "catalogue.0.code: String should match"),
    ("plu = '2001'\nname_en = 'Tomato'\n", "catalogue.0.name: Field required"),
    ("plu = '2001'\ncode = '2001'\nname = '西红柿'\nname_en = 'Tomato'\n",
     "catalogue.0: Value error, 'plu' and 'code' are the same field: give one"),
])
def test_item_errors_name_the_key_written(tmp_path: Path, names: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="stall config .*: " + expected.replace(".", r"\.")):
        load_config(write(tmp_path, HEAD + "[[catalogue]]\n" + names + ITEM))


def test_unknown_protocol_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scale\.protocol: Value error, unknown protocol 'kas' "
                                          r"\(known: toledo-8217, .*cas"):
        load_config(write(tmp_path, HEAD + "[scale]\nprotocol = 'kas'\n"))


@pytest.mark.parametrize(("mode", "token", "warned"), [
    (0o644, "t0ken", True),
    (0o640, "t0ken", True),
    (0o600, "t0ken", False),
    (0o644, "", False),     # no token, nothing to hide
])
def test_readable_token_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                        mode: int, token: str, warned: bool) -> None:
    path = write(tmp_path, HEAD + f"[server]\ntoken = '{token}'\n", mode)
    with caplog.at_level(logging.WARNING, logger="edge.config"):
        load_config(path)
    text = f"readable by others (mode {mode:03o}): chmod 600 {path}"
    assert any(text in r.getMessage() for r in caplog.records) is warned, caplog.text
    assert (os.stat(path).st_mode & 0o777) == mode  # warned about, never changed behind one's back
