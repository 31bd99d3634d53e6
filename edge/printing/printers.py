"""The ``Printer`` seam: python-escpos backends built from a config dict.

``make_printer({"type": "file"|"dummy"|"serial"|"network"|"usb", ...})``
returns a ``Printer``.  Config keys (``PrinterSettings``; ``None`` values are
ignored, so the stall's flat ``PrinterConfig.model_dump()`` can be passed as is):

=========  =====================================================================
type       required keys (optional ones)
=========  =====================================================================
dummy      (none): bytes collect in ``printer.output``
file       ``path``: a device or file (overwritten per receipt) or a folder (one
           ``.bin`` per receipt; a path without suffix that does not exist yet
           is a folder)
serial     ``url``: a device path or any pyserial URL (``socket://``, ``rfc2217://``,
           ``loop://``...) (``baudrate`` 9600)
network    ``host`` (``port`` 9100)
usb        ``usb_vendor``, ``usb_product`` (needs pyusb)
all        (``width`` 58, ``encoding`` gb18030, ``chinese_mode`` false (send FS &),
           ``timeout_s`` 2, ``require_status`` false, ``queue``: the reprint
           queue's SQLite file)
=========  =====================================================================

``print_receipt(data)`` opens the device, asks its status (``DLE EOT 1`` and
``4`` on serial, network and USB), writes, closes, and raises ``PrinterError``
(with ``.status``) when the paper is out, the printer is offline, no reply
came and ``require_status`` is set, or the transport fails.  File and dummy
printers cannot answer: their status is ``UNKNOWN`` and they print anyway.

``print_sale(sale, meta)`` renders the receipt for this printer's width and
encoding and prints it; on a printer failure the sale goes to the reprint
queue (when one is configured) and the PrinterError is re-raised.
``retry_queue()`` prints what waits there, each marked as a reprint.
"""

from __future__ import annotations

import logging
import pathlib
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import serial
from escpos.exceptions import Error as EscposError
from escpos.printer import Dummy, File, Network, Serial, Usb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge import ConfigError, PrinterError, PrinterStatusError
from edge.printing.status import (
    QUERY_ONLINE,
    QUERY_PAPER,
    PrinterStatus,
    combine,
    online_status,
    paper_status,
)

if TYPE_CHECKING:
    from escpos.escpos import Escpos

    from edge.receipt import ReceiptMeta
    from edge.reprint import ReprintQueue, RetryResult
    from edge.sale import Sale

logger = logging.getLogger(__name__)

PrinterType = Literal["file", "dummy", "serial", "network", "usb"]


class PrinterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: PrinterType = Field(title="Backend")
    path: str | None = Field(default=None, title="File printer: device, file or folder")
    url: str | None = Field(default=None, title="Serial printer: device path or pyserial URL")
    baudrate: int = Field(default=9600, gt=0, title="Serial speed")
    host: str | None = Field(default=None, title="Network printer host")
    port: int = Field(default=9100, gt=0, lt=65536, title="Network printer TCP port")
    usb_vendor: int | None = Field(default=None, ge=0, le=0xFFFF, title="USB vendor id")
    usb_product: int | None = Field(default=None, ge=0, le=0xFFFF, title="USB product id")
    width: Literal[58, 80] = Field(default=58, title="Paper width in mm")
    encoding: Literal["gb18030", "gbk"] = Field(default="gb18030", title="Text encoding")
    timeout_s: float = Field(default=2.0, gt=0, le=60, title="Connect / status reply timeout")
    require_status: bool = Field(default=False, title="Refuse to print when the status is unknown")
    chinese_mode: bool = Field(default=False, title="The printer needs FS & before Chinese")
    queue: str | None = Field(default=None, title="Reprint queue SQLite file")

    @model_validator(mode="after")
    def _required(self) -> PrinterSettings:
        needed = {"file": ("path",), "serial": ("url",), "network": ("host",),
                  "usb": ("usb_vendor", "usb_product"), "dummy": ()}[self.type]
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ValueError(f"a {self.type} printer needs {', '.join(missing)}")
        return self


