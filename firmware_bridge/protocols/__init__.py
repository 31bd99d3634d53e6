"""Weighing-module protocols: an explicit registry of pure codecs.

The registry is a plain dict on purpose (no discovery by import side effects):
a protocol that fails to import fails here, loudly.
"""

from __future__ import annotations

from firmware_bridge import ProtocolUnknownError
from firmware_bridge.protocols.aclas import AclasPbx, AclasPs1x
from firmware_bridge.protocols.base import (
    COMMANDS,
    Codec,
    Command,
    DecodeStats,
    Frame,
    LineSettings,
)
from firmware_bridge.protocols.cas import Cas
from firmware_bridge.protocols.dahua import DahuaAcs
from firmware_bridge.protocols.hx711 import Hx711Raw
from firmware_bridge.protocols.mettler import MtContinuous, MtSics
from firmware_bridge.protocols.toledo import Toledo8217
from firmware_bridge.protocols.xk3190 import Xk3190A9

PROTOCOLS: dict[str, type[Codec]] = {
    cls.name: cls
    for cls in (
        Toledo8217,
        MtSics,
        MtContinuous,
        Cas,
        AclasPbx,
        AclasPs1x,
        DahuaAcs,
        Xk3190A9,
        Hx711Raw,
    )
}


def get_protocol(name: str, variant: str | None = None) -> Codec:
    """A fresh codec (it holds a receive buffer) for the protocol called ``name``.

    ``variant`` chooses the dialect its module side speaks (``PROTOCOLS[name].variants``,
    the first by default; BridgeError for an unknown one); its host side accepts them all.
    """
    try:
        cls = PROTOCOLS[name]
    except KeyError:
        known = ", ".join(PROTOCOLS)
        raise ProtocolUnknownError(f"unknown protocol {name!r} (known: {known})") from None
    return cls(variant)


__all__ = [
    "COMMANDS",
    "PROTOCOLS",
    "Codec",
    "Command",
    "DecodeStats",
    "Frame",
    "LineSettings",
    "get_protocol",
]
