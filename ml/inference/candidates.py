"""Every read's candidates from the model's batched pass, held compactly.

The simulator's ML arm and training's replays take the model's candidates for every read of a log
(``predict_streams``). As a list of (key, score) tuples per read they cost about 900 bytes a read
in Python objects: the 8.9 million judged reads of P6 (12.7M reads) grew the pass past 15 GB on a
24 GB machine before it ended. Here they are two arrays, a code into a table of names and a score
per candidate (12 bytes each), and a read's list is built when it is asked for (about a
microsecond), so the same arrays serve every replay of the log, in forked workers too (NumPy
arrays are not touched page by page by reference counts, as a list of tuples is).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

NONE = -1  # (a code: no candidate in this slot)


class Candidates:
    """Up to ``k`` (key, score) candidates for each of ``n`` reads, best first, as ``codes`` into
    ``names`` (the log's key names, then every other key a candidate named) and ``scores``
    (float64, as the composer computes them). ``cands[i]`` is read i's list."""

    def __init__(self, n: int, k: int, names: Sequence[str]) -> None:
        self.codes = np.full((n, k), NONE, np.int32)
        self.scores = np.zeros((n, k), np.float64)
        self.names = list(names)
        self.code_of = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> list[tuple[str, float]]:
        names = self.names
        return [
            (names[c], s)
            for c, s in zip(self.codes[i].tolist(), self.scores[i].tolist(), strict=True)
            if c != NONE
        ]

    def __iter__(self) -> Iterator[list[tuple[str, float]]]:
        for i in range(len(self)):
            yield self[i]

    def fill(self, reads: Sequence[int], lists: Sequence[Sequence[tuple[str, float]]]) -> None:
        """Set the lists of ``reads`` (each at most ``k`` long), in one assignment per array."""
        k = self.codes.shape[1]
        codes = np.full((len(reads), k), NONE, np.int32)
        scores = np.zeros((len(reads), k), np.float64)
        code_of, names = self.code_of, self.names
        for row, got in enumerate(lists):
            if len(got) > k:
                raise ValueError(f"a read has {len(got)} candidates, more than the {k} this holds")
            for j, (key, score) in enumerate(got):
                code = code_of.get(key)
                if code is None:
                    code = code_of[key] = len(names)
                    names.append(key)
                codes[row, j] = code
                scores[row, j] = score
        at = np.asarray(reads, np.int64)
        self.codes[at] = codes
        self.scores[at] = scores

    def take(self, idx: np.ndarray) -> Candidates:
        """The lists of the reads ``idx``, in that order (sharing the table of names)."""
        out = Candidates.__new__(Candidates)
        out.codes, out.scores = self.codes[idx], self.scores[idx]
        out.names, out.code_of = self.names, self.code_of
        return out
