from __future__ import annotations

from pathlib import Path

import pytest

from tunery.backbones import resolve_backbone
from tunery.errors import BackboneError


def test_alias_resolves_to_the_packaged_model():
    path = Path(resolve_backbone("minilm-l6"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_backbone("sentence-transformers/all-MiniLM-L6-v2") == str(path)


def test_local_directory_is_used_as_is(tiny_backbone):
    assert resolve_backbone(tiny_backbone) == str(Path(tiny_backbone).resolve())


def test_unresolvable_name_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as err:
        resolve_backbone("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "alias registry" in msg and "local directory" in msg and "hub id" in msg and "Fix:" in msg


def test_an_unreachable_hub_is_not_retried(monkeypatch):
    """Offline, a hub id is looked up in the cache only: huggingface_hub's own retries would take
    about 25 s for a typo in the backbone name."""
    import transformers

    from tunery import backbones

    calls = []

    def from_pretrained(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cache")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: False)
    with pytest.raises(BackboneError, match="not in the cache"):
        resolve_backbone("no-such-org/no-such-model-xyz")
    assert calls == [{"local_files_only": True}]
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert backbones._hub_reachable() is False
