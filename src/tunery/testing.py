"""Helpers for fast tests: a tiny random BERT that loads like any backbone."""

from __future__ import annotations

from pathlib import Path


def tiny_backbone(path: str | Path, *, seed: int = 0, dropout: float = 0.1) -> str:
    """Write a 2-layer, hidden-32 BERT with the packaged MiniLM's tokenizer into `path`.

    It loads with `from_pretrained` like a real checkpoint, in well under a second.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunery.backbones import resolve_backbone

    path = Path(path)
    if (path / "config.json").is_file():
        return str(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm-l6"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
