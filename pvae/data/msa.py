"""Multiple sequence alignments of protein families: reading, sequence weights, splits.

A protein family's alignment (A2M / aligned FASTA, as made by jackhmmer or
HHblits and used by DeepSequence and EVE) holds one record per sequence; the
first is the *focus* (wild-type) sequence. Its upper-case letters and ``-``
mark the aligned focus columns; lower-case letters and ``.`` are insertions
relative to it, which models drop. :func:`load_msa` keeps the focus columns,
codes them over :data:`ALPHABET` (20 amino acids, then the gap) and weighs
each sequence by the inverse size of its neighbourhood:

.. math::

    w_i = \\frac{1}{\\#\\{j : \\mathrm{id}(i, j) > \\theta\\}}, \\qquad
    \\mathrm{id}(i, j) = \\frac{\\#\\{l : a_{il} = a_{jl} \\ne \\text{gap}\\}}
        {\\#\\{l : a_{il} \\ne \\text{gap}\\}},

(``j = i`` included, :math:`\\theta = 0.8`), so that a cluster of
near-identical sequences counts about once. The effective family size is
:math:`N_\\text{eff} = \\sum_i w_i`. Identities are counted by matrix products
of one-hot blocks, so memory grows with the block size, not with
:math:`N^2`.

References

1. A. J. Riesselman, J. B. Ingraham, D. S. Marks. Deep generative models of
   genetic variation capture the effects of mutations. Nature Methods 15, 2018
   (DeepSequence; the weights and the weighted ELBO).
2. J. Frazer et al. Disease variant prediction with deep generative models of
   evolutionary data. Nature 599, 2021 (EVE; the focus-column convention and
   the p53 alignment in ``shared/data/proteins``).
3. R. Hopf et al. Mutation effects predicted from sequence co-variation.
   Nature Biotechnology 35, 2017 (the site-independent model as the baseline).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from ..inputs import DataError

__all__ = [
    "ALPHABET",
    "AMINO_ACIDS",
    "GAP",
    "MSA",
    "decode_sequences",
    "encode_sequences",
    "load_msa",
    "msa_split",
    "nearest_identity",
    "sequence_weights",
]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
GAP = "-"
ALPHABET = AMINO_ACIDS + GAP
#: IUPAC letters for ambiguous or rare residues (X any, B D/N, Z E/Q, J I/L, U selenocysteine,
#: O pyrrolysine): real alignments hold a few; they are not amino acids of the alphabet
NONSTANDARD = "BJOUXZ"
_GAP_CODE = len(AMINO_ACIDS)
_HEADER_RANGE = re.compile(r"/(\d+)-(\d+)\s*$")
#: rows of one-hot sequences per block of the identity products (see :func:`_identity_blocks`)
BLOCK_ROWS = 2048


@dataclass(frozen=True, eq=False)
class MSA:
    """A protein family's alignment, reduced to its focus columns.

    :ivar torch.Tensor codes: ``(n, L)`` int64 codes over :data:`ALPHABET`
        (0..19 amino acids, 20 the gap); row 0 is the focus sequence.
    :ivar torch.Tensor weights: ``(n,)`` float32 sequence weights (see the module).
    :ivar tuple names: the record names (the header without ``>``).
    :ivar str focus_sequence: the focus record's residues, all of them (focus
        and insert columns, upper case), numbered from ``start``.
    :ivar int start: the number of the focus sequence's first residue (the
        ``/start-end`` of its header; 1 without one).
    :ivar torch.Tensor positions: ``(L,)`` int64 residue number of the focus
        sequence at each focus column (-1 where it has a gap).
    :ivar float threshold: the identity threshold of the weights.
    """

    codes: torch.Tensor
    weights: torch.Tensor
    names: tuple[str, ...]
    focus_sequence: str
    start: int
    positions: torch.Tensor
    threshold: float

    alphabet = ALPHABET

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    @property
    def length(self) -> int:
        """Focus columns, L."""
        return int(self.codes.shape[1])

    @property
    def effective_size(self) -> float:
        """:math:`N_\\text{eff} = \\sum_i w_i`."""
        return float(self.weights.sum())

    @property
    def wild_type(self) -> torch.Tensor:
        """``(L,)`` codes of the focus sequence at the focus columns."""
        return self.codes[0]

    def onehot(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(n, L, 21)`` one-hot codes."""
        return torch.nn.functional.one_hot(self.codes, len(ALPHABET)).to(dtype)

    def subset(self, index: Sequence[int] | torch.Tensor, reweight: bool = False) -> "MSA":
        """The records ``index`` (keep the focus sequence first to keep the meaning of row 0).

        :param index: row indices or a bool mask.
        :param bool reweight: recompute the weights within the subset (a training
            split's neighbourhoods); default False keeps the family's weights.
        """
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(-1)
        codes = self.codes[index]
        weights = sequence_weights(codes, self.threshold) if reweight else self.weights[index]
        names = tuple(self.names[int(i)] for i in index)
        return MSA(codes, weights, names, self.focus_sequence, self.start, self.positions, self.threshold)


