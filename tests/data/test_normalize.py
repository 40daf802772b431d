"""Per-corpus normalisation, against references written by hand in each corpus's own conventions."""

import pytest

from dmao.data.normalize import TEXT_RULES, normalize_text, text_rules


@pytest.mark.parametrize(
    ("rules", "transcript", "reference"),
    [
        # LibriSpeech: upper case with apostrophes; nothing else to remove.
        ("librispeech", "DON'T LET O'BRIEN IN", "don't let o'brien in"),
        # TED-LIUM: contractions stay two tokens, as its STM writes and scores them; <unk> and noise go.
        ("tedlium", "it 's a <unk> thing {NOISE} they don 't", "it 's a thing they don 't"),
        ("tedlium", "we 're in 2009 [NOISE] because(2) <sil>", "we 're in 2009 because"),
        # Plain (manifests, Kaldi directories): typographic apostrophes, digits, accents, punctuation.
        ("plain", "Don\u2019t stop at 42, \u201chi\u201d caf\u00e9 [noise] <unk>", "don't stop at 42 hi cafe"),
        ("plain", "'quoted' words", "quoted words"),
        # Switchboard (MS-State): laughter-words are words, fragments keep what was said, markers go.
        ("switchboard", "[laughter-yes] th[e]- -[h]ow [noise] uh-huh i_1 [vocalized-noise]", "yes th- -ow uh-huh i"),
        ("switchboard", "um [silence] it's a t-v", "um it's a t-v"),
        # ... mispronunciations are the word said, coined words are words, fragments stay fragments (Kaldi's mapping).
        ("switchboard", "i said [it'n/isn't] so, a {yuppiedom} thing", "i said it'n so a yuppiedom thing"),
        ("switchboard", "ammu[n]it- [lem[guini]-/linguini] [laughter-ab[solute]-] pasta", "ammu-it- lem- ab- pasta"),
        # Hub5'00 (LDC2002T43): tags with '>' inside quoted attributes, hesitations, uncertain words, asides.
        (
            "hub5",
            "<contraction e_form=\"[we=>we]['re=>are]\">we're %um, ((so)) (( )) {breath} (ha-) <B_ASIDE> yes?",
            "we're um so ha- yes",
        ),
        ("hub5", "(%HESITATION) THEY'RE %hesitation going without hesitation", "they're going without hesitation"),
    ],
)
def test_references_follow_the_corpus_conventions(rules, transcript, reference):
    assert text_rules(rules).reference(transcript) == reference


def test_conversational_scoring_ignores_what_the_hub5_glm_makes_optional():
    scoring = text_rules("switchboard").scoring
    assert scoring("um yes th- uh-huh -ow uh okay") == "yes uh-huh okay"
    assert text_rules("hub5").scoring is scoring


def test_read_speech_scoring_changes_nothing_but_spacing():
    for name in ("plain", "librispeech", "tedlium"):
        assert TEXT_RULES[name].scoring("it 's  um  th-") == "it 's um th-"


def test_a_reference_is_a_fixed_point_of_its_rules():
    """Normalising twice changes nothing: the cleaned manifests can be cleaned again (eval --manifest does)."""
    samples = {
        "librispeech": "DON'T LET O'BRIEN IN",
        "tedlium": "it 's a <unk> thing",
        "switchboard": "[laughter-yes] th[e]- uh-huh",
        "hub5": "%um ((so)) (ha-) yes?",
        "plain": "Don\u2019t 42 caf\u00e9",
    }
    for name, text in samples.items():
        once = text_rules(name).reference(text)
        assert text_rules(name).reference(once) == once, name


def test_the_embedded_corpus_normalisation_keeps_digits_and_inner_apostrophes():
    assert normalize_text("It's 3 o'clock - 'ok'") == "it's 3 o'clock ok"


def test_an_unknown_rule_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: plain, librispeech"):
        text_rules("libri")
