"""The quality filters (data.quality): per rule, a document that must be dropped (with the
reason) and one that must stay; C4's line removals are counted; the filters run inside
clean_batch, so they are counted into CleanStats as quality_<rule>."""

from __future__ import annotations

import pytest

from jaxgpt.config.data import DataConfig, QualityConfig
from jaxgpt.data import quality
from jaxgpt.data.clean import CleanStats
from jaxgpt.data.stages import RawBatch, clean_batch

# Plain English prose: 8 distinct sentences, one per line, 100+ words.
PROSE = "\n".join([
    "The river rose through the night and by morning the old bridge was under water.",
    "Farmers along the valley moved their animals to higher ground before the rain came.",
    "Officials said that the water would fall again within two days if the weather held.",
    "Schools in the lower town were closed and the children stayed at home with their parents.",
    "A small boat carried bread and milk to the houses that could not be reached by road.",
    "Engineers will inspect the bridge once the current has slowed and the banks are safe.",
    "Most of the shops on the main street have already cleaned their floors and opened again.",
    "People who lost power were asked to call the council, which has opened a shelter.",
])  # fmt: skip
RUSSIAN = (
    "Река поднималась всю ночь, и к утру старый мост оказался под водой. Фермеры в долине "
    "перегнали скот на возвышенность до начала дождя. Власти сообщили, что вода спадёт "
    "через два дня, если погода не изменится."
)


def run(text: str, **rules) -> tuple[str | None, str | None, CleanStats]:
    """(kept text or None, drop reason or None, stats) of one document under the rules."""
    check = quality.make_check(QualityConfig(**rules))
    stats = CleanStats()
    text, reason = check(text, stats)
    return (None if reason else text), reason, stats


def test_prose_passes_every_filter():
    kept, reason, stats = run(
        PROSE, gopher_repetition=True, gopher_quality=True, c4=True, fineweb=True, language=True
    )
    assert reason is None and kept == PROSE and not stats.lines_removed


def test_off_by_default():
    assert not QualityConfig().enabled and quality.make_check(QualityConfig()) is None


@pytest.mark.parametrize(
    "rule, text, why",
    [
        ("gopher_repetition", "\n\n".join(["Buy cheap watches online today."] * 20),
         "dup_paragraph_frac"),
        ("gopher_repetition", PROSE + "\n" + "\n".join([PROSE.split("\n")[0]] * 6),
         "dup_line_frac"),
        ("gopher_repetition", PROSE.replace("\n", " ") + " click here now" * 40, "top_2_gram"),
        ("gopher_quality", "Only ten words are in this very short little document.",
         "too_few_words"),
        ("gopher_quality", "\n".join(f"- item {w} of the list and more" for w in PROSE.split()),
         "bullet_lines"),
        ("gopher_quality", PROSE + " #tag" * 40, "hashes"),
        ("gopher_quality", " ".join(["xqa zzvr kkpt rrtu"] * 20), "stop_words"),
        ("c4", PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum"),
        ("c4", PROSE + "\nfunction f() { return the value of x; }", "curly_bracket"),
        ("c4", "One sentence here.\nAnd a second one here.\nMenu\nHome", "too_few_sentences"),
        ("fineweb", "\n".join(w + " " + w for w in PROSE.split()[:40]), "line_punctuation"),
        ("fineweb", PROSE + "\n" + PROSE.split("\n")[2], "dup_line_chars"),
        ("language", RUSSIAN, "detected ru"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)  # fmt: skip
def test_each_rule_drops_with_its_reason(rule, text, why):
    kept, reason, stats = run(text, **{rule: True})
    assert kept is None and reason == f"quality_{rule}"
    assert stats.quality_reasons == {f"{rule}: {why}": 1}


@pytest.mark.parametrize("rule", ["gopher_repetition", "gopher_quality", "c4", "fineweb"])
def test_each_rule_keeps_prose(rule):
    assert run(PROSE, **{rule: True})[1] is None


def test_stop_words_only_for_english():
    """The stop-word test is English: with other languages kept, it is skipped."""
    text = " ".join(["xqa zzvr kkpt rrtu"] * 20)
    assert run(text, gopher_quality=True, languages="de")[1] is None


def test_language_keeps_its_languages():
    assert run(RUSSIAN, language=True, languages="en,ru")[1] is None
    assert run(PROSE, language=True, languages="en")[1] is None
    _, reason, stats = run("12 34 56 ###", language=True)
    assert reason == "quality_language" and stats.quality_reasons == {"language: unsure": 1}


def test_c4_removes_lines_and_counts_them():
    """Lines without end punctuation, short lines, javascript and policy lines go; the
    document stays when 5 sentences are left."""
    extra = [
        "Home | News | Sport",  # no terminal punctuation
        "Thanks!",  # fewer than 3 words
        "Please enable JavaScript to view the comments.",
        "By using this site you agree to our privacy policy.",
    ]
    lines = PROSE.split("\n")
    text = "\n".join([lines[0], *extra, *lines[1:]])
    kept, reason, stats = run(text, c4=True)
    assert reason is None and kept == PROSE
    assert stats.lines_removed == {
        "c4_no_terminal_punctuation": 1, "c4_too_few_words": 1, "c4_javascript": 1,
        "c4_policy": 1,
    }  # fmt: skip


def test_gopher_repetition_ngram_counts():
    """Duplicated n-gram characters step over each repeat whole (datatrove's rule)."""
    words = "a b c a b c a b c".split()
    # 3-grams "abc" at 0, repeat at 3 (skip to 6), repeat at 6: 2 repeats of 3 chars.
    assert quality._duplicated_ngram_chars(words, 3) == 6
    assert quality.find_duplicates(["x", "yy", "x", "yy", "x"]) == (3, 4)


def test_filters_run_in_clean_batch_and_merge():
    """In clean_batch (so in every engine's workers): counted as quality_<rule>, and the
    counts of two batches add up."""
    cfg = DataConfig(quality=QualityConfig(gopher_quality=True, c4=True))
    docs = [PROSE, "too short.", PROSE + "\nLorem ipsum dolor sit amet is here."]
    out = clean_batch(RawBatch(0, 0, docs, None), cfg)
    assert out.texts == [PROSE] and out.places.tolist() == [0]
    assert out.stats.dropped == {"quality_gopher_quality": 1, "quality_c4": 1}
    total = CleanStats()
    total.merge(out.stats)
    total.merge(out.stats)
    assert total.dropped["quality_c4"] == 2
    assert total.quality_reasons == {"gopher_quality: too_few_words": 2, "c4: lorem_ipsum": 2}


@pytest.mark.parametrize(
    "settings, match",
    [({"languages": ""}, "data.quality.languages"), ({"languages": "english"}, "ISO 639-1"),
     ({"max_rank": 0}, "data.quality.max_rank")],
)  # fmt: skip
def test_settings_are_checked(settings, match):
    with pytest.raises(ValueError, match=match):
        QualityConfig(**settings)


def test_language_without_resiliparse_fails_at_config_time(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "resiliparse" else real(name)
    )
    with pytest.raises(ImportError, match=r"data\.quality\.language.*pip install"):
        QualityConfig(language=True)
