"""Receipt integrity: a hash chain per stall and an Ed25519 signature per sale.

Legally relevant: a receipt can neither be altered nor deleted unnoticed.

* ``sale_digest(sale)``: hex SHA-256 of the sale's canonical JSON **without**
  ``signature``.  Canonical JSON = the sale as ``Sale.to_json()`` gives it
  (a dict is first validated into a ``Sale``, so ``sale_id``/``sold_at``
  come out the same however they were written) **leaving out fields that hold
  their default** (``quantity: null``, ``batch_code: null``...: a field added
  to the contract later with a default then changes no existing digest), then
  ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
  encoded as UTF-8.
* Chain rule: ``sale.prev_hash == sale_digest(previous sale of the same stall)``,
  ``GENESIS_HASH`` for a stall's first sale.  A deleted receipt breaks the
  chain of the next one and leaves a gap in the receipt numbers.
* ``sign_sale(sale, key)``: Ed25519 over the 32 raw bytes of the digest,
  returned as urlsafe base64 **with** padding (88 characters; ``=`` is legal in
  a query string, so the trace URL carries it unescaped).
* ``public_key_b64(key)``: urlsafe base64 (with padding) of the raw 32-byte
  public key.  Both decoders here also accept the unpadded form.

Public API::

    GENESIS_HASH
    load_or_create_key(path) -> Ed25519PrivateKey      (file mode 0600, PKCS#8 PEM)
    public_key_b64(key) -> str
    sale_digest(sale) -> str
    sign_sale(sale, key) -> str
    verify_sale(sale, public_key_b64) -> bool
    sign_digest(hex_digest, key) -> str                 any signed document (shared taught items)
    verify_digest(hex_digest, signature, public_key_b64) -> bool
    seal_sale(sale, previous, key) -> Sale              sets prev_hash and signature
    chain_problems(sales) -> list[str]                  one stall's sales in receipt order
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import ValidationError

from edge import IntegrityError
from edge.sale import Sale

logger = logging.getLogger(__name__)

GENESIS_HASH: str = "0" * 64


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def load_or_create_key(path: pathlib.Path) -> Ed25519PrivateKey:
    """The stall's signing key at ``path``; created (mode 0600) on first use."""
    path = pathlib.Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Write a private temp file, then link it into place: a reader never
        # sees half a key, and of two racing creators the second one loses
        # the link and loads the first one's key.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            logger.info("created the stall signing key %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("signing key %s had mode %o; set to 600", path, mode)
        os.chmod(path, 0o600)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise IntegrityError(f"signing key {path} cannot be loaded: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise IntegrityError(f"signing key {path} is not an Ed25519 key")
    return loaded


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64encode(raw)


def _sale_model(sale: Mapping[str, Any] | Sale) -> Sale:
    if isinstance(sale, Sale):
        return sale
    if not isinstance(sale, Mapping):
        raise IntegrityError(f"a sale must be a Sale or a dict, got {type(sale).__name__}")
    try:
        return Sale.model_validate(dict(sale))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "sale"
        raise IntegrityError(f"sale does not validate: {where}: {first['msg']}") from exc


def canonical_json(sale: Mapping[str, Any] | Sale) -> bytes:
    """The bytes that are hashed: the sale without ``signature``, canonical JSON, UTF-8."""
    # exclude_defaults: a field added to Sale later with a default (the contract
    # lets fields be added) must not change the digest of any sale already signed.
    data = _sale_model(sale).model_dump(mode="json", exclude_defaults=True)
    data.pop("signature", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sale_digest(sale: Mapping[str, Any] | Sale) -> str:
    return hashlib.sha256(canonical_json(sale)).hexdigest()


def sign_digest(digest: str, key: Ed25519PrivateKey) -> str:
    """Ed25519 over the 32 raw bytes of a hex SHA-256 ``digest``, as urlsafe base64."""
    return _b64encode(key.sign(bytes.fromhex(digest)))


def verify_digest(digest: str, signature: str, public_key_b64: str) -> bool:
    """True only if ``signature`` signs ``digest`` for this public key; never raises."""
    try:
        if not signature:
            return False
        public = Ed25519PublicKey.from_public_bytes(_b64decode(public_key_b64))
        public.verify(_b64decode(signature), bytes.fromhex(digest))
    except (InvalidSignature, ValueError, binascii.Error, TypeError) as exc:
        logger.debug("signature does not verify: %s", exc)
        return False
    return True


def sign_sale(sale: Mapping[str, Any] | Sale, key: Ed25519PrivateKey) -> str:
    return sign_digest(sale_digest(sale), key)


def verify_sale(sale: Mapping[str, Any] | Sale, public_key_b64: str) -> bool:
    """True only if the sale's signature is valid for this public key; never raises."""
    try:
        signature = sale.signature if isinstance(sale, Sale) else sale.get("signature", "")
        digest = sale_digest(sale)
    except (IntegrityError, ValueError, AttributeError) as exc:
        logger.debug("sale signature does not verify: %s", exc)
        return False
    return verify_digest(digest, signature, public_key_b64)


def seal_sale(
    sale: Mapping[str, Any] | Sale,
    previous: Mapping[str, Any] | Sale | None,
    key: Ed25519PrivateKey,
) -> Sale:
    """Chain ``sale`` to ``previous`` (None for the stall's first) and sign it."""
    data = _sale_model(sale).to_json()
    data["prev_hash"] = GENESIS_HASH if previous is None else sale_digest(previous)
    data["signature"] = ""
    data["signature"] = sign_sale(data, key)
    return Sale.model_validate(data)


def chain_problems(sales: Iterable[Mapping[str, Any] | Sale]) -> list[str]:
    """What is wrong in one stall's sales, given in receipt order (empty: the chain holds).

    Finds an altered sale (the next sale's ``prev_hash`` no longer matches),
    a deleted one (a gap in the receipt numbers and a broken link) and a
    first sale that does not start from ``GENESIS_HASH`` when it is receipt 1.
    """
    problems: list[str] = []
    previous: Sale | None = None
    previous_digest = GENESIS_HASH
    for item in sales:
        sale = item if isinstance(item, Sale) else Sale.model_validate(dict(item))
        if previous is None:
            if sale.receipt_no == 1 and sale.prev_hash != GENESIS_HASH:
                problems.append("receipt 1 does not start the chain (prev_hash is not genesis)")
        else:
            if sale.stall_id != previous.stall_id:
                problems.append(f"receipt {sale.receipt_no} is from stall {sale.stall_id}, "
                                f"not {previous.stall_id}")
            if sale.receipt_no != previous.receipt_no + 1:
                problems.append(f"receipts {previous.receipt_no + 1}..{sale.receipt_no - 1} "
                                "are missing" if sale.receipt_no > previous.receipt_no + 1 else
                                f"receipt {sale.receipt_no} follows {previous.receipt_no}")
            if sale.prev_hash != previous_digest:
                problems.append(f"receipt {sale.receipt_no} is not chained to receipt "
                                f"{previous.receipt_no} (altered or missing sale)")
        previous, previous_digest = sale, sale_digest(sale)
    return problems
