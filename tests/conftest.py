"""Shared test fixtures: a tiny chat tokenizer built fully offline.

Other test modules can build their own copy with ``from conftest import make_tiny_tokenizer``
(tests/ has no ``__init__.py``, so pytest puts it on ``sys.path``) or use the session-scoped
``tiny_tokenizer`` fixture. Tiny random models should use ``vocab_size=len(tokenizer)``.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch

# Tiny models gain nothing from a second thread, and on a shared 2-core machine threads that
# wait for each other made these tests about 10x slower.
torch.set_num_threads(1)

TINY_VOCAB_SIZE = 384
"""Target vocabulary size of the tiny tokenizer (256 bytes + 4 special tokens + merges)."""

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# ChatML, like SmolLM2-Instruct and Qwen2: eos is <|im_end|>, so "completion + eos" is exactly
# how the template closes an assistant turn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to and in is it that for on with as was at by from are this be or have "
    "how many much does did will each every total more less than half twice per day week "
    "dollars cents eggs apples books students hours minutes miles cups bags boxes she he they "
    "her his their sells buys makes pays spends has had gets left remaining answer question "
    "user assistant system you are helpful model janet ducks lay muffins market robe bolts "
    "fiber blue white price cost profit number times plus minus divided equals so then"
).split()


def _training_corpus(n: int = 400) -> list[str]:
    """A fixed, seeded corpus of GSM8K-like and chat-like strings (no files, no network)."""
    rng = random.Random(1234)
    corpus = []
    for _ in range(n):
        words = rng.choices(_WORDS, k=rng.randint(5, 20))
        numbers = [str(rng.randint(0, 2000)) for _ in range(rng.randint(1, 3))]
        sentence = " ".join(words[:3] + numbers[:1] + words[3:] + numbers[1:]).capitalize()
        corpus.append(sentence + rng.choice([".", "?", "!", ":"]))
        corpus.append(
            f"{numbers[0]} * 2 = <<{numbers[0]}*2={int(numbers[0]) * 2}>>{int(numbers[0]) * 2}"
            f"\n#### {numbers[-1]}"
        )
    return corpus


@functools.cache
def _trained_backend_json(vocab_size: int) -> str:
    """Train the byte-level BPE once per process; callers get fresh copies from its JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    return backend.to_str()


def make_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE):
    """Build a small byte-level BPE chat tokenizer entirely in-process (no files, no network).

    Byte-level, so any text round-trips (no unknown tokens). Special tokens: bos
    ``<|im_start|>``, eos ``<|im_end|>``, pad ``<|pad|>`` (distinct from eos, so tests can tell
    padding apart from the end of a completion), plus ``<|endoftext|>``. Has a ChatML
    ``chat_template`` supporting ``add_generation_prompt``. Deterministic; each call returns a
    new, independent tokenizer (safe to mutate).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``; ``len(tokenizer)`` is at most ``vocab_size``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_backend_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=TINY_CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=2048,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Session-wide tiny chat tokenizer (do not mutate it in a test; build your own instead)."""
    return make_tiny_tokenizer()


def make_tiny_model_dir(path, *, layers: int = 2, hidden: int = 32, seed: int = 0):
    """Save a tiny random LLaMA with the tiny tokenizer to ``path`` (a loadable model directory)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_alpaca_jsonl(path, n: int = 48, seed: int = 0):
    """A small arithmetic instruction dataset in Alpaca JSONL format, with '#### N' answers."""
    import json

    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(n):
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            handle.write(
                json.dumps(
                    {
                        "instruction": f"How many apples are {a} apples plus {b} apples?",
                        "input": "",
                        "output": f"{a} + {b} = {a + b}\n#### {a + b}",
                    }
                )
                + "\n"
            )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory):
    return write_alpaca_jsonl(tmp_path_factory.mktemp("data") / "arith.jsonl")