class UrlSerial(Serial):
    """python-escpos's Serial opens a device path only; this opens any pyserial URL."""

    def open(self, raise_not_found: bool = True) -> None:
        try:
            self.device = serial.serial_for_url(
                self.devfile, baudrate=self.baudrate, timeout=self.timeout,
                write_timeout=self.timeout,
            )
        except (ValueError, serial.SerialException) as exc:
            raise PrinterError(f"serial printer {self.devfile}: cannot open: {exc}") from exc


class Printer:
    """One receipt printer; see the module docstring."""

    def __init__(self, settings: PrinterSettings, *, meta: ReceiptMeta | None = None,
                 queue: ReprintQueue | None = None) -> None:
        self.settings = settings
        self.meta = meta
        if queue is None and settings.queue:
            from edge.reprint import ReprintQueue

            queue = ReprintQueue(settings.queue)
        self.queue = queue
        self._dummy = Dummy() if settings.type == "dummy" else None

    # -- what callers use ---------------------------------------------------------------
    @property
    def output(self) -> bytes:
        """Everything a dummy printer was sent."""
        return self._dummy.output if self._dummy is not None else b""

    @property
    def describe(self) -> str:
        s = self.settings
        where = {"file": s.path, "dummy": "memory", "serial": s.url,
                 "network": f"{s.host}:{s.port}",
                 "usb": f"{s.usb_vendor or 0:04x}:{s.usb_product or 0:04x}"}[s.type]
        return f"{s.type} printer {where}"

    def status(self) -> PrinterStatus:
        """Ask the printer; UNKNOWN when it cannot or does not answer."""
        if self.settings.type in ("file", "dummy"):
            return PrinterStatus.UNKNOWN
        device = self._open()
        try:
            return self._query(device)
        finally:
            self._close(device)

    def print_receipt(self, data: bytes, name: str | None = None) -> PrinterStatus:
        """Send ``data``; the status seen before printing is returned."""
        if not data:
            raise PrinterError("nothing to print")
        device = self._open(name)
        try:
            status = (PrinterStatus.UNKNOWN if self.settings.type in ("file", "dummy")
                      else self._query(device))
            if status in (PrinterStatus.PAPER_OUT, PrinterStatus.OFFLINE) or (
                    status is PrinterStatus.UNKNOWN and self.settings.require_status):
                raise PrinterStatusError(f"{self.describe}: {status.value}", status.value)
            if status is PrinterStatus.PAPER_LOW:
                logger.warning("%s: paper is running low", self.describe)
            elif status is PrinterStatus.UNKNOWN and self.settings.type not in ("file", "dummy"):
                logger.warning("%s: no status reply; printing without knowing", self.describe)
            self._write(device, data)
            return status
        finally:
            self._close(device)

    def print_sale(self, sale: Sale, meta: ReceiptMeta | None = None) -> PrinterStatus:
        """Render and print ``sale``; a failed print goes to the reprint queue, then raises."""
        from edge.receipt import ReceiptMeta, render_receipt

        meta = meta or self.meta or ReceiptMeta()
        if self.settings.chinese_mode and not meta.chinese_mode:
            meta = meta.model_copy(update={"chinese_mode": True})
        data = render_receipt(sale, meta, self.settings.width, self.settings.encoding)
        try:
            return self.print_receipt(data, name=f"{sale.receipt_no:07d}-{sale.trace_code}")
        except PrinterError as exc:
            if self.queue is not None:
                self.queue.add(sale, meta, width=self.settings.width,
                               encoding=self.settings.encoding, error=str(exc))
            raise

    def retry_queue(self) -> RetryResult | None:
        """Print what waits in the reprint queue (call when the printer is back)."""
        return self.queue.retry(self) if self.queue is not None else None

    # -- the transports -----------------------------------------------------------------
    def _file_target(self, name: str | None) -> pathlib.Path:
        path = pathlib.Path(self.settings.path or "")
        if path.is_dir() or (not path.exists() and not path.suffix):
            path.mkdir(parents=True, exist_ok=True)
            # Unnamed jobs get the time in ns: two receipts in one second must not collide.
            return path / f"{name or time.time_ns()}.bin"
        return path

    def _open(self, name: str | None = None) -> Escpos:
        s = self.settings
        factories: dict[str, Callable[[], Escpos]] = {
            "dummy": lambda: self._dummy,
            "file": lambda: File(str(self._file_target(name)), auto_flush=True),
            "serial": lambda: UrlSerial(s.url, baudrate=s.baudrate, timeout=s.timeout_s),
            "network": lambda: Network(s.host, port=s.port, timeout=s.timeout_s),
            "usb": lambda: Usb(s.usb_vendor, s.usb_product, timeout=int(s.timeout_s * 1000)),
        }
        if s.type == "usb" and not Usb.is_usable():
            raise PrinterError(f"{self.describe}: USB printing needs pyusb and libusb installed")
        try:
            device = factories[s.type]()
            if s.type != "dummy":
                device.open()
            return device
        except PrinterError:
            raise
        except RuntimeError as exc:  # python-escpos: a missing optional dependency
            raise PrinterError(f"{self.describe}: {exc}") from exc
        except (EscposError, OSError, ValueError, serial.SerialException) as exc:
            raise PrinterError(f"{self.describe}: cannot open: {_one_line(exc)}") from exc

    def _write(self, device: Escpos, data: bytes) -> None:
        try:
            device._raw(data)
            if self.settings.type == "serial":
                device.device.flush()
        except (EscposError, OSError, ValueError, serial.SerialException) as exc:
            raise PrinterError(f"{self.describe}: write failed: {_one_line(exc)}") from exc
        except Exception as exc:  # pyusb raises its own errors; they are transport failures
            raise PrinterError(f"{self.describe}: write failed: {_one_line(exc)}") from exc

    def _close(self, device: Escpos) -> None:
        if self.settings.type == "dummy":
            return
        try:
            device.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead transport must not mask
            logger.debug("%s: close failed: %s", self.describe, exc)

    def _query(self, device: Escpos) -> PrinterStatus:
        online = online_status(self._ask(device, QUERY_ONLINE))
        paper = paper_status(self._ask(device, QUERY_PAPER))
        return combine(online, paper)

    def _ask(self, device: Escpos, query: bytes) -> bytes:
        """Send a real-time status query and wait for its one-byte reply (b"" if none)."""
        timeout = self.settings.timeout_s
        try:
            handle = device.device
            if self.settings.type == "serial":
                handle.reset_input_buffer()
                handle.write(query)
                handle.flush()
                return bytes(handle.read(1))
            if self.settings.type == "network":
                _drain(handle)
                handle.sendall(query)
                handle.settimeout(timeout)
                return handle.recv(1)
            device._raw(query)  # usb: read a whole packet, the reply is its last byte
            return bytes(handle.read(device.in_ep, 64, int(timeout * 1000)))[-1:]
        except TimeoutError:
            return b""
        except Exception as exc:  # noqa: BLE001 - any transport trouble means "unknown"
            logger.warning("%s: status query failed: %s", self.describe, _one_line(exc))
            return b""


def _drain(sock: socket.socket) -> None:
    # A late reply to an earlier query must not be read as the answer to this one.
    while select.select([sock], [], [], 0)[0]:
        if not sock.recv(64):
            break


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def make_printer(config: Mapping[str, Any] | PrinterSettings, *,
                 meta: ReceiptMeta | None = None,
                 queue: ReprintQueue | None = None) -> Printer:
    """A Printer from a config dict (None values are ignored); ConfigError if invalid."""
    if isinstance(config, PrinterSettings):
        settings = config
    else:
        try:
            settings = PrinterSettings.model_validate(
                {key: value for key, value in config.items() if value is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "printer"
            raise ConfigError(f"printer config: {where}: {first['msg']}") from exc
    return Printer(settings, meta=meta, queue=queue)
