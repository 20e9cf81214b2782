"""Molecules as token sequences: SMILES files, SMILES and SELFIES tokenisers,
fixed-length integer codes.

A molecule string is split into tokens (SMILES: multi-character atoms such as
``Cl``, ``Br``, bracket atoms such as ``[nH]`` or ``[C@@H]``, ring-closure
digits and ``%nn``, bonds and branches, by the regular expression of Schwaller
et al. [1]; SELFIES: its bracketed symbols [2], through the ``selfies``
package), and coded over a vocabulary learned from training strings. A coding
has a fixed length :math:`L`: the tokens, then the end token ``<end>`` (code 0)
in every remaining position, at least once. The categorical sequence programs
(:class:`pvae.models.SequenceVAE`) model all :math:`L` positions, so a molecule's
length is part of what they learn, as in Gomez-Bombarelli et al. [3] (who pad
with spaces); decoding cuts at the first end token.

References

1. P. Schwaller et al. Molecular Transformer: A Model for Uncertainty-Calibrated
   Chemical Reaction Prediction. ACS Central Science 5, 2019.
2. M. Krenn et al. Self-referencing embedded strings (SELFIES): A 100% robust
   molecular string representation. Machine Learning: Science and Technology 1, 2020.
3. R. Gomez-Bombarelli et al. Automatic Chemical Design Using a Data-Driven
   Continuous Representation of Molecules. ACS Central Science 4, 2018.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from ..inputs import DataError, DataTypeError
from ._deps import require

__all__ = ["END_TOKEN", "SMILES_PATTERN", "MoleculeTokenizer", "load_smiles"]

#: the end token: code 0, written after the last token into every remaining position
END_TOKEN = "<end>"

#: SMILES tokens (Schwaller et al. 2019): bracket atoms, two-letter halogens, organic-subset
#: atoms, bonds, branches, ring closures (one digit, or % and two)
SMILES_PATTERN = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)

Kind = Literal["smiles", "selfies"]


def _is_smiles_text(text: str) -> bool:
    """Whether ``text`` is a run of SMILES tokens (every valid SMILES is; a column name rarely is)."""
    return bool(text) and "".join(SMILES_PATTERN.findall(text)) == text


def load_smiles(path: str | os.PathLike, limit: int | None = None, column: str = "SMILES") -> list[str]:
    """Read SMILES strings from a text or CSV file, gzip or plain (MOSES's
    ``train.csv.gz``: a ``SMILES`` header, one molecule a line).

    The file is UTF-8, with or without a byte-order mark. The first line is a
    header when one of its fields is ``column``, compared without case and
    surrounding spaces (``SMILES``, ``smiles``, ``Smiles``); the molecules are
    then that column (other columns, e.g. MOSES's ``SPLIT``, are ignored).
    Without such a header every line's first field is a molecule, and a first
    line of several fields must be a header. A one-field first line is a
    molecule unless it names ``column``: a first line that is not a string of
    SMILES tokens (e.g. a header ``smi`` with the default ``column``) is kept,
    with a warning that says to pass ``column=`` if it is a header; a file of
    molecules never loses its first one. Blank lines are skipped; strings are
    not parsed (RDKit, not this loader, says which molecules are valid).

    :param path: the file (``.gz`` is decompressed).
    :param int limit: read at most this many molecules (the first ones). Default all.
    :param str column: the header of the SMILES column, any case. Default ``"SMILES"``.
    :returns: a list of strings.
    :raises FileNotFoundError: naming the path.
    :raises DataError: for a file without any molecule or a header without ``column``.
    """
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SMILES file at {str(file)!r}. Pass the path of e.g. MOSES's train.csv.gz.")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", newline="", encoding="utf-8-sig") as handle:
        rows = (row for row in csv.reader(handle) if row and row[0].strip())
        first = next(rows, [])
        names = [field.strip().casefold() for field in first]
        if column.strip().casefold() in names:
            index = names.index(column.strip().casefold())
        elif len(first) > 1:
            raise DataError(f"{file}: the header {first} has no column {column!r}. Try column=...")
        else:
            if first and not _is_smiles_text(first[0].strip()):
                warnings.warn(
                    f"{file}: the first line {first[0].strip()!r} is not a SMILES string but is read as a "
                    f"molecule; if it is a header, try column={first[0].strip()!r}.", stacklevel=2)
            index, rows = 0, itertools.chain([first], rows)
        smiles = [row[index].strip() for row in itertools.islice((r for r in rows if len(r) > index), limit)]
    if not smiles:
        raise DataError(f"{file} holds no SMILES strings.")
    return smiles


def _check_strings(strings: Sequence[str], name: str) -> list[str]:
    if isinstance(strings, str):
        raise DataTypeError(f"{name} must be a sequence of strings, got one string. Try [{strings[:20]!r}].")
    strings = list(strings)
    if not strings:
        raise DataError(f"{name} is empty: give at least one molecule.")
    bad = next((i for i, s in enumerate(strings) if not isinstance(s, str)), None)
    if bad is not None:
        raise DataTypeError(f"{name}[{bad}] must be a string, got {type(strings[bad]).__name__}.")
    return strings


@dataclass(frozen=True)
class MoleculeTokenizer:
    """Codes molecule strings as fixed-length integer sequences and back.

    Build one from training molecules with :meth:`fit`; ``kind="selfies"``
    translates SMILES to SELFIES first (so :meth:`encode` always takes SMILES,
    and :meth:`decode` always returns SMILES: a SELFIES token sequence decodes
    to a molecule whatever it is, the property that makes SELFIES "100%
    robust"; RDKit, not this class, says whether a SMILES is valid).

    :param str kind: ``"smiles"`` or ``"selfies"``.
    :param tokens: the vocabulary, ``tokens[0]`` the end token.
    :param int length: positions of a coding: the longest training molecule's
        tokens plus one end token.
    """

    kind: Kind
    tokens: tuple[str, ...]
    length: int

    @classmethod
    def fit(cls, smiles: Sequence[str], kind: Kind = "smiles", length: int | None = None) -> "MoleculeTokenizer":
        """Learn the vocabulary (sorted, end token first) and the coding length.

        :param smiles: training molecules as SMILES.
        :param str kind: ``"smiles"`` or ``"selfies"``. Default ``"smiles"``.
        :param int length: positions of a coding; default the longest molecule's
            token count plus one. A larger value leaves room for longer molecules.
        :raises DataError: for empty input, or a ``length`` too short for a molecule.
        """
        if kind not in ("smiles", "selfies"):
            raise ValueError(f"kind must be 'smiles' or 'selfies', got {kind!r}.")
        split = cls(kind, (END_TOKEN,), 2).tokenize(_check_strings(smiles, "smiles"))
        longest = max(len(t) for t in split)
        if length is None:
            length = longest + 1
        elif length < longest + 1:
            raise DataError(f"length={length} is too short: the longest molecule has {longest} tokens and the "
                            f"coding needs one end token. Try length={longest + 1} or more.")
        vocabulary = sorted({token for tokens in split for token in tokens})
        return cls(kind, (END_TOKEN, *vocabulary), int(length))

    @property
    def vocab_size(self) -> int:
        """Codes in use: the vocabulary with the end token (a model's ``alphabet_size``)."""
        return len(self.tokens)

    def tokenize(self, smiles: Sequence[str]) -> list[list[str]]:
        """Split each SMILES into tokens of this tokeniser's kind.

        :raises DataError: for a string that is not made of SMILES tokens
            (characters the pattern cannot read), or that SELFIES cannot translate.
        """
        smiles = _check_strings(smiles, "smiles")
        if self.kind == "selfies":
            sf = require("selfies")
            out = []
            for i, s in enumerate(smiles):
                try:
                    out.append(list(sf.split_selfies(sf.encoder(s))))
                except sf.EncoderError as err:
                    raise DataError(f"smiles[{i}] = {s!r} cannot be written as SELFIES: {err}") from None
            return out
        out = []
        for i, s in enumerate(smiles):
            tokens = SMILES_PATTERN.findall(s)
            if "".join(tokens) != s:
                pos = next(j for j, (a, b) in enumerate(zip("".join(tokens) + "\0", s)) if a != b)
                raise DataError(f"smiles[{i}] = {s!r} has a character SMILES does not use at position {pos} "
                                f"({s[pos]!r}).")
            out.append(tokens)
        return out

    def encode(self, smiles: Sequence[str]) -> torch.Tensor:
        """Code SMILES as ``(n, length)`` int64: token codes, then the end token (0).

        :raises DataError: naming the molecule and token for a token outside the
            vocabulary, or a molecule longer than ``length - 1`` tokens.
        """
        index = {token: code for code, token in enumerate(self.tokens)}
        split = self.tokenize(smiles)
        codes = torch.zeros(len(split), self.length, dtype=torch.long)
        for i, tokens in enumerate(split):
            if len(tokens) >= self.length:
                raise DataError(f"molecule {i} ({smiles[i]!r}) has {len(tokens)} tokens; codings of this tokenizer "
                                f"hold {self.length - 1}. Try MoleculeTokenizer.fit(..., length={len(tokens) + 1}), "
                                "or drop it (see fits()).")
            unknown = [t for t in tokens if t not in index or t == END_TOKEN]
            if unknown:
                raise DataError(f"molecule {i} ({smiles[i]!r}) has the token {unknown[0]!r}, which is not in the "
                                f"vocabulary of {self.vocab_size} tokens. Fit the tokenizer on data that includes "
                                "it, or drop the molecule (see fits()).")
            codes[i, : len(tokens)] = torch.tensor([index[t] for t in tokens], dtype=torch.long)
        return codes

    def fits(self, smiles: Sequence[str]) -> list[bool]:
        """Whether each molecule can be coded: known tokens, at most ``length - 1`` of them."""
        known = set(self.tokens[1:])
        return [len(t) < self.length and set(t) <= known for t in self.tokenize(smiles)]

    def decode_tokens(self, codes: torch.Tensor) -> list[str]:
        """Codes to strings of this tokeniser's kind (SMILES or SELFIES), cut at the first end token.

        :param codes: ``(n, length)`` integer codes (or ``(length,)``).
        :raises DataError: for codes outside the vocabulary or of a float dtype.
        """
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dim() not in (1, 2):
            got = f"{codes.dtype} of shape {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes)
            raise DataTypeError(f"codes must be an integer tensor (n, length), got {got}.")
        codes = codes.reshape(-1, codes.shape[-1]).cpu()
        if len(codes) and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise DataError(f"codes must lie in 0..{self.vocab_size - 1}, got {int(codes.min())}..{int(codes.max())}.")
        ended = torch.cat([codes == 0, torch.ones(len(codes), 1, dtype=torch.bool)], dim=1)
        ends = ended.int().argmax(1).tolist()
        return ["".join(self.tokens[c] for c in row[:end]) for row, end in zip(codes.tolist(), ends)]

    def decode(self, codes: torch.Tensor) -> list[str]:
        """Codes to SMILES strings (SELFIES codings are translated with ``selfies.decoder``).

        A SMILES coding may decode to a string RDKit rejects; a SELFIES one
        always decodes to some molecule (an empty coding to ``""``).
        """
        strings = self.decode_tokens(codes)
        if self.kind == "smiles":
            return strings
        sf = require("selfies")
        return [sf.decoder(s) if s else "" for s in strings]

    def to_dict(self) -> dict:
        """The tokenizer as plain data (``MoleculeTokenizer(**d)`` rebuilds it)."""
        return {"kind": self.kind, "tokens": list(self.tokens), "length": self.length}

    def __post_init__(self) -> None:
        if self.kind not in ("smiles", "selfies"):
            raise ValueError(f"kind must be 'smiles' or 'selfies', got {self.kind!r}.")
        object.__setattr__(self, "tokens", tuple(self.tokens))
        if not self.tokens or self.tokens[0] != END_TOKEN:
            raise ValueError(f"tokens[0] must be the end token {END_TOKEN!r}.")
        if int(self.length) != self.length or self.length < 2:
            raise ValueError(f"length must be an integer >= 2, got {self.length!r}.")
