"""Interaction rows streamed from Parquet a row group at a time, for data larger than memory.

A :class:`ParquetSource` is a Parquet file or a folder of part files (every ``*.parquet`` /
``*.pq`` below it, in sorted path order; hidden files and folders are skipped). Opening it
reads the files' metadata only: row groups, row counts, column names (a missing column is
an error naming the file and the column). Rows are numbered across the files in that
order, 0 first; a row's number decides everything random about it, so a streamed run does
not depend on how the rows are cut into files or row groups:

- its split (:func:`split_codes`): test with probability ``test_fraction``, else validation
  with probability ``valid_fraction``, else training, from a hash of (seed, row number);
- its place in the uniform sample the context encoders are fitted on (:func:`scan`);
- its bootstrap weight in each ensemble member (``wager.uncertainty.ensemble``).

:func:`scan` is the first pass over the data: every row group is read once, checked like a
loaded table (:func:`~wager.data.checks.validate_interactions`), and reduced to what fitting
needs: the training rows' counts per user and item id (the id vocabularies, exact), the
label mean, a uniform sample of training rows, and the validation and test rows (kept in
memory: choose fractions whose rows fit). :func:`epoch_batches` then streams the training
rows for each epoch: row groups in a seeded random order, rows mixed in a
:class:`ShuffleBuffer`, so memory holds the buffer and one row group, whatever the data's
size.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"u": ["a", "b", "a"], "i": ["x", "y", "y"], "r": [4, 5, 3]}).to_parquet(
    ...     d / "part-0.parquet", row_group_size=2)
    >>> src = ParquetSource(d, ["u", "i", "r"])
    >>> src.n_rows, [g.rows for g in src.row_groups]
    (3, [2, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.data.checks import ReportedDataError, validate_interactions
from wager.data.features import categorical_keys
from wager.data.schema import Schema
from wager.errors import data_error, require_path

PARQUET_SUFFIXES = (".parquet", ".pq")
# hashing streams: each random use of a row number draws from its own stream
SPLIT_STREAM, SAMPLE_STREAM, BOOTSTRAP_STREAM = 1, 2, 3

Arrays = dict[str, np.ndarray]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose outputs look independent."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_uniforms(rows: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """(n,) float64 in [0, 1): one uniform draw per row number, a function of (seed,
    stream, row) only (53 bits of a SplitMix64 hash)."""
    key = _mix(np.array([(seed & 0xFFFFFFFF) * 1_000_003 + stream], dtype=np.uint64))
    hashed = _mix(np.asarray(rows, dtype=np.uint64) ^ key)
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def split_codes(
    rows: np.ndarray, seed: int, valid_fraction: float, test_fraction: float
) -> np.ndarray:
    """(n,) int8 split of each row number: 0 training, 1 validation, 2 test.

    A row is test with probability ``test_fraction``; otherwise validation with probability
    ``valid_fraction`` (a share of the non-test rows, as ``[data] valid_fraction`` is of the
    training split), else training.
    """
    u = row_uniforms(rows, seed, SPLIT_STREAM)
    codes = np.zeros(len(u), dtype=np.int8)
    codes[u < test_fraction + (1 - test_fraction) * valid_fraction] = 1
    codes[u < test_fraction] = 2
    return codes


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet source.

    Attributes:
        path: its file.
        index: its position in the file.
        start: the source's number of its first row.
        rows: its rows.
        nbytes: its uncompressed size (Parquet metadata), bytes.
    """

    path: Path
    index: int
    start: int
    rows: int
    nbytes: int


