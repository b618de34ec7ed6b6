"""Text analysis: the one function that turns documents and queries into index terms.

The same :class:`Analyzer` (built from the :class:`AnalyzerConfig` recorded in an index's
manifest) analyzes documents at build time and queries at search time; an index opened with a
different analyzer would silently match nothing, so the manifest is the source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import Stemmer

__all__ = [
    "ENGLISH_STOP_WORDS",
    "STEMMER_LANGUAGES",
    "STOP_WORD_LISTS",
    "Analyzer",
    "AnalyzerConfig",
]

#: Lucene's classic English stop set (EnglishAnalyzer): short on purpose, because BM25's idf
#: already discounts common words and a long list hurts phrase-like scientific queries.
ENGLISH_STOP_WORDS = frozenset(
    """a an and are as at be but by for if in into is it no not of on or such that the their
    then there these they this to was will with""".split()
)

#: Stop word lists by name, as recorded in a manifest.
STOP_WORD_LISTS: Mapping[str, frozenset[str]] = {
    "english": ENGLISH_STOP_WORDS,
    "none": frozenset(),
}

#: Snowball stemmers PyStemmer provides (``"none"`` turns stemming off).
STEMMER_LANGUAGES = frozenset(Stemmer.algorithms()) | {"none"}

# Why this pattern: ``\w`` is Unicode-aware in Python 3 (letters and digits of every script),
# and excluding ``_`` splits identifiers such as ``make_archive`` into words a person would
# type. Apostrophes inside words are dropped with the possessive below rather than kept, as
# Lucene's English analyzer does ("rat's" -> "rat").
_TOKEN = re.compile(r"[^\W_]+")
_POSSESSIVE = re.compile(r"['\u2019][sS]\b")


@dataclass(frozen=True, slots=True)
class AnalyzerConfig:
    """How text becomes terms.

    ``lowercase`` folds case (``str.casefold``, so "Straße" matches "strasse");
    ``stop_words`` names a list in :data:`STOP_WORD_LISTS`; ``stemmer`` names a Snowball
    algorithm (``"english"`` is Porter2) or ``"none"``; tokens shorter than
    ``min_token_chars`` or longer than ``max_token_chars`` are dropped. Raises
    :class:`ValueError` for an unknown list or stemmer, or a bad length.
    """

    lowercase: bool = True
    stop_words: str = "english"
    stemmer: str = "english"
    min_token_chars: int = 1
    max_token_chars: int = 64

    def __post_init__(self) -> None:
        if self.stop_words not in STOP_WORD_LISTS:
            known = ", ".join(sorted(STOP_WORD_LISTS))
            raise ValueError(f"unknown stop word list {self.stop_words!r}; choose from {known}")
        if self.stemmer not in STEMMER_LANGUAGES:
            raise ValueError(f"unknown stemmer {self.stemmer!r}; e.g. english, porter, none")
        if not 1 <= self.min_token_chars <= self.max_token_chars:
            raise ValueError(
                "token length bounds must satisfy 1 <= min_token_chars <= max_token_chars, "
                f"got {self.min_token_chars}..{self.max_token_chars}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (the manifest's ``analyzer`` entry)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalyzerConfig:
        """Settings from a manifest entry; raises :class:`ValueError` on unknown keys."""
        known = {"lowercase", "stop_words", "stemmer", "min_token_chars", "max_token_chars"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown analyzer settings: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


class Analyzer:
    """Turns text into index terms: tokenize, fold case, drop stop words, stem.

    Instances are cheap to build but not thread-safe (PyStemmer's stemmer keeps a cache), so
    each thread that analyzes text should use its own; :meth:`terms` is the only entry point.
    """

    __slots__ = ("_stemmer", "_stop", "config")

    def __init__(self, config: AnalyzerConfig | None = None) -> None:
        self.config = config or AnalyzerConfig()
        self._stop = STOP_WORD_LISTS[self.config.stop_words]
        self._stemmer = (
            None if self.config.stemmer == "none" else Stemmer.Stemmer(self.config.stemmer)
        )

    def terms(self, text: str) -> list[str]:
        """The terms of ``text`` in order (duplicates kept: they are term frequencies)."""
        cfg = self.config
        if cfg.lowercase:
            text = text.casefold()
        text = _POSSESSIVE.sub("", text)
        lo, hi, stop = cfg.min_token_chars, cfg.max_token_chars, self._stop
        tokens = [t for t in _TOKEN.findall(text) if lo <= len(t) <= hi and t not in stop]
        if self._stemmer is None:
            return tokens
        stemmed: list[str] = self._stemmer.stemWords(tokens)
        return stemmed
