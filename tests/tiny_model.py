"""A tiny random-weight llama model in GGUF, so a real `llama-server` loads and generates in tests.

Nothing is downloaded: the weights are seeded noise, the vocabulary is GPT-2's byte-level BPE
alphabet (every byte a token, so any text encodes) plus the three-letter words the Locust scenario
builds its prompts from (one token each, as with a real BPE vocabulary), and the chat template is
ChatML, so `/v1/chat/completions` works. About 400 KB.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

import loadtest

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ROLE_WORDS = ("user", "assistant", "system")
# ChatML without the newline after <|im_end|>: 7 tokens around one user message, as the Locust
# scenario counts (CHAT_OVERHEAD), so its prompts are exactly the planned length
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Output rows of tokens the model should never emit are zero, the others carry logits with a
# standard deviation of about 10: a zero logit then loses to the best of ~400 by e^-25. So the
# model writes printable ASCII only (no half UTF-8 sequences, no control tokens in the text).
LOGIT_SCALE = 10.0


@dataclass(frozen=True, kw_only=True)
class TinyLlama:
    """The shape of the model: small enough to load in milliseconds and decode fast on a CPU."""

    layers: int = 2
    hidden: int = 64
    heads: int = 2  # head size 32: quantized KV caches (q8_0, q4_0) need a multiple of 32
    kv_heads: int = 2
    ffn: int = 128
    context: int = 8192
    seed: int = 0
    # FFN weights all zero and left as holes in a sparse file: a model of any size on disk that
    # costs neither disk nor time to write (a server then takes visible time to load it)
    hollow_ffn: bool = False


def scenario_words() -> list[str]:
    """`WORDS` of the Locust scenario, read from its source (importing it would pull in gevent)."""
    for path in sorted(Path(loadtest.__file__).parent.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "WORDS":
                return list(ast.literal_eval(node.value))
    raise LookupError("no module of loadtest/ defines WORDS")


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode map: byte b is the token `alphabet[b]`."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    table = {b: chr(b) if b in printable else chr(next(extra)) for b in range(256)}
    return [table[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str], set[int]]:
    """(tokens, token types, merges, ids the model may emit)."""
    alphabet = byte_alphabet()
    tokens = list(alphabet)
    merges: list[str] = []
    space = alphabet[ord(" ")]
    words = sorted(set(scenario_words()))
    # BPE merges the best-ranked pair first, wherever it is. Every merge of a space-led word ranks
    # above every other, so " and" becomes one token left to right instead of " " + "and" (the
    # words inside a prompt all follow a space); then the chat template's roles, one token each;
    # bare words (the first of a prompt) last, some of them two tokens.
    for piece in [space + w for w in words] + list(ROLE_WORDS) + words:
        for end in range(2, len(piece) + 1):
            if piece[:end] not in tokens:
                tokens.append(piece[:end])
                merges.append(f"{piece[: end - 1]} {piece[end - 1]}")
    emit = {i for i, t in enumerate(tokens) if i >= 256 or 0x20 <= i < 0x7F}
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    return tokens + list(SPECIALS), [int(t) for t in types], merges, emit


def write_tiny_llama(path: Path, shape: TinyLlama = TinyLlama()) -> Path:
    """Write the model to `path` (seeded: the same shape gives the same bytes)."""
    tokens, types, merges, emit = vocabulary()
    w = gguf.GGUFWriter(path, "llama")
    _header(w, shape)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, array in _weights(shape, vocab=len(tokens), emit=emit):
        if shape.hollow_ffn and ".ffn_" in name and array.ndim == 2:
            w.add_tensor_info(name, array.shape, array.dtype, array.nbytes)
            w.tensors[-1][name].tensor = _Hole(array.nbytes)  # type: ignore[assignment]
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class _Hole:
    """Stands in for a zero tensor: GGUFWriter calls `tofile`, which skips instead of writing."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def tofile(self, f: Any) -> None:
        f.seek(self.nbytes, 1)


def _header(w: gguf.GGUFWriter, s: TinyLlama) -> None:
    w.add_name("cardinal-tiny-llama")
    w.add_context_length(s.context)
    w.add_embedding_length(s.hidden)
    w.add_block_count(s.layers)
    w.add_feed_forward_length(s.ffn)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_rope_dimension_count(s.hidden // s.heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def _weights(s: TinyLlama, *, vocab: int, emit: set[int]) -> list[tuple[str, np.ndarray]]:
    """(name, array) in llama.cpp's tensor names; numpy shapes are (out, in)."""
    rng = np.random.default_rng(s.seed)
    d, kv = s.hidden, s.hidden // s.heads * s.kv_heads

    def dense(out: int, inp: int) -> np.ndarray:
        if s.hollow_ffn and s.ffn in (out, inp):
            return np.zeros((out, inp), dtype=np.float16)  # untouched pages: costs nothing
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float16)

    output = rng.standard_normal((vocab, d)) * LOGIT_SCALE / np.sqrt(d)
    output[[i for i in range(vocab) if i not in emit]] = 0.0
    out = [("token_embd.weight", rng.standard_normal((vocab, d)).astype(np.float16))]
    for i in range(s.layers):
        out += [
            (f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32)),
            (f"blk.{i}.attn_q.weight", dense(d, d)),
            (f"blk.{i}.attn_k.weight", dense(kv, d)),
            (f"blk.{i}.attn_v.weight", dense(kv, d)),
            (f"blk.{i}.attn_output.weight", dense(d, d)),
            (f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32)),
            (f"blk.{i}.ffn_gate.weight", dense(s.ffn, d)),
            (f"blk.{i}.ffn_up.weight", dense(s.ffn, d)),
            (f"blk.{i}.ffn_down.weight", dense(d, s.ffn)),
        ]
    # last, so a hollow FFN's holes end before the file does
    return out + [
        ("output_norm.weight", np.ones(d, dtype=np.float32)),
        ("output.weight", output.astype(np.float16)),
    ]