class ParquetSource:
    """A Parquet file or folder of part files, read one row group at a time.

    Args:
        path: the file, or a folder whose ``*.parquet`` / ``*.pq`` files (at any depth,
            sorted by path) hold the rows.
        columns: the columns to read; each file must have all of them.

    Raises:
        DataError: the path does not exist, holds no Parquet file, a file is not Parquet,
            or lacks a column (naming the file, the column and the columns it has).
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = require_path(path, "Give the Parquet file, or the folder of part files")
        self.path = root
        self.columns = list(dict.fromkeys(columns))
        if root.is_file():
            files = [root]
        else:
            files = sorted(
                p
                for p in root.rglob("*")
                if p.suffix.lower() in PARQUET_SUFFIXES
                and p.is_file()
                and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
            )
        if not files:
            raise data_error(
                "no_parquet_files",
                f"no Parquet files ({', '.join(PARQUET_SUFFIXES)}) in this folder",
                source=str(root),
                fix="[data] stream = true reads Parquet: convert the table (e.g. "
                "pandas.read_csv(...).to_parquet(...)), or set stream = false",
            )
        self.files = files
        groups: list[RowGroup] = []
        start = 0
        for f in files:
            try:
                meta = pq.ParquetFile(f).metadata
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise data_error(
                    "parse_error",
                    f"the file cannot be read as Parquet ({exc})",
                    source=str(f),
                    fix="Check that the file is complete and really Parquet; re-export it",
                ) from None
            names = set(meta.schema.names)
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise data_error(
                    "missing_column",
                    f"column(s) {missing} are missing (the file has {sorted(names)})",
                    source=str(f),
                    column=missing[0],
                    fix="Every part file needs every column the schema names: check the "
                    "[schema] column names or the files",
                )
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                groups.append(RowGroup(f, g, start, rg.num_rows, rg.total_byte_size))
                start += rg.num_rows
        self.row_groups = [g for g in groups if g.rows > 0]
        self.n_rows = start

    def read(self, group: RowGroup) -> pd.DataFrame:
        """The group's rows (the source's columns), indexed by their row numbers."""
        import pyarrow.parquet as pq

        table = pq.ParquetFile(group.path).read_row_group(group.index, columns=self.columns)
        df = table.to_pandas()
        df.index = pd.RangeIndex(group.start, group.start + len(df))
        return df

    def ordered(self, seed: int | None) -> list[RowGroup]:
        """The row groups in file order (``seed`` None) or in a random order from ``seed``."""
        if seed is None:
            return list(self.row_groups)
        order = np.random.default_rng(seed).permutation(len(self.row_groups))
        return [self.row_groups[i] for i in order]

    def fingerprint(self) -> list[list[Any]]:
        """[relative name, bytes, modification time in ns] of each file: what a resumed
        run compares to know the data did not change."""
        out = []
        for f in self.files:
            st = f.stat()
            name = f.name if f == self.path else str(f.relative_to(self.path))
            out.append([name, st.st_size, st.st_mtime_ns])
        return out


_TEXT_ROW_BYTES = 80  # a pandas object cell: pointer, str header, a short id's characters
_NUMBER_ROW_BYTES = 8


def frame_row_bytes(source: ParquetSource) -> int:
    """Estimated bytes of one row of ``source`` as a pandas DataFrame (text cells as
    Python strings), from the files' schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(source.files[0])
    total = 0
    for name in source.columns:
        kind = schema.field(name).type
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        total += _TEXT_ROW_BYTES if text or pa.types.is_dictionary(kind) else _NUMBER_ROW_BYTES
    return total


def memory_plan(
    source: ParquetSource,
    *,
    valid_fraction: float,
    test_fraction: float,
    buffer_rows: int,
    batch_rows: int,
    sample_rows: int,
    encoded_row_bytes: int,
) -> dict[str, int]:
    """Estimated peak bytes of streaming ``source``, by part, from its metadata alone:

    - "row_group": the largest row group, as Arrow and as pandas (x2);
    - "shuffle_buffer": its rows plus one row group and one batch, encoded
      (``encoded_row_bytes`` each), twice (the shuffle copies);
    - "held_out": the expected validation and test rows, as pandas;
    - "sample": the context encoders' sample, as pandas.

    The vocabularies (a count per distinct id) are not known before the first pass; they
    are not in the plan.
    """
    row = frame_row_bytes(source)
    largest = max((g.rows for g in source.row_groups), default=0)
    held = source.n_rows * (test_fraction + (1 - test_fraction) * valid_fraction)
    return {
        "row_group": 2 * largest * row,
        "shuffle_buffer": 2 * (buffer_rows + largest + batch_rows) * encoded_row_bytes,
        "held_out": int(held * row),
        "sample": min(sample_rows, source.n_rows) * row,
    }


@dataclass
class StreamScan:
    """What the first pass over a streamed source found.

    Attributes:
        rows: rows in the source.
        train_rows: rows in the training split.
        user_counts: training rows per user id key (``categorical_keys``), any order.
        item_counts: training rows per item id key.
        label_sum: sum of the training labels (0 without a label).
        sample: a uniform sample of at most ``sample_rows`` training rows (the rows with
            the smallest hashed keys), in row-number order.
        valid: the validation rows, or None when ``valid_fraction`` is 0.
        test: the test rows.
    """

    rows: int
    train_rows: int
    user_counts: pd.Series
    item_counts: pd.Series
    label_sum: float
    sample: pd.DataFrame
    valid: pd.DataFrame | None
    test: pd.DataFrame

    @property
    def label_mean(self) -> float:
        """Mean training label (0 without training rows)."""
        return self.label_sum / self.train_rows if self.train_rows else 0.0


