"""Stall configuration: a TOML file validated by pydantic (``extra="forbid"``, so a typo
is an error that names the field)."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from edge import ConfigError
from edge.catalogue import Plu
from edge.weighing import ScaleSpec

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MarketConfig(_Strict):
    name: str = Field("平顺菜市场", title="Market name printed on receipts")
    region: str = Field("310106", pattern=r"^[0-9]{6}$", title="GB/T 2260 region code")
    number: int = Field(1, ge=1, le=999, title="Market number in the trace code")
    rounding: Literal["half-up", "down-jiao"] = Field("half-up", title="Rounding rule")
    timezone: str = Field("Asia/Shanghai", title="Time zone of receipts")


class ScaleConfig(ScaleSpec):
    """The port and protocol of the weighing module, and its metrological data plate."""

    port: str = Field("sim", title="Serial port or pyserial URL; 'sim' starts a built-in simulator")
    protocol: str = Field("cas", title="Weighing-module protocol name")
    max_g: int = Field(15000, gt=0, title="Max", description="maximum capacity in grams")
    e_g: int = Field(5, gt=0, title="e", description="verification interval (of the upper range)")

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        from firmware_bridge.protocols import PROTOCOLS

        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r} (known: {', '.join(PROTOCOLS)})")
        return value


class CameraConfig(_Strict):
    source: str | None = Field(None, title="Device index, stream URL, video file or image folder")
    roi: tuple[float, float, float, float] | None = Field(None, title="Plate region (x, y, w, h), 0..1")
    auto_confirm: float = Field(0.90, ge=0, le=1, title="Score above which the top guess is taken")
    teach: Literal["corrections", "taps", "off"] = Field(
        "taps", title="Which vendor taps teach the recogniser the weighing's photo: every tap "
        "(taps), only a pick other than the top guess (corrections), or none (off); a guess taken "
        "by itself never teaches")
    frozen_s: float = Field(10.0, gt=0, title="A live camera giving the same frame this many "
                            "seconds is frozen: the stall goes to manual picking")


class ServerLink(_Strict):
    url: str = Field("http://127.0.0.1:8000", title="Market server base URL")
    token: str = Field("", title="This stall's bearer token")
    public_url: str | None = Field(None, title="Base URL of trace pages in the receipt QR")


class FeedConfig(_Strict):
    """How the stall follows the market's feed (``edge.feed``); it needs ``[server] token``."""

    enabled: bool = Field(True, title="Follow the market's catalogue, prices, specials and blocks")
    wait_s: int = Field(25, ge=0, le=30, title="Long poll: the server answers at a change or "
                        "after this many seconds; 0 asks every interval_s instead")
    interval_s: float = Field(10.0, ge=1, le=3600, title="Seconds between asks without long poll")


class ScreensConfig(_Strict):
    """The vendor's and the customer's screens, served by the stall itself (``edge.screens``)."""

    enabled: bool = Field(True, title="Serve /vendor and /customer on 127.0.0.1")
    port: int = Field(8100, ge=0, le=65535, title="Port on 127.0.0.1; 0 takes any free port")
    basket_wait_s: float = Field(300.0, gt=0, title="Warn the vendor when a basket stays open "
                                 "this many seconds")


class GalleryConfig(_Strict):
    """Taught items shared through the market server (``edge.gallery_share``); both opt-in,
    both need ``[server] token`` and the recogniser."""

    share: bool = Field(False, title="Offer the items taught at this stall to the market's other stalls")
    accept: bool = Field(False, title="Import the items other stalls of the market shared "
                         "(signed, same model only)")
    interval_s: float = Field(30.0, ge=1, le=3600, title="Seconds between asks for new shared items")


class OrdersConfig(_Strict):
    """Online orders of shoppers at this stall (``edge.orders``); needs ``[server] token``."""

    enabled: bool = Field(True, title="Show the market's online orders on the vendor's screen")
    wait_s: int = Field(25, ge=0, le=30, title="Long poll: the server answers at a change or after "
                        "this many seconds")


