"""edge.integrity: canonical digest, Ed25519 signatures, the per-stall hash chain."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import IntegrityError
from edge.integrity import (
    GENESIS_HASH,
    canonical_json,
    chain_problems,
    load_or_create_key,
    public_key_b64,
    sale_digest,
    seal_sale,
    sign_sale,
    verify_sale,
)
from edge.sale import Sale
from edge.tracecode import make_trace_code

# A fixed key so that digests and signatures below are exact (Ed25519 is deterministic).
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def raw_sale(receipt_no: int = 42, **changes: object) -> dict:
    sale = {
        "sale_id": str(uuid.UUID(int=receipt_no)), "stall_id": "S01", "receipt_no": receipt_no,
        "sold_at": "2026-11-28T08:15:02+08:00",
        "trace_code": make_trace_code("310106", 1, 1, receipt_no),
        "lines": [{"plu": "1001", "name": "西红柿", "weight_g": 512,
                   "unit_price_fen": 300, "price_unit": "500g", "amount_fen": 307}],
        "total_fen": 307, "prev_hash": GENESIS_HASH, "signature": "",
    }
    sale.update(changes)
    return sale


def test_canonical_json_is_exactly_specified() -> None:
    expected = (
        '{"lines":[{"amount_fen":307,"name":"西红柿","plu":"1001",'
        '"price_unit":"500g","unit_price_fen":300,"weight_g":512}],'
        f'"prev_hash":"{GENESIS_HASH}","receipt_no":42,'
        '"sale_id":"00000000-0000-0000-0000-00000000002a","sold_at":"2026-11-28T08:15:02+08:00",'
        '"stall_id":"S01","total_fen":307,"trace_code":"31010600100100000425"}'
    ).encode()
    assert canonical_json(raw_sale()) == expected
    assert sale_digest(raw_sale()) == hashlib.sha256(expected).hexdigest()


def test_digest_ignores_signature_and_spelling_but_not_content() -> None:
    base = sale_digest(raw_sale())
    assert sale_digest(raw_sale(signature="anything")) == base
    assert sale_digest(Sale.model_validate(raw_sale())) == base
    # The same instant and id written differently hash the same (normalised by Sale).
    assert sale_digest(raw_sale(sale_id="00000000-0000-0000-0000-00000000002A")) == base
    assert sale_digest(raw_sale(total_fen=307, lines=[{
        "plu": "1001", "name": "西红柿", "weight_g": 512, "quantity": None,
        "unit_price_fen": 300, "price_unit": "500g", "amount_fen": 307, "batch_code": None,
    }])) == base
    assert sale_digest(raw_sale(sold_at="2026-11-28T08:15:03+08:00")) != base
    assert sale_digest(raw_sale(extra_field="x")) != base  # added fields are covered too


def test_a_field_added_later_with_a_default_keeps_old_digests() -> None:
    class SaleV2(Sale):  # the contract lets fields be added
        channel: str = "counter"
        market_no: int | None = None

    base = sale_digest(raw_sale())
    assert sale_digest(SaleV2.model_validate(raw_sale())) == base
    assert sale_digest(SaleV2.model_validate(raw_sale(channel="online"))) != base


def test_sign_and_verify() -> None:
    sale = raw_sale()
    signature = sign_sale(sale, KEY)
    assert len(signature) == 88 and signature.endswith("==")
    public = public_key_b64(KEY)
    assert len(public) == 44
    signed = {**sale, "signature": signature}
    assert verify_sale(signed, public)
    assert verify_sale(Sale.model_validate(signed), public)
    assert verify_sale({**signed, "signature": signature.rstrip("=")}, public.rstrip("="))
    # Altered content, a wrong key, no signature, garbage: all False, never an exception.
    tampered = {**signed, "lines": [{**sale["lines"][0], "weight_g": 612, "amount_fen": 367}],
                "total_fen": 367}
    assert not verify_sale(tampered, public)
    assert not verify_sale(signed, public_key_b64(Ed25519PrivateKey.generate()))
    assert not verify_sale(sale, public)
    assert not verify_sale({**signed, "signature": "!!"}, public)
    assert not verify_sale(signed, "not-a-key")
    assert not verify_sale({"sale_id": "x"}, public)


def test_digest_of_an_invalid_dict_is_a_clear_error() -> None:
    with pytest.raises(IntegrityError, match="^sale does not validate: total_fen"):
        sale_digest(raw_sale(total_fen=-1))


def test_key_file_is_created_private_and_reloaded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keys" / "stall.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_b64(load_or_create_key(path)) == public_key_b64(key)
    assert [p.name for p in path.parent.iterdir()] == ["stall.key"]  # no temp file left
    os.chmod(path, 0o644)
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_warned_about_and_made_private(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    """A stall's signing key copied in with the wrong mode (a restore, a new device): said in
    the log (the journal, under systemd) and set back to owner only before it is used."""
    path = tmp_path / "stall.key"
    key = load_or_create_key(path)
    os.chmod(path, mode)
    with caplog.at_level("WARNING", logger="edge.integrity"):
        again = load_or_create_key(path)
    assert f"signing key {path} had mode {mode:o}; set to 600" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_b64(again) == public_key_b64(key)


def test_a_corrupt_key_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "stall.key"
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(IntegrityError, match="cannot be loaded"):
        load_or_create_key(path)


def test_chain_detects_alteration_and_deletion() -> None:
    sales: list[Sale] = []
    for number in range(1, 6):
        sales.append(seal_sale(raw_sale(number), sales[-1] if sales else None, KEY))
    assert sales[0].prev_hash == GENESIS_HASH
    assert sales[1].prev_hash == sale_digest(sales[0])
    assert all(verify_sale(sale, public_key_b64(KEY)) for sale in sales)
    assert chain_problems(sales) == []

    # Deleting receipt 3.
    assert chain_problems([sales[0], sales[1], sales[3], sales[4]]) == [
        "receipts 3..3 are missing",
        "receipt 4 is not chained to receipt 2 (altered or missing sale)",
    ]
    # Altering receipt 2 (even re-signed with the stall key) breaks the link to 3.
    altered = seal_sale(raw_sale(2, sold_at="2026-11-28T09:00:00+08:00"), sales[0], KEY)
    assert chain_problems([sales[0], altered, *sales[2:]]) == [
        "receipt 3 is not chained to receipt 2 (altered or missing sale)",
    ]
    # A first receipt that does not start from genesis.
    assert chain_problems([seal_sale(raw_sale(1), sales[3], KEY)]) == [
        "receipt 1 does not start the chain (prev_hash is not genesis)",
    ]


def test_the_signature_is_over_the_raw_digest() -> None:
    # Pinned so the server (or any other verifier) can re-implement it.
    sale = raw_sale()
    digest = bytes.fromhex(sale_digest(sale))
    KEY.public_key().verify(
        __import__("base64").urlsafe_b64decode(sign_sale(sale, KEY)), digest
    )
    assert json.loads(canonical_json(sale))["trace_code"] == "31010600100100000425"


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["weight_g", "unit_price_fen", "amount_fen"]),
       delta=st.integers(1, 1000))
def test_any_altered_amount_fails_verification(field: str, delta: int) -> None:
    signed = seal_sale(raw_sale(), None, KEY)
    data = signed.to_json()
    line = data["lines"][0]
    line[field] += delta
    if field == "amount_fen":
        data["total_fen"] += delta  # keep the sale well-formed: only the signature can tell
    assert verify_sale(signed, public_key_b64(KEY))
    assert not verify_sale(data, public_key_b64(KEY))
