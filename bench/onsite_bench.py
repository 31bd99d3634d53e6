"""A stall on an occasion its network never saw, learning from its vendor as the day goes.

Issue 21's held-out photos are taken on other occasions than the training photos, and the
recognizer reads about 80 % of them (the blocked folds' ``other_session`` figure). At a
stall, a weighing the recogniser is not sure of ends with the vendor tapping the item, and the
flow teaches that photo under it (``edge.flow``: ``Recognizer.teach``, the photo with its
mirror and two quarter turns, then ``model.refit.build_head``). This bench measures what that
is worth on the same other-session photos, with the same code:

- each fold network of a ``wetmarket model cv`` teacher (``fold-K-net.pt``: never trained on
  its fold's val blocks, whole sessions of another occasion) reads those sessions one photo
  at a time, in a random order of the day (each session's photos in their own order);
- the vendor is the flow's: a weighing whose top guess is sure (its calibrated probability at
  least ``--auto-confirm``, the stall's ``[camera] auto_confirm``) is sold as guessed with no
  tap; every other one ends with the vendor's tap on the item, a wrong one of the four guesses
  shown with probability ``--mistap`` (``--slips neighbour``, the default: a button beside the
  right one in the screen's two-by-two grid; ``any``: any wrong guess shown); the temperature
  is fitted on the fold networks' own other-session outputs (``fold-K.npz``), as ``wetmarket
  model cv`` fits it;
- a share ``--voided`` of those mistaken taps the vendor (or the shopper, reading the screen)
  catches: the line is voided, which takes its teaching back (``StallFlow.void``), and the item
  is weighed again (its photo read by the stall as it is then) and tapped right;
- **cold**: the network alone; **corrections** (``[camera] teach = "corrections"``): a photo
  taught under the tapped item when that is not the top guess; **taps** (``teach = "taps"``,
  the default): every tapped photo taught; **every**: the bound, each photo taught under its
  true item, sure guesses and mistaken taps alike;
- the catalogue exemplars are 20 photos per label of the fold's training part, as
  ``model.refit.write_exemplars`` ships them; labels are ranked among all 50 (a stall ranks
  only its own items, so this is the harder case);
- the cost: the fold's held-out photos of the occasions it trained on, read cold and with
  the day's head at the end of the day.

    nice .venv/bin/python bench/onsite_bench.py --run-dir runs/t0   # after `wetmarket model cv
        --run-dir runs/t0 --teachers efficientnet-lite0@224 --folds 5 --epochs 6 --views 4`

The figures are ratios of the taught stall against the cold network on the very same photos,
read in one run, and paired counts between the policies (photos only one of two reads right).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data import load_dataset  # noqa: E402
from model.metrics import softmax  # noqa: E402
from model.preprocess import read_photo, square_resize, tta_views  # noqa: E402
from model.refit import (  # noqa: E402
    REFIT_BIAS,
    REFIT_EPOCHS,
    REFIT_SCALE,
    REFIT_TEMPERATURE_FACTOR,
    Exemplars,
    TaughtHead,
    build_head,
    exemplar_rows,
    unit,
)
from model.training.folds import blocked_folds, pooled  # noqa: E402

POLICIES = ("corrections", "taps", "every")
SHOWN = 4  # guesses on the vendor's screen
GRID_COLUMNS = 2  # two to a row there (edge/screens/static/screens.css, ``.guesses``)
SLIPS = ("neighbour", "any")


def slip_targets(shown: list[int], truth: int, slips: str = "neighbour") -> list[int]:
    """The wrong guesses a mistaken tap may land on.  ``neighbour``: a finger that misses lands
    on a button sharing an edge with the right one in the screen's grid; ``any``: any wrong guess
    shown.  When the right item is not shown (the vendor finds it by search), any shown guess."""
    wrong = [c for c in shown if c != truth]
    if slips == "any" or truth not in shown:
        return wrong
    row, col = divmod(shown.index(truth), GRID_COLUMNS)
    near = [c for i, c in enumerate(shown)
            if abs(i // GRID_COLUMNS - row) + abs(i % GRID_COLUMNS - col) == 1]
    return near or wrong


def _embed(net: Any, crops: list[np.ndarray]) -> np.ndarray:
    import torch

    from model.training.features import embed_batches

    if not crops:  # a fold with no photo of some kind in a tiny slice
        return np.zeros((0, net.embedding_dim), np.float32)
    with torch.no_grad():
        return embed_batches(net.embed, crops)


class FoldPhotos:
    """One fold network's embeddings of the pool's photos, each computed once: a day is read
    under several vendors (every ``measure`` call on the same folds), on the same photos, and
    reading them again was most of a call's time."""

    def __init__(self, net: Any, pool: Any, size: int, crop: float) -> None:
        self.net, self._pool, self._size, self._crop = net, pool, size, crop
        self._centre: dict[int, np.ndarray] = {}
        self._views: dict[int, np.ndarray] = {}

    def _read(self, i: int) -> np.ndarray:
        return read_photo(self._pool.samples[i].path, self._size, self._crop)

    def centre(self, rows: list[int], images: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """The centre view's embedding of each of ``rows``, in order (``images``: photos of
        some of them already read)."""
        have = images or {}
        todo = [i for i in dict.fromkeys(rows) if i not in self._centre]
        got = _embed(self.net, [square_resize(have[i] if i in have else self._read(i), self._size)
                                for i in todo])
        self._centre.update(zip(todo, got, strict=True))
        if not rows:
            return np.zeros((0, self.net.embedding_dim), np.float32)
        return np.stack([self._centre[i] for i in rows])

    def day(self, rows: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The centre embeddings of the day's photos ``rows`` and, by row, the embeddings of the
        views a tap teaches (``tta_views``); each photo read from its file once."""
        images = {i: self._read(i) for i in rows if i not in self._centre or i not in self._views}
        for i, img in images.items():
            if i not in self._views:
                self._views[i] = _embed(self.net, tta_views(img, self._size))
        return self.centre(rows, images), {i: self._views[i] for i in rows}


#: FoldPhotos by fold network file (with its time), slice and reading: kept for the process.
_FOLD_PHOTOS: dict[tuple[Any, ...], FoldPhotos] = {}


def _top(head: TaughtHead | None, protos: np.ndarray, emb: np.ndarray) -> int:
    if head is None:
        return int(np.argmax(emb @ protos.T))
    labels, z = head.label_logits(emb)
    return int(labels[int(np.argmax(z))])


def _ranked(head: TaughtHead | None, protos: np.ndarray, emb: np.ndarray, scale: float,
            temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels best first and their calibrated probabilities, as ``Recognizer.scores`` gives them
    (a taught head at ``TaughtHead.temperature``, with the shipped refit factor)."""
    if head is None:
        z, t = scale * (emb @ protos.T), temperature
    else:
        labels, z = head.label_logits(emb)
        z = z[np.argsort([int(lab) for lab in labels])]  # every catalogue label is in the head
        t = head.temperature(temperature, scale, REFIT_TEMPERATURE_FACTOR)
    p = softmax(np.asarray(z, np.float64), t)
    order = np.argsort(-p)
    return order, p[order]


def fitted_temperature(work: Path, folds: int, labels: np.ndarray, split: np.ndarray) -> float:
    """The temperature ``wetmarket model cv`` would fit on these fold networks' other-session
    outputs (their last epoch: the networks the bench reads)."""
    from model.training.head import fit_temperature

    rows, logits = [], []
    for k in range(folds):
        with np.load(work / f"fold-{k}.npz") as z:
            rows.append(z["held_out"])
            logits.append(z["finetuned"][-1])
    r, lg = np.concatenate(rows), np.concatenate(logits)
    other = split[r] == "val"
    return float(fit_temperature(lg[other], labels[r][other]))


def day_order(sessions: dict[int, list[int]], rng: np.random.Generator) -> list[int]:
    """The photos of a day: sessions interleaved at random, each one's photos in their order."""
    queue = [c for c, rows in sessions.items() for _ in rows]
    rng.shuffle(queue)
    pos = dict.fromkeys(sessions, 0)
    out = []
    for c in queue:
        out.append(sessions[c][pos[c]])
        pos[c] += 1
    return out



class _Day:
    """One teaching policy's day at a stall: the photos its taps taught and the refit head."""

    def __init__(self, policy: str, catalogue: list[str], ex: Exemplars, protos: np.ndarray, scale: float,
                 temperature: float, auto_confirm: float, refit_epochs: int) -> None:
        self.policy, self.catalogue, self.ex, self.protos = policy, catalogue, ex, protos
        self.scale, self.temperature, self.auto_confirm = scale, temperature, auto_confirm
        self.refit_epochs = refit_epochs
        self.taught: list[np.ndarray] = []
        self.labels: list[str] = []
        self.head: TaughtHead | None = None
        self.refits = self.auto = self.auto_wrong = self.taught_wrong = 0
        self.seconds = 0.0

    def read(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _ranked(self.head, self.protos, emb, self.scale, self.temperature)

    def top(self, emb: np.ndarray) -> int:
        return _top(self.head, self.protos, emb)

    def _refit(self) -> None:
        if not self.taught:
            self.head = None
            return
        t0 = time.perf_counter()
        self.head = build_head(self.catalogue, self.ex, np.concatenate(self.taught), self.labels,
                               REFIT_BIAS, REFIT_SCALE, self.refit_epochs)
        self.seconds += time.perf_counter() - t0
        self.refits += 1

    def sell(self, truth: int, views: np.ndarray, ranked: np.ndarray, p: np.ndarray,
             slip: int | None) -> tuple[int, bool, int | None]:
        """A weighing read as ``ranked`` (probabilities ``p``) sold as the flow sells it: a sure
        guess with no tap, else the vendor's tap on ``truth`` (or on ``slip``, a wrong guess
        shown); the photo's ``views`` taught as the policy says.  (sold, tapped, taught label)."""
        top = int(ranked[0])
        if p[0] >= self.auto_confirm:
            self.auto += 1
            self.auto_wrong += top != truth
            sold, tapped = top, False
        else:
            sold, tapped = (slip if slip is not None else truth), True
        teach = (truth if self.policy == "every" else
                 sold if tapped and (self.policy == "taps" or sold != top) else None)
        if teach is not None:
            self.taught_wrong += teach != truth
            self.taught.append(views)
            self.labels += [self.catalogue[teach]] * len(views)
            self._refit()
        return sold, tapped, teach

    def untaught(self, truth: int, label: int, rows: int) -> None:
        """The last photo taught (``rows`` views under ``label``) taken back: its line voided."""
        self.taught_wrong -= label != truth
        self.taught.pop()
        del self.labels[len(self.labels) - rows:]
        self._refit()

def run_fold(photos: FoldPhotos, k: int, pool: Any, folds: Any, rng: np.random.Generator,
             temperature: float = 1.0, auto_confirm: float = 0.9, mistap: float = 0.0,
             refit_epochs: int = REFIT_EPOCHS, voided: float = 0.0,
             slips: str = "neighbour") -> dict[str, Any]:
    net = photos.net
    y = pool.labels
    names = [s.path.as_posix() for s in pool.samples]
    catalogue = [str(i) for i in range(int(y.max()) + 1)]
    protos = unit(net.prototypes.detach().numpy().astype(np.float32))
    tr, held = folds.training(k), folds.held_out(k)
    pick = [int(tr[i]) for i in exemplar_rows(y[tr], range(len(catalogue)))]
    ex = Exemplars(protos, photos.centre(pick), y[pick], "fold")
    sessions: dict[int, list[int]] = {}
    for i in sorted((int(i) for i in held if pool.split[i] == "val"), key=lambda i: names[i]):
        sessions.setdefault(int(y[i]), []).append(i)
    order = day_order(sessions, rng)
    day_centre, views = photos.day(order)
    centre = dict(zip(order, day_centre, strict=True))
    trained = [int(i) for i in held if pool.split[i] == "train"]
    trained_emb = photos.centre(trained)
    pairs = list(zip(trained_emb, trained, strict=True))
    cold_trained = sum(int(_top(None, protos, e) == y[i]) for e, i in pairs)
    cold_top = [_top(None, protos, centre[i]) for i in order]
    cold_ok = [int(top == y[i]) for top, i in zip(cold_top, order, strict=True)]
    half = len(order) // 2
    out: dict[str, Any] = {"fold": k, "photos": len(order), "sessions": len(sessions),
                           "cold": sum(cold_ok), "cold_second_half": sum(cold_ok[half:]),
                           "trained_occasions": len(trained), "trained_occasions_cold": cold_trained,
                           # the day's photos (pool rows) and the cold network's top guess for each
                           "rows": order, "cold_top": cold_top}
    scale = float(net.log_scale.detach().exp())
    # the same vendor for every policy: which taps go wrong, and to which shown guess
    slip = rng.random(len(order)) < mistap
    slip_to = rng.integers(0, SHOWN, size=len(order))
    caught = rng.random(len(order)) < voided
    for policy in POLICIES:
        day = _Day(policy, catalogue, ex, protos, scale, temperature, auto_confirm, refit_epochs)
        right = right_late = sold_wrong = n_voided = 0
        hits: list[int] = []  # per photo of the day: the top guess right
        for n, i in enumerate(order):
            yi = int(y[i])
            ranked, p = day.read(centre[i])
            ok = int(ranked[0]) == yi
            right += ok
            right_late += ok and n >= half
            hits.append(int(ok))
            wrong = slip_targets([int(c) for c in ranked[:SHOWN]], yi, slips)
            slip_label = wrong[slip_to[n] % len(wrong)] if slip[n] else None
            sold, tapped, taught = day.sell(yi, views[i], ranked, p, slip_label)
            if tapped and sold != yi and caught[n]:
                # the line voided: what its tap taught is taken back, and the item weighed again
                n_voided += 1
                if taught is not None:
                    day.untaught(yi, taught, len(views[i]))
                ranked, p = day.read(centre[i])
                sold, _, _ = day.sell(yi, views[i], ranked, p, None)
            sold_wrong += sold != yi
        after = (sum(day.top(e) == y[i] for e, i in pairs)
                 if day.head is not None else out["trained_occasions_cold"])
        out[policy] = {"right": int(right), "right_second_half": int(right_late),
                       "taught": len(day.taught), "taught_wrong": int(day.taught_wrong),
                       "auto": day.auto, "auto_wrong": day.auto_wrong, "sold_wrong": int(sold_wrong),
                       "voided": n_voided, "refits": day.refits,
                       "refit_s_mean": day.seconds / max(day.refits, 1),
                       "trained_occasions_after": int(after), "hits": hits}
    return out


def measure(run_dir: Path, data: Path, teacher: str = "efficientnet-lite0@224", teacher_seed: int = 0,
            folds: int = 5, max_images: int | None = None, day_seed: int = 0, auto_confirm: float = 0.9,
            mistap: float = 0.0, refit_epochs: int = REFIT_EPOCHS, crop: float = 1.0,
            voided: float = 0.0, slips: str = "neighbour") -> list[dict[str, Any]]:
    """Per fold: the day read cold and under each teaching policy (``POLICIES``).  The folds are
    the ones ``wetmarket model cv`` ran with the same data, folds, slice and ``crop``."""
    import torch

    from model.training.cv import CvConfig, slice_dataset, work_dir
    from model.training.distill import parse_teacher
    from model.training.network import RecognizerNet, build_trunk

    backbone, size = parse_teacher(teacher)
    work = work_dir(CvConfig(data=data, run_dir=run_dir, crop=crop), teacher, teacher_seed)
    ds = slice_dataset(load_dataset(data), max_images)
    pool = pooled(ds)
    cut = blocked_folds(pool, folds)
    rng = np.random.default_rng(day_seed)
    for k in range(folds):
        for path in (work / f"fold-{k}-net.pt", work / f"fold-{k}.npz"):
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run the cv teacher's folds first")
    temperature = fitted_temperature(work, folds, pool.labels, pool.split)
    print(f"temperature {temperature:.3f} (other-session outputs of the fold networks)", file=sys.stderr)
    rows = []
    for k in range(folds):
        path = work / f"fold-{k}-net.pt"
        key = (path.resolve(), path.stat().st_mtime_ns, data.resolve(), max_images, folds, size, crop)
        photos = _FOLD_PHOTOS.get(key)
        if photos is None:
            net = RecognizerNet(build_trunk(backbone, size, pretrained=False), len(ds.classes))
            net.load_state_dict(torch.load(path))
            photos = _FOLD_PHOTOS[key] = FoldPhotos(net.eval(), pool, size, crop)
        rows.append(run_fold(photos, k, pool, cut, rng, temperature, auto_confirm, mistap,
                             refit_epochs, voided, slips))
        print(json.dumps({key: ({k: x for k, x in v.items() if k != "hits"} if isinstance(v, dict) else v)
                          for key, v in rows[-1].items() if key not in ("rows", "cold_top")}),
              file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="a `wetmarket model cv` run folder")
    ap.add_argument("--teacher", default="efficientnet-lite0@224",
                    help="BACKBONE@SIZE of a teacher of that run")
    ap.add_argument("--teacher-seed", type=int, default=0, help="which of its teachers (its seed)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery-store")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-images", type=int, default=None, help="the slice the cv run used, if any")
    ap.add_argument("--seed", type=int, default=0, help="the day's order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--auto-confirm", type=float, default=0.9,
                    help="a top guess this sure is sold with no tap (the stall's [camera] auto_confirm)")
    ap.add_argument("--refit-epochs", type=int, default=REFIT_EPOCHS,
                    help="the refit's epochs (the stall's by default; fewer only to test the bench fast)")
    ap.add_argument("--mistap", type=float, default=0.0,
                    help="the share of the vendor's taps that go to a wrong guess on the screen")
    ap.add_argument("--voided", type=float, default=0.0,
                    help="the share of mistaken taps caught and voided (the item then weighed again)")
    ap.add_argument("--slips", choices=SLIPS, default="neighbour",
                    help="where a mistaken tap lands: next to the right button in the screen's grid "
                         "(neighbour), or on any wrong guess shown (any)")
    ap.add_argument("--crop", type=float, default=1.0,
                    help="the cv recipe's --crop (its folder, and how its photos are read)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    try:
        rows = measure(args.run_dir, args.data, args.teacher, args.teacher_seed, args.folds, args.max_images,
                       args.seed, args.auto_confirm, args.mistap, args.refit_epochs, args.crop, args.voided,
                       args.slips)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    n = sum(r["photos"] for r in rows)
    half = sum(r["photos"] - r["photos"] // 2 for r in rows)
    m = sum(r["trained_occasions"] for r in rows)
    cold = sum(r["cold"] for r in rows)
    print(f"{n} other-session photos in {sum(r['sessions'] for r in rows)} sessions, {m} photos of the "
          "occasions the folds trained on")
    print(f"sure guesses sold with no tap at {args.auto_confirm:g}; "
          f"{args.mistap:.0%} of taps on a wrong guess ({args.slips}), {args.voided:.0%} of those voided")
    print("| stall | top-1 over the day | second half of the day | sold with no tap (wrong) | sold wrong "
          "| lines voided | photos taught (under a wrong item) | refit s | trained occasions, end of day "
          "| ratio to cold (day) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tc = sum(r["trained_occasions_cold"] for r in rows) / max(m, 1)
    late = sum(r["cold_second_half"] for r in rows)
    print(f"| cold (no teaching) | {cold / n:.1%} | {late / half:.1%} | - | - | - | 0 | - "
          f"| {tc:.1%} | 1.00 |")
    for p in POLICIES:
        def total(key: str, policy: str = p) -> int:
            return sum(r[policy][key] for r in rows)
        taught = total("taught")
        refits = total("refits")
        secs = sum(r[p]["refit_s_mean"] * r[p]["refits"] for r in rows) / max(refits, 1)
        print(f"| {p} | {total('right') / n:.1%} | {total('right_second_half') / half:.1%} "
              f"| {total('auto')} ({total('auto_wrong')}) | {total('sold_wrong')} | {total('voided')} "
              f"| {taught} ({total('taught_wrong')}) | {secs:.2f} "
              f"| {total('trained_occasions_after') / max(m, 1):.1%} | {total('right') / max(cold, 1):.2f} |")
    # paired on the same photos: those only one of two policies reads right
    for a, b in (("taps", "corrections"), ("every", "taps")):
        pairs = [(x, z) for r in rows for x, z in zip(r[a]["hits"], r[b]["hits"], strict=True)]
        print(f"paired: {sum(x > z for x, z in pairs)} photos only {a} reads right, "
              f"{sum(z > x for x, z in pairs)} only {b} does")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
