"""Symbol-level vocabularies: one token per character.

Every task's text is written with single-character symbols, so a string maps
to token ids one character at a time. Ids 0-3 are the same in every
vocabulary: ``PAD=0``, ``BOS=1``, ``EOS=2`` and the step delimiter ``"\\n"=3``.

* :data:`ARITH_VOCAB`, shared by ``arithmetic``, ``countdown`` and ``game24``
  (so one model can be trained on all three)::

    0 <pad>  1 <bos>  2 <eos>  3 "\\n"  4-13 "0".."9"
    14 "+"  15 "-"  16 "*"  17 "/"  18 "="  19 "("  20 ")"  21 " "  22 ":"

* :data:`CONNECT_FOUR_VOCAB`: the four shared ids, then ``"0".."6"`` (ids
  4-10), one move token per column (pgx action ``a`` is token ``4 + a``).

``encode`` never adds BOS/EOS; specials have no character and are rendered by
``decode`` as ``<bos>``/``<eos>``, PAD is dropped.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PAD = 0
BOS = 1
EOS = 2
NEWLINE = 3
_SPECIALS = ("<pad>", "<bos>", "<eos>", "\n")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """A character-level vocabulary.

  Attributes:
    symbols: the symbol of each id; ids 0-2 are ``<pad>``, ``<bos>``,
      ``<eos>``, id 3 is ``"\\n"``, every other symbol is one character.
  """
  symbols: tuple[str, ...]

  def __post_init__(self):
    if self.symbols[:4] != _SPECIALS:
      raise ValueError(f"A vocabulary must start with {_SPECIALS}.")
    chars = self.symbols[3:]
    if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
      raise ValueError("Non-special symbols must be distinct characters.")

  @property
  def size(self) -> int:
    return len(self.symbols)

  def id(self, symbol: str) -> int:
    """The id of one symbol (a character or a special name)."""
    try:
      return self.symbols.index(symbol)
    except ValueError:
      raise ValueError(
          f"Symbol {symbol!r} is not in the vocabulary {self.symbols}.") from None

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``, one per character (no BOS/EOS added)."""
    table = {c: i for i, c in enumerate(self.symbols) if i >= NEWLINE}
    ids = []
    for pos, c in enumerate(text):
      if c not in table:
        raise ValueError(
            f"Character {c!r} at position {pos} of {text!r} is not in the "
            f"vocabulary; allowed characters: {''.join(self.symbols[3:])!r}.")
      ids.append(table[c])
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of ``ids``; PAD is dropped, BOS/EOS become ``<bos>``/``<eos>``."""
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i < self.size:
        raise ValueError(f"Token id {i} is outside the vocabulary [0, {self.size}).")
      if i != PAD:
        out.append(self.symbols[i])
    return "".join(out)


ARITH_VOCAB = Vocabulary(_SPECIALS + tuple("0123456789") + tuple("+-*/=() :"))
CONNECT_FOUR_VOCAB = Vocabulary(_SPECIALS + tuple("0123456"))

DIGIT0 = ARITH_VOCAB.id("0")  # digits are DIGIT0 .. DIGIT0 + 9
PLUS, MINUS, TIMES, DIVIDE = (ARITH_VOCAB.id(c) for c in "+-*/")
EQUALS, LPAREN, RPAREN, SPACE, COLON = (ARITH_VOCAB.id(c) for c in "=() :")
