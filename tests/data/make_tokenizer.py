"""Make a small HuggingFace tokenizer directory offline: python make_tokenizer.py OUT_DIR

Byte-level BPE (any text encodes, nothing is unknown), trained on the docstrings of Python's own
standard library, so English averages a few bytes a token as a real model's tokenizer does. It has
a chat template for tools that apply one. Needs `tokenizers` and `transformers` only.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

VOCAB = 8000
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODULES = ("argparse", "asyncio", "collections", "csv", "email", "http.client", "json", "logging")
MODULES += (
    "pathlib",
    "re",
    "statistics",
    "subprocess",
    "textwrap",
    "typing",
    "unittest",
    "zipfile",
)


def docstrings() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            module = importlib.import_module(name)
            for obj in (module, *vars(module).values()):
                inner = vars(obj).values() if isinstance(obj, type) else ()
                for doc in (getattr(x, "__doc__", None) for x in (obj, *inner)):
                    if isinstance(doc, str):
                        yield doc


def main(out: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docstrings(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL[0],
        eos_token=SPECIAL[0],
        pad_token=SPECIAL[0],
        model_max_length=131072,
    )
    hf.chat_template = TEMPLATE
    hf.save_pretrained(out)
    config = out / "tokenizer_config.json"  # a class name every transformers release loads
    data = json.loads(config.read_text()) | {"tokenizer_class": "PreTrainedTokenizerFast"}
    config.write_text(json.dumps(data | {"chat_template": TEMPLATE}, indent=2))
    text = "Benchmarking text, 123 and ünïcödé, offline."
    again = AutoTokenizer.from_pretrained(out)
    assert again.decode(again.encode(text, add_special_tokens=False)) == text


if __name__ == "__main__":
    main(Path(sys.argv[1]))
