import shutil

import pytest

from dind.errors import DindError
from dind.tokenizer import Tokenizer, get_tokenizer, gpt2_ranks_file, gpt2_tokenizer, train_bpe

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TEXTS = [
    "Hello world!",
    "  It's 2026; naïve café — ☃ 12345 foo\n\n bar\tbaz   ",
    "I'll've we're they'd <|endoftext|> next",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "日本語のテキスト and emoji 🙂🙂 mixed with $3.14 and 1,000,000.",
    "\r\n\n   \n\ttrailing spaces   \n",
    "SHOUTING AND   multiple    spaces;;; !!! ??? ''' \"quoted\" x=y+z",
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    try:
        ranks = gpt2_ranks_file()  # the real cache: downloaded once, ever
    except DindError as e:
        if "could not fetch" in str(e):  # only when PyPI itself cannot be reached
            pytest.skip(str(e))
        raise
    # Build from the ranks in a fresh cache, so the ranks -> merges conversion runs every time.
    fresh = tmp_path_factory.mktemp("cache")
    (fresh / "gpt2").mkdir()
    shutil.copy(ranks, fresh / "gpt2" / "gpt2.tiktoken")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIND_CACHE", str(fresh))
        tok = gpt2_tokenizer()
        assert (fresh / "gpt2" / "tokenizer.json").exists()
        yield tok


def test_gpt2_matches_tiktoken(gpt2):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(gpt2_ranks_file())),
        special_tokens={"<|endoftext|>": 50256},
    )  # fmt: skip
    for text in TEXTS:
        assert gpt2.encode(text) == enc.encode(text, allowed_special="all"), text
        assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.encode_batch(TEXTS) == enc.encode_batch(TEXTS, allowed_special="all")
    assert gpt2.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids


def test_gpt2_ids_are_bd3lms(gpt2):
    assert (gpt2.eos_id, gpt2.bos_id, gpt2.mask_id, gpt2.vocab_size) == (50256, 50256, 50257, 50258)
    assert gpt2.kind == "gpt2"
    ids = gpt2.encode("a b") + [gpt2.mask_id, gpt2.eos_id, gpt2.mask_id]
    assert gpt2.decode(ids) == "a b[MASK]<|endoftext|>[MASK]"


def test_gpt2_cached_build_is_reused(gpt2, monkeypatch):
    import dind.tokenizer
    from dind.paths import cache_dir

    built = cache_dir() / "gpt2" / "tokenizer.json"  # the fixture's fresh cache
    stamp = built.stat().st_mtime_ns, built.read_bytes()

    def rebuilt(*args, **kwargs):
        raise AssertionError("the cached GPT-2 tokenizer was rebuilt from the ranks")

    for name in ("_read_ranks", "_gpt2_from_ranks", "_fetch_gpt2_ranks"):
        monkeypatch.setattr(dind.tokenizer, name, rebuilt)
    again = gpt2_tokenizer()
    assert (built.stat().st_mtime_ns, built.read_bytes()) == stamp  # read, not rewritten
    assert again.encode(TEXTS[1]) == gpt2.encode(TEXTS[1])


def test_save_load_round_trip(tmp_path, gpt2):
    gpt2.save(tmp_path / "tok")
    config = (tmp_path / "tok" / "tokenizer_config.json").read_text()
    assert '"PreTrainedTokenizerFast"' in config and '"mask_id": 50257' in config
    again = Tokenizer.load(tmp_path / "tok")
    assert again.kind == "gpt2" and again.mask_id == 50257
    assert again.encode_batch(TEXTS) == gpt2.encode_batch(TEXTS)


def test_trained_bpe(tmp_path):
    texts = [
        "the quick brown fox jumps over the lazy dog " * 20,
        "a stitch in time saves nine, and nine lives a cat has " * 30,
        "".join(chr(c) for c in range(32, 2000)),  # enough symbols to reach the size asked
    ]
    tok = get_tokenizer("bpe", texts, 300)
    assert tok.kind == "bpe" and tok.mask_id == 300 and tok.vocab_size == 301
    assert tok.eos_id == tok.bos_id < tok.mask_id
    for text in ["the lazy fox", "unseen wörds ✓ 🙂", "<|endoftext|>x"]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.mask_id for i in ids)
        assert tok.decode(ids) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges learned
    tok.save(tmp_path / "bpe")
    again = Tokenizer.load(tmp_path / "bpe")
    assert (again.kind, again.mask_id) == ("bpe", 300)
    assert again.encode(texts[1]) == tok.encode(texts[1])


def test_user_errors_are_clear(tmp_path):
    with pytest.raises(DindError, match="no tokenizer"):
        Tokenizer.load(tmp_path / "missing")
    with pytest.raises(DindError, match="no tokenizer"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DindError, match="at least 257"):
        train_bpe(["x"], 100)
    with pytest.raises(DindError, match="gpt2, bpe"):
        get_tokenizer("llama")
    with pytest.raises(DindError, match="needs texts"):
        get_tokenizer("bpe")
