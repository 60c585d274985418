"""Tiny local models for the consumer training tests: nothing is downloaded.

`tiny_bert` writes a Hugging Face model folder (a 2-layer BERT with its masked-LM head and
a whole-word vocabulary built from the texts the test trains on), which every consumer then
loads through its own `from_pretrained` path. `Snapshot` and `assert_trained` state what one
optimisation step must have done: a finite loss and changed weights in both layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import BasicTokenizer, BertConfig, BertForMaskedLM, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LAYERS = 2


def word_vocabulary(texts: Iterable[str]) -> list[str]:
    """The special tokens, then every distinct word of texts (BERT's lower-cased
    pre-tokenisation, so each word is one token and nothing seen is `[UNK]`), sorted."""
    basic = BasicTokenizer(do_lower_case=True)
    words = {word for text in texts for word in basic.tokenize(text)}
    return SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))


def tiny_bert(folder: Path, texts: Iterable[str], seed: int = 0) -> str:
    """Save a 2-layer BERT (hidden size 32, masked-LM head: SPLADE needs it, the other
    consumers load the encoder under it) and a word-level BERT tokenizer over texts into
    folder; returns the folder as the string `from_pretrained` takes. Deterministic for a
    seed and a set of texts."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("".join(token + "\n" for token in word_vocabulary(texts)), encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder)
    return str(folder)


class Snapshot:
    """The values of a model's parameters before training."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.values = {n: p.detach().clone() for n, p in model.named_parameters()}

    def changed(self, model: torch.nn.Module) -> set[str]:
        """Names of the parameters whose values differ now."""
        return {
            name
            for name, param in model.named_parameters()
            if name in self.values and not torch.equal(self.values[name], param.detach())
        }


def assert_trained(before: Snapshot, model: torch.nn.Module, losses: Iterable[float]) -> None:
    """One or more optimisation steps happened for real: every loss is a finite number and
    weights of both transformer layers moved."""
    losses = list(losses)
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    changed = before.changed(model)
    for layer in range(LAYERS):
        assert any(f"layer.{layer}." in name for name in changed), (layer, sorted(changed)[:10])