class _Counts:
    """Sums of per-chunk value counts, folded together every ``fold`` chunks."""

    def __init__(self, fold: int = 16) -> None:
        self.parts: list[pd.Series] = []
        self.fold = fold

    def add(self, keys: pd.Series) -> None:
        self.parts.append(keys.value_counts(sort=False, dropna=True))
        if len(self.parts) >= self.fold:
            self.parts = [self.total()]

    def total(self) -> pd.Series:
        if not self.parts:
            return pd.Series(dtype="int64")
        both = pd.concat(self.parts)
        return both.groupby(level=0, sort=False).sum().astype("int64")


def scan(
    source: ParquetSource,
    schema: Schema,
    *,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
    sample_rows: int,
    coerce: Callable[[pd.DataFrame], pd.DataFrame] = lambda df: df,
    on_group: Callable[[int], None] | None = None,
) -> StreamScan:
    """The first pass over ``source`` (see the module docstring).

    Args:
        source: the rows.
        schema: column roles; each row group is checked against it.
        seed: the split's and the sample's seed.
        valid_fraction: see :func:`split_codes`.
        test_fraction: see :func:`split_codes`.
        sample_rows: the most training rows the uniform sample keeps.
        coerce: makes a checked row group's role columns numeric (the table loader's).
        on_group: called with each row group's rows once it is done (progress).

    Raises:
        DataError: a row group fails the checks (every error of the first such group,
            its file and row group named); the training split is empty.
    """
    users, items = _Counts(), _Counts()
    label_sum, train_rows = 0.0, 0
    held: dict[int, list[pd.DataFrame]] = {1: [], 2: []}
    sample, sample_keys = pd.DataFrame(), np.empty(0)
    for group in source.row_groups:
        where = f"{group.path} (row group {group.index}: rows {group.start}..)"
        chunk = source.read(group)
        report = validate_interactions(chunk.reset_index(drop=True), schema, where)
        if not report.ok:
            raise ReportedDataError(report)
        chunk = coerce(chunk)
        codes = split_codes(chunk.index.to_numpy(), seed, valid_fraction, test_fraction)
        for code, parts in held.items():
            if (codes == code).any():
                parts.append(chunk[codes == code])
        train = chunk[codes == 0]
        train_rows += len(train)
        users.add(categorical_keys(train[schema.user]))
        items.add(categorical_keys(train[schema.item]))
        if schema.label is not None and len(train):
            label_sum += float(train[schema.label].to_numpy(dtype=np.float64).sum())
        keys = row_uniforms(train.index.to_numpy(), seed, SAMPLE_STREAM)
        if len(sample_keys) >= sample_rows:
            below = keys < sample_keys.max()
            train, keys = train[below], keys[below]
        if len(train):
            sample = pd.concat([sample, train]) if len(sample) else train
            sample_keys = np.concatenate([sample_keys, keys])
            if len(sample_keys) > sample_rows:
                keep = np.argsort(sample_keys, kind="stable")[:sample_rows]
                sample, sample_keys = sample.iloc[keep], sample_keys[keep]
        if on_group is not None:
            on_group(group.rows)
    if train_rows == 0:
        raise data_error(
            "empty_data",
            "the training split of the streamed rows is empty",
            source=str(source.path),
            fix="Lower [data] test_fraction / valid_fraction, or check the files",
        )
    order = np.argsort(sample.index.to_numpy(), kind="stable")
    columns = source.columns

    def frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(parts) if parts else pd.DataFrame(columns=columns)

    return StreamScan(
        rows=source.n_rows,
        train_rows=train_rows,
        user_counts=users.total(),
        item_counts=items.total(),
        label_sum=label_sum,
        sample=sample.iloc[order],
        valid=frame(held[1]) if valid_fraction > 0 else None,
        test=frame(held[2]),
    )