def _read_records(file: Path) -> list[tuple[str, str]]:
    records: list[tuple[str, list[str]]] = []
    with open(file, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                records.append((line[1:].strip(), []))
            elif not records:
                raise DataError(
                    f"{file}, line {line_no}: sequence text before the first '>' header. "
                    "Try an A2M / aligned FASTA file whose first line is the focus sequence's header."
                )
            else:
                records[-1][1].append(line)
    if not records:
        raise DataError(f"{file} holds no '>' records. Try an A2M / aligned FASTA file.")
    return [(name, "".join(parts)) for name, parts in records]


def _code_table(nonstandard: str) -> np.ndarray:
    """Byte -> code: amino acids (either case) 0..19, ``-`` and ``.`` the gap,
    non-standard letters -2 (or the gap); the reader rejects any other byte first."""
    table = np.full(256, -1, dtype=np.int64)
    for i, letter in enumerate(AMINO_ACIDS):
        table[ord(letter)] = table[ord(letter.lower())] = i
    table[ord(GAP)] = table[ord(".")] = _GAP_CODE
    for letter in NONSTANDARD:
        table[ord(letter)] = table[ord(letter.lower())] = _GAP_CODE if nonstandard == "gap" else -2
    return table


def load_msa(
    path: str | os.PathLike,
    threshold: float = 0.8,
    nonstandard: Literal["drop", "gap", "error"] = "drop",
    weights: bool = True,
) -> MSA:
    """Read an A2M / aligned FASTA alignment and weigh its sequences.

    Focus columns are those where the first record has an upper-case letter or
    ``-``; lower-case letters and ``.`` there are insertions and are dropped
    from every record. Every record must have the first one's length (A2M as
    written by EVE's and DeepSequence's pipelines, insert columns included).

    :param path: the alignment file.
    :param float threshold: identity threshold of the sequence weights
        (neighbours have identity strictly above it). Default 0.8.
    :param str nonstandard: what to do with IUPAC letters outside the 20 amino
        acids (``X``, ``B``, ``Z``, ``J``, ``U``, ``O``) in a focus column:
        ``"drop"`` the record (as EVE does; default), read them as a ``"gap"``,
        or raise an ``"error"``. Any other character is always an error.
    :param bool weights: compute the weights; False gives weight 1 each
        (for large alignments read only for their columns). Default True.
    :returns: :class:`MSA`.
    :raises FileNotFoundError: if the file is missing.
    :raises DataError: on no records, a record of another length (ragged rows),
        a character other than a letter, ``-`` or ``.``, an empty or all-gap
        focus sequence, or no focus column,
        naming the record.
    """
    if nonstandard not in ("drop", "gap", "error"):
        raise ValueError(f"nonstandard must be 'drop', 'gap' or 'error', got {nonstandard!r}.")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"alignment file not found: {file}. Try the path of an A2M file.")
    try:
        records = _read_records(file)
    except UnicodeDecodeError as err:
        raise DataError(f"{file} is not a text alignment ({err}). Try an A2M / aligned FASTA file.") from None
    focus_name, focus = records[0]
    if not focus:
        raise DataError(f"{file}: the first record ({focus_name!r}) has no sequence; it must be the focus sequence.")
    width = len(focus)
    for k, (name, seq) in enumerate(records):
        if len(seq) != width:
            raise DataError(
                f"{file}: record {k + 1} ({name!r}) has {len(seq)} alignment columns, the first record "
                f"{width}. Try an alignment whose rows all have the same length (A2M with insert columns kept)."
            )
    raw = np.frombuffer("".join(seq for _, seq in records).encode("ascii", "replace"), dtype=np.uint8)
    raw = raw.reshape(len(records), width)
    focus_bytes = raw[0]
    letter = ((raw | 0x20) >= ord("a")) & ((raw | 0x20) <= ord("z"))
    stray = ~(letter | (raw == ord(GAP)) | (raw == ord(".")))
    if stray.any():
        row, col = (int(i) for i in np.argwhere(stray)[0])
        raise DataError(
            f"{file}: record {row + 1} ({records[row][0]!r}) has {chr(raw[row, col])!r} in alignment column "
            f"{col + 1}, not a letter, '-' or '.'. Try an A2M / aligned FASTA file (letters, '-' and '.' only)."
        )
    columns = np.flatnonzero(((focus_bytes >= ord("A")) & (focus_bytes <= ord("Z"))) | (focus_bytes == ord(GAP)))
    if columns.size == 0:
        raise DataError(f"{file}: the first record has no upper-case or '-' column, so no focus column.")
    if (focus_bytes[columns] == ord(GAP)).all():
        raise DataError(
            f"{file}: the first record ({focus_name!r}) has only gaps in its focus columns; it must be the "
            "focus sequence (the wild type). Try an alignment whose first record is the query."
        )
    codes = _code_table(nonstandard)[raw[:, columns]]
    odd = codes == -2
    if odd.any():
        if nonstandard == "error" or odd[0].any():
            row, col = (int(i) for i in np.argwhere(odd)[0])
            raise DataError(
                f"{file}: record {row + 1} ({records[row][0]!r}) has the non-standard residue "
                f"{chr(raw[row, columns[col]])!r} in focus column {col + 1}. Try nonstandard='drop' "
                "(drop such records) or nonstandard='gap'."
            )
        keep = ~odd.any(1)
        codes, records = codes[keep], [r for r, k in zip(records, keep) if k]
    residues = "".join(ch for ch in focus if ch not in "-.").upper()
    match = _HEADER_RANGE.search(focus_name)
    start = int(match.group(1)) if match else 1
    is_residue = np.array([ch not in "-." for ch in focus])
    numbers = np.cumsum(is_residue) - 1 + start
    positions = np.where(is_residue[columns], numbers[columns], -1)
    codes_t = torch.from_numpy(np.ascontiguousarray(codes))
    w = sequence_weights(codes_t, threshold) if weights else torch.ones(len(codes_t))
    return MSA(
        codes_t, w, tuple(name for name, _ in records), residues, start,
        torch.from_numpy(positions.astype(np.int64)), float(threshold),
    )


