"""A synthetic market history for the server benchmarks: signed sales, their lines and the
rollups that agree with them, written straight into a market server's database.

    .venv/bin/python bench/history_gen.py --db sqlite:///var/bench/history.db --sales 10000000
    .venv/bin/python bench/history_gen.py --db postgresql://postgres@127.0.0.1:5432/wetmarket_bench \\
        --sales 10000000 --state var/bench/history-state.json

What it writes is what the server would hold had the stalls uploaded it: ``stalls`` (S001..,
each with a token and an Ed25519 key), ``items`` (a market catalogue) and ``stall_prices``,
``sales`` with ``sale_lines`` (every sale validates as ``edge.sale.Sale`` for this market,
its amounts priced by ``edge.pricing``, chained per stall and signed, its digest
``edge.integrity.sale_digest``), and ``rollup_stall_hour``, ``rollup_stall_day``,
``rollup_item_day`` and ``rollup_stall_item_day`` summed from those very sales.

Realistic on purpose: 200 stalls of five kinds (vegetables, fruit, meat, fish, eggs and
tofu) sell the items of their kind at prices that drift with the season and differ a little
from stall to stall, by weight (元/500g, 元/kg) or by the piece, 1 to 4 lines a sale, from
06:00 to 19:59 market time with a morning and an evening peak, more at weekends, and some
stalls much busier than others.  The last day is today up to the last full hour.

Fast on purpose: rows go in by ``COPY`` on PostgreSQL and by ``executemany`` in large
transactions on SQLite, with the secondary indexes and foreign keys of ``sales`` and
``sale_lines`` dropped during the load and built again afterwards (their definitions are
read from the database first, so the schema ends exactly as the migrations made it).
The bulk load writes without ``fsync`` on SQLite (``synchronous=OFF`` on its own
connection): it is benchmark data, rebuilt at will; the server's own writes keep FULL.

``--state FILE`` keeps what a benchmark needs to go on as those stalls: each stall's
token, signing key, last receipt number and last digest.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import logging
import math
import random
import sqlite3
import sys
import time
import uuid
import zoneinfo
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # after PYTHONPATH: a bench may run another checkout's server code
    sys.path.append(str(REPO))

from edge.integrity import GENESIS_HASH, public_key_b64  # noqa: E402
from edge.pricing import line_amount_fen  # noqa: E402
from edge.tracecode import make_trace_code  # noqa: E402
from server.auth import token_hash  # noqa: E402
from server.db import init_db, make_engine  # noqa: E402

logger = logging.getLogger("history_gen")

#: plu, name, English name, category, price unit, usual low and high price in 分 per unit.
CATALOGUE: tuple[tuple[str, str, str, str, str, int, int], ...] = (
    ("1001", "西红柿", "Tomato", "蔬菜", "500g", 300, 450),
    ("1002", "黄瓜", "Cucumber", "蔬菜", "500g", 250, 400),
    ("1003", "土豆", "Potato", "蔬菜", "500g", 150, 250),
    ("1004", "青菜", "Bok choy", "蔬菜", "500g", 200, 400),
    ("1005", "茄子", "Eggplant", "蔬菜", "500g", 300, 450),
    ("1006", "胡萝卜", "Carrot", "蔬菜", "500g", 150, 250),
    ("1007", "大白菜", "Napa cabbage", "蔬菜", "500g", 100, 200),
    ("1008", "青椒", "Green pepper", "蔬菜", "500g", 350, 500),
    ("1009", "菠菜", "Spinach", "蔬菜", "500g", 400, 600),
    ("1010", "西兰花", "Broccoli", "蔬菜", "500g", 450, 650),
    ("1011", "洋葱", "Onion", "蔬菜", "500g", 150, 250),
    ("1012", "芹菜", "Celery", "蔬菜", "500g", 250, 400),
    ("1013", "冬瓜", "Winter melon", "蔬菜", "500g", 100, 200),
    ("1014", "韭菜", "Chinese chives", "蔬菜", "500g", 350, 550),
    ("1015", "生姜", "Ginger", "蔬菜", "500g", 600, 900),
    ("1016", "大蒜", "Garlic", "蔬菜", "500g", 500, 800),
    ("1017", "山药", "Chinese yam", "蔬菜", "500g", 500, 800),
    ("1018", "莲藕", "Lotus root", "蔬菜", "500g", 450, 700),
    ("2001", "苹果", "Apple", "水果", "500g", 500, 800),
    ("2002", "香蕉", "Banana", "水果", "kg", 600, 900),
    ("2003", "橙子", "Orange", "水果", "500g", 400, 650),
    ("2004", "梨", "Pear", "水果", "500g", 350, 550),
    ("2005", "葡萄", "Grapes", "水果", "500g", 800, 1500),
    ("2006", "西瓜", "Watermelon", "水果", "kg", 300, 600),
    ("2007", "猕猴桃", "Kiwi", "水果", "500g", 600, 1000),
    ("2008", "芒果", "Mango", "水果", "500g", 700, 1100),
    ("2009", "火龙果", "Dragon fruit", "水果", "500g", 600, 900),
    ("3001", "五花肉", "Pork belly", "肉类", "500g", 1400, 1900),
    ("3002", "猪里脊", "Pork tenderloin", "肉类", "500g", 1500, 2000),
    ("3003", "排骨", "Pork ribs", "肉类", "500g", 2200, 2900),
    ("3004", "牛腩", "Beef brisket", "肉类", "500g", 3500, 4500),
    ("3005", "羊肉", "Lamb", "肉类", "500g", 3800, 4800),
    ("3006", "鸡腿", "Chicken leg", "肉类", "500g", 1000, 1400),
    ("3007", "整鸡", "Whole chicken", "肉类", "piece", 4500, 6500),
    ("4001", "鲈鱼", "Sea bass", "水产", "500g", 2000, 2800),
    ("4002", "草鱼", "Grass carp", "水产", "500g", 900, 1300),
    ("4003", "基围虾", "Shrimp", "水产", "500g", 3500, 5500),
    ("4004", "带鱼", "Hairtail", "水产", "500g", 2500, 3500),
    ("4005", "大闸蟹", "Hairy crab", "水产", "piece", 2500, 6000),
    ("5001", "鸡蛋", "Eggs", "蛋品豆制品", "500g", 450, 650),
    ("5002", "咸鸭蛋", "Salted duck egg", "蛋品豆制品", "piece", 150, 250),
    ("5003", "老豆腐", "Tofu", "蛋品豆制品", "piece", 250, 350),
    ("5004", "豆腐干", "Dried tofu", "蛋品豆制品", "500g", 600, 900),
)
#: Each kind of stall, its share of the market's stalls, its name and how many items it sells.
KINDS: tuple[tuple[str, float, str, int, int], ...] = (
    ("蔬菜", 0.45, "蔬菜", 8, 16),
    ("水果", 0.20, "鲜果", 5, 9),
    ("肉类", 0.15, "鲜肉", 4, 7),
    ("水产", 0.12, "水产", 3, 5),
    ("蛋品豆制品", 0.08, "豆制品", 3, 4),
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程"
#: Relative sales per local hour, 06:00 to 19:59: a morning peak and a smaller evening one.
HOUR_WEIGHTS: dict[int, float] = {6: 8, 7: 14, 8: 14, 9: 11, 10: 8, 11: 6, 12: 4, 13: 3, 14: 3,
                                  15: 4, 16: 6, 17: 9, 18: 7, 19: 3}
#: How many lines a sale has: 1 (60 %), 2, 3 or 4.
LINES_P = (0.60, 0.25, 0.10, 0.05)

SALE_COLUMNS = ("sale_id", "stall_id", "receipt_no", "trace_code", "sold_at", "local_day",
                "total_fen", "digest", "prev_hash", "signature", "verified", "flags", "raw",
                "received_at")
LINE_COLUMNS = ("sale_id", "idx", "plu", "name", "weight_g", "quantity", "unit_price_fen",
                "price_unit", "amount_fen", "batch_code")
#: The tables whose indexes and foreign keys are dropped during the load.
BULK_TABLES = ("sales", "sale_lines")


@dataclass
class StallPlan:
    stall_id: str
    number: int
    name: str
    kind: str
    items: list[int]  # indexes into CATALOGUE
    item_weights: list[float]
    popularity: float
    price_factor: float
    key: Ed25519PrivateKey
    #: The same key for libsodium, which signs in 25 us where OpenSSL takes 44 (Ed25519
    #: signatures are deterministic: the very same bytes).
    signer: SigningKey
    token: str
    receipt_no: int = 0
    prev: str = GENESIS_HASH


@dataclass
class Rollups:
    """Sums of the generated sales, keyed as the rollup tables are."""

    hours: dict[tuple[str, int, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    stall_days: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    items: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    stall_items: dict[tuple[str, str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))


@dataclass
class Plan:
    """What to generate: how many sales, of which stalls, over which days."""

    sales: int
    stalls: int = 200
    days: int = 365
    tz: str = "Asia/Shanghai"
    region: str = "310106"
    market: int = 1
    seed: int = 17
    #: The generation's "now": the last day is its local day, up to its last full hour.
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def _rng_key(seed: int, stall_id: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}:{stall_id}".encode()).digest())


class History:
    """Generates a plan's sales day by day, stall by stall, in receipt order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tz = zoneinfo.ZoneInfo(plan.tz)
        self.rng = random.Random(plan.seed)
        self.np = np.random.default_rng(plan.seed)
        self.rollups = Rollups()
        local_now = plan.now.astimezone(self.tz)
        self.last_day = local_now.date()
        self.first_day = self.last_day - dt.timedelta(days=plan.days - 1)
        #: Hours of the last day already over (its sales stop there).
        self.last_day_hours = {h for h in HOUR_WEIGHTS if h < local_now.hour}
        self.stalls = self._stalls()
        self.counts = self._counts()

    # -- the market ------------------------------------------------------------------------

    def _stalls(self) -> list[StallPlan]:
        out: list[StallPlan] = []
        kinds = [k for k, share, *_ in KINDS for _ in range(max(1, round(share * self.plan.stalls)))]
        self.rng.shuffle(kinds)
        for i in range(self.plan.stalls):
            kind = kinds[i % len(kinds)]
            _, _, suffix, low, high = next(k for k in KINDS if k[0] == kind)
            mine = [j for j, item in enumerate(CATALOGUE) if item[3] == kind]
            chosen = sorted(self.rng.sample(mine, min(len(mine), self.rng.randint(low, high))))
            stall_id = f"S{i + 1:03d}"
            out.append(StallPlan(
                stall_id=stall_id, number=i + 1,
                name=f"{SURNAMES[i % len(SURNAMES)]}记{suffix}{i + 1:03d}", kind=kind, items=chosen,
                item_weights=[self.rng.uniform(0.3, 1.0) for _ in chosen],
                popularity=self.rng.lognormvariate(0, 0.45),
                price_factor=self.rng.uniform(0.93, 1.08),
                key=_rng_key(self.plan.seed, stall_id),
                signer=SigningKey(_rng_key(self.plan.seed, stall_id).private_bytes_raw()),
                token=base64.urlsafe_b64encode(
                    hashlib.sha256(f"token:{self.plan.seed}:{stall_id}".encode()).digest()).decode()))
        return out

    def day(self, index: int) -> dt.date:
        return self.first_day + dt.timedelta(days=index)

    def _hours(self, index: int) -> list[int]:
        if self.day(index) == self.last_day:
            return sorted(self.last_day_hours)
        return sorted(HOUR_WEIGHTS)

    def _counts(self) -> np.ndarray:
        """Sales per (day, stall), summing to the plan's total exactly."""
        days, stalls = self.plan.days, len(self.stalls)
        popularity = np.array([s.popularity for s in self.stalls])
        day_weight = np.empty(days)
        full = sum(HOUR_WEIGHTS.values())
        for d in range(days):
            weekday = self.day(d).weekday()
            day_weight[d] = (1.25 if weekday >= 5 else 1.0) * sum(
                HOUR_WEIGHTS[h] for h in self._hours(d)) / full
        weights = np.outer(day_weight, popularity)
        weights *= self.np.uniform(0.85, 1.15, size=weights.shape)  # day-to-day noise
        total = weights.sum()
        if total <= 0:
            return np.zeros((days, stalls), dtype=np.int64)
        exact = weights * (self.plan.sales / total)
        counts = np.floor(exact).astype(np.int64)
        short = self.plan.sales - int(counts.sum())
        if short:
            order = np.argsort(-(exact - counts), axis=None)[:short]
            np.add.at(counts.reshape(-1), order, 1)
        return counts

    def price_fen(self, stall: StallPlan, item: int, index: int) -> int:
        """A stall's price of an item on a day: the item's seasonal drift, the stall's level."""
        _, _, _, _, _, low, high = CATALOGUE[item]
        phase = (item * 0.61) % 1.0
        season = 0.5 + 0.4 * math.sin(2 * math.pi * (index / 365.0 + phase))
        week = 0.05 * math.sin(2 * math.pi * (index / 9.0 + phase * 3))
        price = (low + (high - low) * season) * (stall.price_factor + week)
        return max(10, int(round(price / 10.0)) * 10)

    # -- sales -----------------------------------------------------------------------------

    def sales(self, dialect: str, stalls: list[StallPlan] | None = None, rng_stream: int = 0
              ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """Per day: the day's sale rows and line rows of ``stalls`` (default: all), in
        ``SALE_COLUMNS`` and ``LINE_COLUMNS`` order, their values as ``dialect``'s writer
        takes them (see ``_Formats``)."""
        fmt = _Formats(dialect)
        rng = random.Random(f"{self.plan.seed}:{rng_stream}")
        nprng = np.random.default_rng([self.plan.seed, rng_stream])
        for d in range(self.plan.days):
            yield self._day(d, stalls if stalls is not None else self.stalls, fmt, rng, nprng)

    def _day(self, index: int, stalls: list[StallPlan], fmt: _Formats, rng: random.Random,
             nprng: np.random.Generator) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        day = self.day(index)
        day_iso = day.isoformat()
        hours = self._hours(index)
        hour_p = np.array([HOUR_WEIGHTS[h] for h in hours], dtype=float)
        hour_p /= hour_p.sum() if hours else 1.0
        sale_rows: list[tuple[Any, ...]] = []
        line_rows: list[tuple[Any, ...]] = []
        for stall in stalls:
            n = int(self.counts[index, stall.number - 1])
            if n == 0:
                continue
            hour_of = nprng.choice(hours, size=n, p=hour_p)
            seconds = np.sort(hour_of * 3600 + nprng.integers(0, 3600, size=n)).tolist()
            nlines = (nprng.choice(4, size=n, p=LINES_P) + 1).tolist()
            grams = np.clip(nprng.lognormal(math.log(650), 0.6, size=sum(nlines)), 60, 8000
                            ).astype(np.int64).tolist()
            delays = nprng.integers(1, 21, size=n).tolist()
            prices = {i: self.price_fen(stall, i, index) for i in stall.items}
            batch = f"B{day:%Y%m%d}-{stall.number % 100:02d}"
            g = 0
            for k in range(n):
                sec = seconds[k]
                local = dt.datetime.combine(day, dt.time(sec // 3600, sec // 60 % 60, sec % 60),
                                            tzinfo=self.tz)
                lines = []
                for plu_index in rng.choices(stall.items, weights=stall.item_weights, k=nlines[k]):
                    plu, name, name_en, _, unit, _, _ = CATALOGUE[plu_index]
                    price = prices[plu_index]
                    if unit == "piece":
                        weight, qty = None, 1 + grams[g] // 700
                        amount = line_amount_fen(unit_price_fen=price, price_unit=unit, quantity=qty)
                    else:
                        weight, qty = grams[g], None
                        amount = line_amount_fen(unit_price_fen=price, price_unit=unit, weight_g=weight)
                    g += 1
                    lines.append({"plu": plu, "name": name, "weight_g": weight, "quantity": qty,
                                  "unit_price_fen": price, "price_unit": unit, "amount_fen": amount,
                                  "batch_code": batch, "name_en": name_en})
                sale_rows.append(self._sale(stall, local, day_iso, lines, line_rows, rng, fmt,
                                            delays[k]))
        return sale_rows, line_rows

    def _sale(self, stall: StallPlan, local: dt.datetime, day_iso: str, lines: list[dict[str, Any]],
              line_rows: list[tuple[Any, ...]], rng: random.Random, fmt: _Formats,
              received_delay: int) -> tuple[Any, ...]:
        stall.receipt_no += 1
        sale_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        total = sum(ln["amount_fen"] for ln in lines)
        trace = make_trace_code(self.plan.region, self.plan.market, stall.number, stall.receipt_no)
        doc: dict[str, Any] = {
            "sale_id": sale_id, "stall_id": stall.stall_id, "receipt_no": stall.receipt_no,
            "sold_at": local.isoformat(), "trace_code": trace, "lines": lines, "total_fen": total,
            "prev_hash": stall.prev, "signature": "",
        }
        digest = canonical_digest(doc)
        signature = base64.urlsafe_b64encode(stall.signer.sign(bytes.fromhex(digest)).signature).decode()
        doc["signature"] = signature
        prev, stall.prev = stall.prev, digest
        utc = local.astimezone(dt.UTC)
        for i, ln in enumerate(lines):
            line_rows.append((sale_id, i, ln["plu"], ln["name"], ln["weight_g"], ln["quantity"],
                              ln["unit_price_fen"], ln["price_unit"], ln["amount_fen"], ln["batch_code"]))
        self._roll(stall.stall_id, day_iso, local.hour, total, lines)
        return (sale_id, stall.stall_id, stall.receipt_no, trace, fmt.time(utc), day_iso, total,
                digest, prev, signature, True, "[]", _json(doc),
                fmt.time(utc + dt.timedelta(seconds=received_delay)))

    def _roll(self, stall_id: str, day_iso: str, hour: int, total: int,
              lines: list[dict[str, Any]]) -> None:
        r = self.rollups
        h = r.hours[(day_iso, hour, stall_id)]
        h[0] += 1
        h[1] += total
        sd = r.stall_days[(day_iso, stall_id)]
        sd[0] += 1
        sd[1] += total
        for ln in lines:
            for acc in (r.items[(day_iso, ln["plu"])], r.stall_items[(day_iso, stall_id, ln["plu"])]):
                acc[0] += 1
                acc[1] += ln["weight_g"] or 0
                acc[2] += ln["quantity"] or 0
                acc[3] += ln["amount_fen"]


class _Formats:
    """Values as each writer takes them: SQLite gets what SQLAlchemy stores there (a time as
    naive UTC text, ``UTCDateTime``), PostgreSQL's COPY the aware time itself."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"

    def time(self, value: dt.datetime) -> Any:
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else value


def canonical_digest(doc: dict[str, Any]) -> str:
    """``edge.integrity.sale_digest`` of a sale written as a stall writes it, without the
    model round trip: the fields at their default (a line's ``quantity`` or ``weight_g`` of
    None, a None ``batch_code``) and the signature left out, canonical JSON (the test checks
    that it is the same digest)."""
    lines = [{k: v for k, v in ln.items() if v is not None or k not in ("weight_g", "quantity", "batch_code")}
             for ln in doc["lines"]]
    body = {k: v for k, v in doc.items() if k != "signature"}
    body["lines"] = lines
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- writing --------------------------------------------------------------------------------


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Writer:
    """Bulk writes into one database; subclasses per dialect."""

    def months(self, first: dt.date, last: dt.date) -> None: ...
    def begin_bulk(self) -> None: ...
    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None: ...
    def end_bulk(self) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


class SqliteWriter(Writer):
    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA synchronous=OFF")  # benchmark data: rebuilt, never trusted
        self.conn.execute("PRAGMA foreign_keys=OFF")
        self.conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: the sale id index stays in memory
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.dropped: list[str] = []
        self.pending = 0

    def begin_bulk(self) -> None:
        rows = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN "
            f"({','.join('?' * len(BULK_TABLES))})", BULK_TABLES).fetchall()
        for name, sql in rows:
            self.conn.execute(f'DROP INDEX "{name}"')
            self.dropped.append(sql)

    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {table} ({','.join(columns)}) VALUES ({','.join('?' * len(columns))})"
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
        self.conn.executemany(sql, rows)
        self.pending += len(rows)
        if self.pending > 500_000:  # large transactions, but a bounded WAL
            self.conn.execute("COMMIT")
            self.pending = 0

    def end_bulk(self) -> None:
        self.finish()
        for sql in self.dropped:
            self.conn.execute(sql)

    def finish(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.conn.close()


class PostgresWriter(Writer):
    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=False)
        self.dropped_constraints: list[tuple[str, str, str]] = []
        self.dropped_indexes: list[str] = []

    def months(self, first: dt.date, last: dt.date) -> None:
        """The sales partitions of the history's months, as the server makes them for its own
        (``server.partitions``): else the history would all land in the default partition."""
        from server import partitions
        from server.db import make_engine

        engine = make_engine(self.url)
        try:
            with engine.begin() as conn:
                if partitions.is_partitioned(conn):
                    month = partitions.month_of(first)
                    while month <= last:
                        partitions.add_month(conn, month)
                        month = partitions.next_month(month)
        finally:
            engine.dispose()

    def begin_bulk(self) -> None:
        cur = self.conn.cursor()
        # Their keys and every foreign key to or from them (refunds -> sales too), the foreign
        # keys first: a primary key cannot go while a foreign key leans on it.
        cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype "
                    "FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) "
                    "OR (contype = 'f' AND confrelid::regclass::text = ANY(%s)) "
                    "ORDER BY contype = 'f' DESC", (list(BULK_TABLES), list(BULK_TABLES)))
        constraints = cur.fetchall()
        owned = {name for _, name, _, _ in constraints}
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                    "AND tablename = ANY(%s)", (list(BULK_TABLES),))
        indexes = [(n, d) for n, d in cur.fetchall() if n not in owned]
        for table, name, definition, _ in constraints:
            cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            self.dropped_constraints.append((table, name, definition))
        for name, definition in indexes:
            cur.execute(f'DROP INDEX "{name}"')
            self.dropped_indexes.append(definition)
        self.conn.commit()

    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({','.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.conn.commit()

    def end_bulk(self) -> None:
        cur = self.conn.cursor()
        cur.execute("SET maintenance_work_mem = '512MB'")
        # Primary and unique keys before the foreign keys that need them.
        for table, name, definition in reversed(self.dropped_constraints):
            cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            self.conn.commit()
        for definition in self.dropped_indexes:
            cur.execute(definition)
            self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("VACUUM ANALYZE")  # what autovacuum does to a loaded table, now

    def close(self) -> None:
        self.conn.close()


def writer_for(url: str) -> Writer:
    if url.startswith("sqlite:///"):
        return SqliteWriter(Path(url.removeprefix("sqlite:///")))
    return PostgresWriter(url)


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def _work(plan: Plan, dialect: str, group: int, jobs: int, out: Any) -> None:
    """A worker process: the sales of every ``jobs``-th stall from ``group``, day by day, then
    its rollups and its stalls' chain heads."""
    history = History(plan)
    mine = history.stalls[group::jobs]
    for rows in history.sales(dialect, mine, rng_stream=group):
        out.put(rows)
    r = history.rollups
    out.put(((dict(r.hours), dict(r.stall_days), dict(r.items), dict(r.stall_items)),
             [(s.stall_id, s.receipt_no, s.prev) for s in mine]))


def _merge(into: Rollups, parts: tuple[dict[Any, list[int]], ...]) -> None:
    tables: tuple[dict[Any, list[int]], ...] = (into.hours, into.stall_days, into.items, into.stall_items)
    for mine, theirs in zip(tables, parts, strict=True):
        for key, values in theirs.items():
            acc = mine[key]
            for i, v in enumerate(values):
                acc[i] += v


def _days(history: History, dialect: str, jobs: int
          ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Each day's rows of every stall, made by ``jobs`` worker processes (1: this one)."""
    if jobs <= 1:
        yield from history.sales(dialect)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a clean interpreter: no copy of the writer's connection
    queues = [ctx.Queue(maxsize=4) for _ in range(jobs)]
    procs = [ctx.Process(target=_work, args=(history.plan, dialect, g, jobs, q), daemon=True)
             for g, q in enumerate(queues)]
    for proc in procs:
        proc.start()
    try:
        for _ in range(history.plan.days):
            sale_rows: list[tuple[Any, ...]] = []
            line_rows: list[tuple[Any, ...]] = []
            for q in queues:
                s, ln = q.get()
                sale_rows += s
                line_rows += ln
            yield sale_rows, line_rows
        heads = {}
        for q in queues:
            parts, stalls = q.get()
            _merge(history.rollups, parts)
            heads.update({sid: (no, prev) for sid, no, prev in stalls})
        for stall in history.stalls:
            stall.receipt_no, stall.prev = heads[stall.stall_id]
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def generate(url: str, plan: Plan, *, state: Path | None = None, jobs: int = 1,
             progress: bool = False) -> History:
    """Migrate ``url``'s database (it must hold no stalls) and write ``plan``'s history into it,
    the sales made by ``jobs`` processes."""
    engine = make_engine(url)
    init_db(engine, zoneinfo.ZoneInfo(plan.tz))
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT COUNT(*) FROM stalls").scalar_one()
    engine.dispose()
    if stored:
        raise SystemExit(f"{url} already has stalls: generate into an empty database")
    history = History(plan)
    dialect = _dialect(url)
    fmt = _Formats(dialect)
    now = fmt.time(plan.now)
    w = writer_for(url)
    try:
        w.write("stalls", ("stall_id", "name", "token_sha256", "public_key", "created_at"),
                [(s.stall_id, s.name, token_hash(s.token), public_key_b64(s.key),
                  fmt.time(plan.now - dt.timedelta(days=plan.days + 1))) for s in history.stalls])
        w.write("items", ("plu", "name", "name_en", "category", "price_unit", "picture", "origin", "label",
                          "cap_fen", "active", "created_at", "updated_at"),
                [(plu, name, en, cat, unit, None, None, None, high * 2, True, now, now)
                 for plu, name, en, cat, unit, _, high in CATALOGUE])
        last = plan.days - 1
        w.write("stall_prices", ("stall_id", "plu", "unit_price_fen", "updated_at"),
                [(s.stall_id, CATALOGUE[i][0], history.price_fen(s, i, last), now)
                 for s in history.stalls for i in s.items])
        w.finish()
        w.months(history.first_day, history.last_day)
        w.begin_bulk()
        t0, done = time.perf_counter(), 0
        for d, (sale_rows, line_rows) in enumerate(_days(history, dialect, jobs)):
            w.write("sales", SALE_COLUMNS, sale_rows)
            w.write("sale_lines", LINE_COLUMNS, line_rows)
            done += len(sale_rows)
            if progress and (d % 10 == 9 or d == plan.days - 1):
                rate = done / (time.perf_counter() - t0)
                print(f"day {d + 1}/{plan.days}: {done:,} sales, {rate:,.0f}/s", file=sys.stderr, flush=True)
        if progress:
            print("building indexes", file=sys.stderr, flush=True)
        w.end_bulk()
        _write_rollups(w, history.rollups)
    finally:
        w.close()
    if state is not None:
        write_state(state, history)
    return history


def _write_rollups(w: Writer, r: Rollups) -> None:
    w.write("rollup_stall_hour", ("local_day", "hour", "stall_id", "sales", "total_fen"),
            [(d, h, s, n, t) for (d, h, s), (n, t) in r.hours.items()])
    w.write("rollup_stall_day", ("local_day", "stall_id", "sales", "total_fen"),
            [(d, s, n, t) for (d, s), (n, t) in r.stall_days.items()])
    names = {plu: (name, en) for plu, name, en, *_ in CATALOGUE}
    w.write("rollup_item_day", ("local_day", "plu", "name", "name_en", "lines", "weight_g", "quantity",
                                "amount_fen"),
            [(d, p, *names[p], *v) for (d, p), v in r.items.items()])
    w.write("rollup_stall_item_day", ("local_day", "stall_id", "plu", "lines", "weight_g", "quantity",
                                      "amount_fen"),
            [(d, s, p, *v) for (d, s, p), v in r.stall_items.items()])
    w.finish()


def write_state(path: Path, history: History) -> None:
    """Each stall's token, signing key and chain head, for a benchmark that goes on as it."""
    from cryptography.hazmat.primitives import serialization

    raw = serialization.Encoding.Raw
    out = {s.stall_id: {
        "token": s.token, "receipt_no": s.receipt_no, "prev_hash": s.prev,
        "private_key": base64.b64encode(s.key.private_bytes(
            raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())).decode(),
    } for s in history.stalls}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="sqlite:///FILE or postgresql://... (an empty database)")
    ap.add_argument("--sales", type=int, default=10_000_000)
    ap.add_argument("--stalls", type=int, default=200)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--state", type=Path, help="write each stall's token, key and chain head here")
    ap.add_argument("--jobs", type=int, default=2, help="processes making sales (default 2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    plan = Plan(sales=args.sales, stalls=args.stalls, days=args.days, seed=args.seed)
    generate(args.db, plan, state=args.state, jobs=args.jobs, progress=True)
    print(f"{args.sales:,} sales in {time.perf_counter() - t0:,.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