@dataclass
class StreamedRows:
    """A streamed training set: its source, its first pass, and how it is split and mixed.

    Attributes:
        source: the Parquet rows.
        scan: the first pass (:func:`scan`) with the same settings.
        seed: the split's, sample's and shuffles' seed.
        valid_fraction: see :func:`split_codes`.
        test_fraction: see :func:`split_codes`.
        buffer_rows: the shuffle buffer's capacity (rows).
    """

    source: ParquetSource
    scan: StreamScan
    seed: int
    valid_fraction: float
    test_fraction: float
    buffer_rows: int

    def batches(
        self, encode: Callable[[pd.DataFrame], Arrays], batch_rows: int
    ) -> Callable[[int], Iterator[Arrays]]:
        """epoch -> that epoch's shuffled training batches (:func:`epoch_batches`)."""

        def epoch(e: int) -> Iterator[Arrays]:
            return epoch_batches(
                self.source,
                encode,
                seed=self.seed,
                epoch=e,
                valid_fraction=self.valid_fraction,
                test_fraction=self.test_fraction,
                buffer_rows=self.buffer_rows,
                batch_rows=batch_rows,
            )

        return epoch


class ShuffleBuffer:
    """Rows in (dicts of equal-length arrays), random batches out.

    Rows wait in the buffer until it holds more than ``capacity`` rows; then the buffer
    is shuffled and full batches leave from its front until ``capacity`` rows are left,
    which mix with the next rows added. :meth:`drain` empties it, the last batch possibly
    short. The buffer holds at most ``capacity`` + one addition + one batch rows.

    Args:
        capacity: rows kept for mixing (0: batches leave in arrival order within each
            addition's shuffle).
        batch_rows: rows per batch.
        rng: the generator of the shuffles.
    """

    def __init__(self, capacity: int, batch_rows: int, rng: np.random.Generator) -> None:
        if batch_rows < 1 or capacity < 0:
            raise ValueError(
                f"batch_rows must be >= 1 and capacity >= 0, got {batch_rows}, {capacity}"
            )
        self.capacity, self.batch_rows, self.rng = capacity, batch_rows, rng
        self.held: Arrays | None = None

    def __len__(self) -> int:
        return 0 if self.held is None else len(next(iter(self.held.values())))

    def add(self, rows: Arrays) -> Iterator[Arrays]:
        """Add rows; yield the full batches that leave."""
        if self.held is None:
            self.held = dict(rows)
        else:
            self.held = {k: np.concatenate([v, rows[k]]) for k, v in self.held.items()}
        out = len(self) - self.capacity
        if out >= self.batch_rows:
            yield from self._take((out // self.batch_rows) * self.batch_rows)

    def drain(self) -> Iterator[Arrays]:
        """Yield every row left, shuffled, in batches (the last one possibly short)."""
        if len(self):
            yield from self._take(len(self))

    def _take(self, n: int) -> Iterator[Arrays]:
        assert self.held is not None
        order = self.rng.permutation(len(self))
        held = {k: v[order] for k, v in self.held.items()}
        self.held = {k: v[n:] for k, v in held.items()}
        for start in range(0, n, self.batch_rows):
            stop = min(start + self.batch_rows, n)
            yield {k: v[start:stop] for k, v in held.items()}


def epoch_batches(
    source: ParquetSource,
    encode: Callable[[pd.DataFrame], Arrays],
    *,
    seed: int,
    epoch: int,
    valid_fraction: float,
    test_fraction: float,
    buffer_rows: int,
    batch_rows: int,
) -> Iterator[Arrays]:
    """One epoch of shuffled training batches of ``source``.

    Row groups come in an order drawn from (``seed``, ``epoch``); each one's training
    rows are encoded (``encode``: rows -> arrays) and go through a :class:`ShuffleBuffer`
    of ``buffer_rows``. Each batch also holds "row": (B,) int64 the rows' numbers. The
    same (seed, epoch) gives the same batches.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])
    buffer = ShuffleBuffer(buffer_rows, batch_rows, rng)
    for group in source.ordered(int(rng.integers(2**31))):
        chunk = source.read(group)
        codes = split_codes(chunk.index.to_numpy(), seed, valid_fraction, test_fraction)
        train = chunk[codes == 0]
        if not len(train):
            continue
        arrays = encode(train)
        arrays["row"] = train.index.to_numpy(dtype=np.int64)
        yield from buffer.add(arrays)
    yield from buffer.drain()


def train_batch_count(train_rows: int, batch_rows: int) -> int:
    """Batches in one epoch of :func:`epoch_batches` over ``train_rows`` rows: every batch
    is full but the last."""
    return -(-train_rows // batch_rows)