def encode_sequences(sequences: Sequence[str]) -> torch.Tensor:
    """Code strings of equal length over :data:`ALPHABET`: ``(n, L)`` int64.

    :raises DataError: on unequal lengths or a letter outside the alphabet.
    """
    sequences = list(sequences)
    if not sequences or len({len(s) for s in sequences}) != 1:
        raise DataError(
            f"sequences must be a non-empty list of strings of one length, got lengths "
            f"{sorted({len(s) for s in sequences})}."
        )
    table = _code_table("error")
    table[ord(".")] = -1
    raw = np.frombuffer("".join(s.upper() for s in sequences).encode("ascii", "replace"), dtype=np.uint8)
    codes = table[raw].reshape(len(sequences), -1)
    if (codes < 0).any():
        row, col = (int(i) for i in np.argwhere(codes < 0)[0])
        raise DataError(
            f"sequence {row} has {sequences[row][col]!r} at position {col + 1}, not in the alphabet {ALPHABET!r}."
        )
    return torch.from_numpy(codes)


def decode_sequences(codes: torch.Tensor) -> list[str]:
    """``(n, L)`` codes as strings over :data:`ALPHABET`."""
    letters = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)
    return [row.tobytes().decode() for row in letters[np.asarray(codes.cpu(), dtype=np.int64)]]


def _residue_onehot(codes: torch.Tensor) -> torch.Tensor:
    """``(n, L * 20)`` float32 one-hot of the amino acids (a gap is all zeros)."""
    return torch.nn.functional.one_hot(codes, len(ALPHABET))[..., :_GAP_CODE].flatten(1).float()