class PrinterConfig(_Strict):
    type: Literal["file", "dummy", "serial", "network", "usb"] = "file"
    path: str | None = Field(None, title="File printer: folder (one .bin per receipt) or file")
    url: str | None = Field(None, title="Serial printer: device or pyserial URL")
    host: str | None = None
    port: int | None = None
    usb_vendor: int | None = None
    usb_product: int | None = None
    width: Literal[58, 80] = 58
    encoding: Literal["gb18030", "gbk"] = "gb18030"


def _read_as(field: str, *names: str) -> Any:
    """``Plu``'s field, constraints and all, read from the config under ``names``."""
    return FieldInfo.merge_field_infos(Plu.model_fields[field], validation_alias=AliasChoices(*names))


#: The Sale contract's name of a catalogue field, and the catalogue's own (older) name.
_CONTRACT_NAMES = (("plu", "code"), ("name", "name_zh"))


class CatalogueEntry(Plu):
    """An item of the stall's catalogue, and the recognizer's label that means it.

    Operators write an item with the names its sale lines carry (``plu``, ``name``,
    ``name_en``: ARCHITECTURE.md's Sale JSON); configs written with the catalogue's own
    names (``code``, ``name_zh``) keep loading.  An error names the key that was written.
    """

    code: str = _read_as("code", "plu", "code")
    name_zh: str = _read_as("name_zh", "name", "name_zh")

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for new, old in _CONTRACT_NAMES:
                if new in data and old in data:
                    raise ValueError(f"'{new}' and '{old}' are the same field: give one")
        return data


class StallConfig(_Strict):
    stall_id: str = Field(pattern=r"^S[0-9]{1,3}$", title="Stall id, e.g. S01")
    name: str = Field(title="Stall name")
    vendor: str = Field("", title="Vendor's name printed on receipts")
    data_dir: Path = Field(Path("var/stall"), title="Journal, key, receipts and gallery live here")

    @field_validator("data_dir")
    @classmethod
    def _no_nul(cls, value: Path) -> Path:
        # The OS takes no NUL in a path: refused here, naming the key, not at the first write.
        if "\x00" in str(value):
            raise ValueError("a path cannot hold a NUL character")
        return value

    first_receipt_no: int = Field(1, ge=1, title="Receipt number of the stall's first sale")
    market: MarketConfig = MarketConfig()
    scale: ScaleConfig = ScaleConfig()
    camera: CameraConfig = CameraConfig()
    server: ServerLink = ServerLink()
    printer: PrinterConfig = PrinterConfig()
    feed: FeedConfig = FeedConfig()
    screens: ScreensConfig = ScreensConfig()
    gallery: GalleryConfig = GalleryConfig()
    orders: OrdersConfig = OrdersConfig()
    catalogue: list[CatalogueEntry] = Field(
        default_factory=list, title="The stall's items (PLU)",
        description="the offline seed: sold until the market's feed prices this stall")
    simulate_vendor: bool = Field(False, title="Demo: a simulated vendor sells by itself")
    seed: int | None = Field(None, title="Demo: random seed of the simulated vendor")


_Model = TypeVar("_Model", bound=BaseModel)


def load_toml(path: Path | str, model: type[_Model], what: str) -> _Model:
    """A TOML config validated by ``model``; its relative ``data_dir`` is the file's folder's,
    and a readable token is warned of.  Every error is one :class:`ConfigError` naming the key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
    try:
        cfg = model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{what} {path}: {where}: {err['msg']}") from exc
    data_dir = getattr(cfg, "data_dir", None)
    if isinstance(data_dir, Path) and not data_dir.is_absolute():
        cfg = cfg.model_copy(update={"data_dir": (path.parent / data_dir).resolve()})
    server = getattr(cfg, "server", None)
    if isinstance(server, ServerLink):
        _warn_if_token_readable(path, server.token, what)
    return cfg


def load_config(path: Path | str) -> StallConfig:
    return load_toml(path, StallConfig, "stall config")


def _warn_if_token_readable(path: Path, token: str, what: str) -> None:
    """The token lets anyone send as this device: say so when others can read it."""
    if not token:
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("%s %s holds a server token but is readable by others "
                       "(mode %03o): chmod 600 %s", what, path, mode, path)
