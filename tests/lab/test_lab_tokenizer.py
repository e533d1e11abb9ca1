import json

import pytest
from lab_fixtures import TINY_CORPUS, TINY_VOCAB, tiny_corpus, tiny_tokens

from moescope.lab import tokenizer as tk
from moescope.lab.corpus import DOMAINS, CorpusConfig, build_corpus

SAMPLES = [
    "héllo wörld — naïve café",                 # Latin-1 and punctuation outside ASCII
    "数学の問題: ∂f/∂x = 2x, ∑ᵢ xᵢ² ≥ 0 😀",     # CJK, math symbols, an astral-plane emoji
    "e\u0301 combining accent, \u200b zero width",
    "  leading spaces\tand tabs\r\nCRLF line\n\n",
    "<|mask|> and <|endoftext|> written as text",
    "",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tk.load_or_train_tokenizer(tiny_corpus(), tmp_path_factory.mktemp("tok"), TINY_VOCAB)


def test_round_trip_is_exact_on_every_domain_and_non_ascii(tokenizer):
    corpus = tiny_corpus()
    texts = list(SAMPLES)
    for dom in DOMAINS:
        texts += [d.text for d in corpus.documents if d.domain == dom][:3]
    for text in texts:
        ids = tk.encode(tokenizer, text)
        assert tk.decode(tokenizer, ids) == text


def test_specials_first_and_vocab_size(tokenizer):
    assert [tokenizer.token_to_id(t) for t in tk.SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.get_vocab_size() == TINY_VOCAB


def test_training_is_deterministic():
    texts = [d.text for d in tiny_corpus().train]
    assert tk.train_tokenizer(texts, 300).to_str() == tk.train_tokenizer(texts, 300).to_str()


def test_cache_is_reused_when_the_corpus_matches(tmp_path, monkeypatch):
    corpus = tiny_corpus()
    first = tk.load_or_train_tokenizer(corpus, tmp_path, 300)
    stamp = (tmp_path / tk.TOKENIZER_FILE).stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retrained although the cache matches")

    monkeypatch.setattr(tk, "train_tokenizer", boom)
    again = tk.load_or_train_tokenizer(corpus, tmp_path, 300)
    assert again.to_str() == first.to_str()
    assert (tmp_path / tk.TOKENIZER_FILE).stat().st_mtime_ns == stamp
    meta = json.loads((tmp_path / tk.FINGERPRINT_FILE).read_text())
    assert meta["corpus_fingerprint"] == corpus.fingerprint and meta["vocab_size"] == 300


def test_cache_is_retrained_on_another_corpus_size_or_damage(tmp_path):
    corpus = tiny_corpus()
    tk.load_or_train_tokenizer(corpus, tmp_path, 300)
    fp = (tmp_path / tk.FINGERPRINT_FILE).read_text()
    other = build_corpus(CorpusConfig(**{**TINY_CORPUS.__dict__, "seed": 5}))   # other math text
    tk.load_or_train_tokenizer(other, tmp_path, 300)
    assert (tmp_path / tk.FINGERPRINT_FILE).read_text() != fp
    tk.load_or_train_tokenizer(other, tmp_path, 320)
    assert json.loads((tmp_path / tk.FINGERPRINT_FILE).read_text())["vocab_size"] == 320
    (tmp_path / tk.TOKENIZER_FILE).write_text("{not json")
    tok = tk.load_or_train_tokenizer(other, tmp_path, 320)
    assert tok.get_vocab_size() == 320
    assert json.loads((tmp_path / tk.TOKENIZER_FILE).read_text())   # rewritten whole


def test_token_streams_follow_the_split():
    corpus, tokens = tiny_corpus(), tiny_tokens()
    eot = tokens.eot_id
    assert int((tokens.train == eot).sum()) == len(corpus.train)
    for dom in DOMAINS:
        assert int((tokens.val[dom] == eot).sum()) == sum(d.domain == dom for d in corpus.val)
        assert int((tokens.train_by_domain[dom] == eot).sum()) == sum(d.domain == dom for d in corpus.train)
    assert tokens.train.numel() == sum(t.numel() for t in tokens.train_by_domain.values())
    assert tokens.mask_id == 1 and tokens.pad_id == 2 and int(tokens.train.max()) < tokens.vocab_size


@pytest.mark.parametrize("size", [100, 258, 70_000, 2048.0])
def test_bad_vocab_size(size):
    with pytest.raises(ValueError, match="vocab_size"):
        tk.train_tokenizer(["abc"], size)