def _identity_blocks(
    queries: torch.Tensor, references: torch.Tensor, block_rows: int = BLOCK_ROWS
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Identities of queries to references, one ``(block, block)`` tile at a time.

    Yields ``(query rows, reference rows, identity)`` with identity
    :math:`\\mathrm{id}(i, j)` relative to the query's residues (0 for a query
    of gaps only).
    """
    q_len = (queries != _GAP_CODE).sum(1).clamp(min=1).double()
    for i in range(0, len(queries), block_rows):
        rows = slice(i, i + block_rows)
        q = _residue_onehot(queries[rows])
        for j in range(0, len(references), block_rows):
            # rebuilt per tile: block_rows x L one-hot writes against block_rows**2 x L products
            cols = slice(j, j + block_rows)
            r = _residue_onehot(references[cols])
            # exact integer counts in float32; the ratio in float64 so that 8/10 is not above 0.8
            yield rows, cols, (q @ r.T).double() / q_len[rows, None]


def sequence_weights(codes: torch.Tensor, threshold: float = 0.8, block_rows: int = BLOCK_ROWS) -> torch.Tensor:
    """DeepSequence's weights: one over the number of sequences within ``threshold`` identity.

    :param torch.Tensor codes: ``(n, L)`` int64 codes over :data:`ALPHABET`.
    :param float threshold: neighbours have identity strictly above it. Default 0.8.
    :param int block_rows: rows per one-hot block (memory ~ ``2 * block_rows * L * 20 * 4`` bytes
        plus ``block_rows**2`` for a tile).
    :returns: ``(n,)`` float32; 0 for a sequence of gaps only (as EVE).
    """
    counts = torch.zeros(len(codes))
    for rows, _, identity in _identity_blocks(codes, codes, block_rows):
        counts[rows] += (identity > threshold).sum(1)
    empty = (codes != _GAP_CODE).sum(1) == 0
    return torch.where(empty, torch.zeros_like(counts), 1.0 / counts.clamp(min=1))


def nearest_identity(
    queries: torch.Tensor, references: torch.Tensor, block_rows: int = BLOCK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity of each query to its nearest reference, and that reference's index.

    :param torch.Tensor queries: ``(m, L)`` codes.
    :param torch.Tensor references: ``(n, L)`` codes.
    :returns: ``(identity, index)``, each ``(m,)``; identity relative to the query's residues.
    """
    best = torch.full((len(queries),), -1.0, dtype=torch.float64)
    index = torch.zeros(len(queries), dtype=torch.int64)
    for rows, cols, identity in _identity_blocks(queries, references, block_rows):
        value, arg = identity.max(1)
        better = value > best[rows]
        best[rows] = torch.where(better, value, best[rows])
        index[rows] = torch.where(better, arg + cols.start, index[rows])
    return best, index


def _clusters(codes: torch.Tensor, threshold: float, block_rows: int) -> np.ndarray:
    """Connected components of 'identity above threshold, either way' (single linkage)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = [], []
    for r, c, identity in _identity_blocks(codes, codes, block_rows):
        i, j = (identity > threshold).nonzero(as_tuple=True)
        rows.append((i + r.start).numpy())
        cols.append((j + c.start).numpy())
    i, j = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(codes),) * 2)
    return connected_components(graph, directed=False)[1]


def msa_split(
    msa: MSA,
    test_fraction: float = 0.1,
    kind: Literal["random", "distant"] = "random",
    seed: int = 0,
    block_rows: int = BLOCK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an alignment's records into training and held-out indices.

    ``"random"``: a random ``test_fraction`` of the records. ``"distant"``:
    whole clusters (connected components of the graph linking records whose
    identity exceeds ``msa.threshold`` in either direction), drawn in random
    order until ``test_fraction`` of the records are held out, so that no
    training record is within the threshold of a held-out one. The focus
    sequence (row 0), and in ``"distant"`` its cluster, stay in training.

    :returns: ``(train, test)`` sorted int64 index tensors.
    :raises ValueError: on a fraction outside (0, 1), or when the clusters
        other than the focus sequence's hold fewer than ``test_fraction`` of the records.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if kind not in ("random", "distant"):
        raise ValueError(f"kind must be 'random' or 'distant', got {kind!r}.")
    n = len(msa)
    target = max(1, round(test_fraction * n))
    rng = np.random.default_rng(seed)
    test = np.zeros(n, dtype=bool)
    if kind == "random":
        test[1 + rng.permutation(n - 1)[:target]] = True
    else:
        labels = _clusters(msa.codes, msa.threshold, block_rows)
        order = rng.permutation(labels.max() + 1)
        sizes = np.bincount(labels)
        taken = np.cumsum(np.where(order == labels[0], 0, sizes[order]))
        if taken[-1] < target:
            raise ValueError(
                f"the clusters outside the focus sequence's hold {taken[-1]} of {n} records, fewer than "
                f"test_fraction={test_fraction}. Try a smaller test_fraction or kind='random'."
            )
        chosen = order[: int(np.searchsorted(taken, target)) + 1]
        test = np.isin(labels, chosen[chosen != labels[0]])
    index = torch.arange(n)
    return index[torch.from_numpy(~test)], index[torch.from_numpy(test)]
