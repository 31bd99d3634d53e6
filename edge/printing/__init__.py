"""Receipt printers through python-escpos (USB, serial, network, file, dummy).

Public API::

    make_printer(config_dict, *, meta=None, queue=None) -> Printer
    Printer.print_receipt(data, name=None) -> PrinterStatus   PrinterError on failure
    Printer.print_sale(sale, meta=None) -> PrinterStatus      queues the sale on failure
    Printer.status() -> PrinterStatus                         OK, PAPER_LOW, PAPER_OUT,
                                                              OFFLINE, UNKNOWN
    PrinterSettings                                           the validated config

See ``edge.printing.printers`` for the config keys and ``edge.reprint`` for
the queue that keeps failed prints.
"""

from __future__ import annotations

from edge.printing.printers import Printer, PrinterSettings, UrlSerial, make_printer
from edge.printing.status import PrinterStatus

__all__ = ["Printer", "PrinterSettings", "PrinterStatus", "UrlSerial", "make_printer"]
