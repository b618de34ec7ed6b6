"""The analyzer: tokenization, case folding, stop words, stemming, configuration."""

from __future__ import annotations

import pytest

from shards.index.analyzer import Analyzer, AnalyzerConfig


def test_default_analyzer_folds_case_drops_stop_words_and_stems() -> None:
    """Lowercase + Lucene English stop words + Snowball English (Porter2) stems."""
    assert Analyzer().terms("The Running of the Dogs is not Easy") == ["run", "dog", "easi"]


def test_tokenization_is_unicode_aware_and_splits_identifiers() -> None:
    """Letters of any script and digits form tokens; underscores and punctuation split them."""
    config = AnalyzerConfig(stemmer="none", stop_words="none")
    assert Analyzer(config).terms("Ünïcödé naïve café, 東京 make_archive 3.14") == [
        "ünïcödé", "naïve", "café", "東京", "make", "archive", "3", "14",
    ]  # fmt: skip


def test_casefold_matches_german_sharp_s() -> None:
    """Case folding (not just lower()) makes "STRASSE" and "straße" the same term."""
    analyzer = Analyzer(AnalyzerConfig(stemmer="none"))
    assert analyzer.terms("STRASSE") == analyzer.terms("straße")


def test_possessive_is_dropped() -> None:
    """ "rat's" indexes as "rat", as Lucene's English analyzer does."""
    assert Analyzer(AnalyzerConfig(stemmer="none")).terms("the rat's tail") == ["rat", "tail"]


def test_everything_can_be_turned_off() -> None:
    """No lowercasing, no stop words, no stemmer: tokens come back as written."""
    config = AnalyzerConfig(lowercase=False, stop_words="none", stemmer="none")
    assert Analyzer(config).terms("The Cats") == ["The", "Cats"]


def test_token_length_bounds_drop_short_and_long_tokens() -> None:
    """Tokens outside [min_token_chars, max_token_chars] are dropped."""
    config = AnalyzerConfig(stemmer="none", stop_words="none", min_token_chars=2, max_token_chars=4)
    assert Analyzer(config).terms("a bb cccc ddddd") == ["bb", "cccc"]


@pytest.mark.parametrize(
    "kwargs",
    [{"stemmer": "klingon"}, {"stop_words": "all"}, {"min_token_chars": 0},
     {"min_token_chars": 5, "max_token_chars": 4}],
)  # fmt: skip
def test_bad_settings_are_rejected(kwargs: dict[str, object]) -> None:
    """Unknown stemmers or stop lists and impossible length bounds raise ValueError."""
    with pytest.raises(ValueError, match=r"stemmer|stop word|token length"):
        AnalyzerConfig(**kwargs)  # type: ignore[arg-type]


def test_settings_round_trip_through_a_dict() -> None:
    """to_dict/from_dict give back equal settings; unknown keys are refused."""
    config = AnalyzerConfig(lowercase=False, stemmer="porter", max_token_chars=20)
    assert AnalyzerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown analyzer settings: colour"):
        AnalyzerConfig.from_dict({"colour": "red"})
