"""The offline Qwen2 tokenizer: exact ids, tiktoken parity, reload, chat template and the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from streamvln_model.model import tokenizer as tokmod
from streamvln_model.model.tokenizer import (
    CACHE_ENV,
    QWEN2_PRETOKENIZE_PATTERN,
    QWEN2_SPECIAL_TOKENS,
    build_qwen2_tokenizer,
    cache_root,
    load_tokenizer,
    qwen2_tokenizer_dir,
    tiktoken_file,
)

PARITY_SAMPLES = [
    "Hello, world",
    "你好，世界！这是一个关于导航的测试句子。東京タワーの近くで左に曲がってください。",
    "def forward(self, x: torch.Tensor) -> torch.Tensor:\n    return self.proj(x) * 2 ** -0.5  # 12345\n",
    "  leading spaces,\ttabs\t\tand\n\n\nnew lines   \r\n trailing   ",
    "Walk past the sofa and turn left at the 3rd door. ↑↑←→STOP émigré naïve café",
    "I'm sure they'll say we've done it; you'd think it's 2025's BEST, won't you?",
]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache root in which the real tokenizer is built once for the whole session."""
    root = tmp_path_factory.mktemp("streamvln-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        qwen2_tokenizer_dir()
    return root


@pytest.fixture
def cache_env(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def saved_tokenizer(session_cache: Path):
    """The tokenizer as every consumer gets it: AutoTokenizer on the cached folder."""
    return load_tokenizer(session_cache / tokmod.TOKENIZER_DIRNAME)


@pytest.fixture(scope="session")
def built_tokenizer():
    """The tokenizer straight from the conversion, before any save/reload."""
    return build_qwen2_tokenizer()


@pytest.fixture(scope="session")
def tiktoken_encoding() -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(str(tiktoken_file()))
    return tiktoken.Encoding(
        "qwen2", pat_str=QWEN2_PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "streamvln"


def test_known_ids(saved_tokenizer) -> None:
    assert saved_tokenizer("Hello, world").input_ids == [9707, 11, 1879]
    assert saved_tokenizer("\n").input_ids == [198]
    assert saved_tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [151644, 151645]
    # The action symbols the model must emit are single tokens.
    for text, token_id in {"↑": 76286, "←": 71858, "→": 51018, "STOP": 50669}.items():
        assert saved_tokenizer(text).input_ids == [token_id]
    # Qwen2 splits numbers into single digits.
    assert saved_tokenizer("12345").input_ids == [16, 17, 18, 19, 20]


def test_special_tokens_and_settings(saved_tokenizer) -> None:
    assert len(saved_tokenizer) == 151_665
    ids = saved_tokenizer.convert_tokens_to_ids(list(QWEN2_SPECIAL_TOKENS))
    assert ids == list(range(151_643, 151_665))
    assert saved_tokenizer.eos_token == "<|im_end|>"
    assert saved_tokenizer.pad_token == "<|endoftext|>"
    assert saved_tokenizer.pad_token_id == 151_643
    assert saved_tokenizer.model_max_length == 32_768
    assert saved_tokenizer.padding_side == "right"
    # No BOS/EOS is glued onto plain encodes.
    assert saved_tokenizer("a b").input_ids == saved_tokenizer("a b", add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", PARITY_SAMPLES)
def test_tiktoken_parity(saved_tokenizer, tiktoken_encoding: tiktoken.Encoding, text: str) -> None:
    assert saved_tokenizer(text).input_ids == tiktoken_encoding.encode_ordinary(text)


def test_reload_gives_identical_ids(built_tokenizer, saved_tokenizer) -> None:
    for text in [*PARITY_SAMPLES, "<|im_start|>user\nhi<|im_end|>\n"]:
        assert saved_tokenizer(text).input_ids == built_tokenizer(text).input_ids
    assert saved_tokenizer.decode(saved_tokenizer(PARITY_SAMPLES[1]).input_ids) == PARITY_SAMPLES[1]


def test_chat_template_is_plain_chatml(saved_tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Go left."},
        {"role": "assistant", "content": "←←STOP"},
    ]
    rendered = saved_tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nGo left.<|im_end|>\n"
        "<|im_start|>assistant\n←←STOP<|im_end|>\n"
    )
    prompt = saved_tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    # No default system message is injected.
    assert prompt == "<|im_start|>user\nGo left.<|im_end|>\n<|im_start|>assistant\n"


def test_second_call_reuses_cache(cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = qwen2_tokenizer_dir()
    assert folder == cache_env / tokmod.TOKENIZER_DIRNAME
    before = (folder / "tokenizer.json").stat().st_mtime_ns

    def must_not_build(out_dir: Path | None = None):
        raise AssertionError("the cached tokenizer was rebuilt")

    monkeypatch.setattr(tokmod, "build_qwen2_tokenizer", must_not_build)
    assert qwen2_tokenizer_dir() == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == before
    assert not [p for p in cache_env.iterdir() if p.name.startswith(".")], "staging folders left behind"


def _fake_build(out_dir: Path | None = None) -> None:
    """Stands in for the 5 s conversion: the cache logic only cares about the files."""
    assert out_dir is not None
    (out_dir / "tokenizer.json").write_text('{"built_by": "loser"}')


def test_concurrent_builder_keeps_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = tmp_path / tokmod.TOKENIZER_DIRNAME

    def build_while_other_process_wins(out_dir: Path | None = None) -> None:
        # Another process finishes first and renames its complete folder into place.
        target.mkdir()
        (target / "tokenizer.json").write_text('{"built_by": "winner"}')
        _fake_build(out_dir)

    monkeypatch.setattr(tokmod, "build_qwen2_tokenizer", build_while_other_process_wins)
    assert qwen2_tokenizer_dir() == target
    assert (target / "tokenizer.json").read_text() == '{"built_by": "winner"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [tokmod.TOKENIZER_DIRNAME]


def test_incomplete_folder_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    target = tmp_path / tokmod.TOKENIZER_DIRNAME
    target.mkdir()
    (target / "partial.txt").write_text("left over from a crash")
    monkeypatch.setattr(tokmod, "build_qwen2_tokenizer", _fake_build)
    assert qwen2_tokenizer_dir() == target
    assert sorted(os.listdir(target)) == ["tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [tokmod.TOKENIZER_DIRNAME]
