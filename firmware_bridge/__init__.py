"""The serial link to the weighing module.

Exception tree::

    BridgeError                 root of everything this package raises
     +-- FrameError             a frame that does not decode (bad checksum, bad digits)
     +-- LinkError              the port cannot be opened, read or written
     +-- ProtocolUnknownError   a protocol name we do not speak
     +-- CalibrationError       a calibration missing, unsealed, tampered with or impossible
     +-- AuditError             the audit trail is broken (edited, truncated) or unwritable
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of all firmware_bridge errors."""


class FrameError(BridgeError):
    """A frame that does not decode."""


class LinkError(BridgeError):
    """The serial port cannot be opened, read or written."""


class ProtocolUnknownError(BridgeError):
    """A protocol name that wetmarket does not speak."""


class CalibrationError(BridgeError):
    """A calibration that is missing, unsealed, tampered with or physically impossible."""


class AuditError(BridgeError):
    """The audit trail is broken (edited, truncated) or cannot be written."""
