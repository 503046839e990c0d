"""The search space: the config's `search:` section (or defaults that fit the backbone) as Optuna
distributions, the default recipe as the first trial's parameters, and a trial's parameters
applied to the config.

Each parameter is named by its dotted config key (`train.lr`), so trials, reports and
`tunery studies show` speak the config's own language."""

from __future__ import annotations

import json
from typing import Any

from tunery.config import RunConfig, check_search_param, config_from_dict
from tunery.errors import ConfigError


def default_search(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """The space searched when `search:` is empty: around the backbone's recommended learning
    rate, with epochs (early stopping ends the hopeless ones), warmup, weight decay, batch size,
    pooling, full fine-tuning vs LoRA and its rank, and layer-wise lr decay."""
    from tunery.backbones import recommended_lr

    lr = cfg.train.lr or recommended_lr(cfg.model.backbone)
    return {
        "train.lr": {"log": [lr / 4, lr * 3]},
        "train.epochs": {"int": [2, 6]},
        "train.warmup_ratio": {"float": [0.0, 0.2]},
        "train.weight_decay": {"choice": [0.0, 0.01, 0.1]},
        "train.batch_size": {"choice": [16, 32, 64]},
        "model.pooling": {"choice": ["auto", "cls", "mean"]},
        "model.method": {"choice": ["full", "lora"]},
        "model.lora.r": {"choice": [8, 16, 32]},
        "train.layer_lr_decay": {"float": [0.7, 1.0]},
    }


def _encode(value: Any) -> Any:
    """Optuna's choices are None, bool, int, float or str: a list or mapping travels as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value



def distributions(search: dict[str, dict[str, Any]]) -> dict:
    """Optuna distributions, by dotted key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in search.items():
        check_search_param(key, spec)
        kind, values = next(iter(spec.items()))
        if kind == "choice":
            out[key] = CategoricalDistribution([_encode(v) for v in values])
        elif kind == "int":
            out[key] = IntDistribution(values[0], values[1])
        else:
            out[key] = FloatDistribution(float(values[0]), float(values[1]), log=kind == "log")
    return out


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value


def apply(cfg: RunConfig, params: dict[str, Any], *, source: str = "search") -> RunConfig:
    """The config with each dotted key set to its parameter value, validated as any config is.
    What `cfg` leaves unset stays unset, for the run to resolve (pipeline.resolve_defaults)."""
    tree = cfg.model_dump(mode="json", exclude_unset=True)
    for key, value in params.items():
        _set(tree, key, json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value)
    return config_from_dict(tree, source=source)


def check_space(cfg: RunConfig, search: dict[str, dict[str, Any]]) -> None:
    """Every end of every range and every choice must make a valid config: ConfigError naming the
    key and the value otherwise, before any trial runs."""
    for key, spec in search.items():
        kind, values = next(iter(spec.items()))
        for value in values:
            try:
                apply(cfg, {key: _encode(value)})
            except ConfigError as err:
                why = str(err).split(": ", 1)[-1]
                raise ConfigError(f"search: {key}: {kind}: the value {value!r} is not a valid {key} ({why}); "
                                  f"change the range or choices") from None


def default_params(cfg: RunConfig, dists: dict) -> dict[str, Any]:
    """The configured recipe's own values, as parameters: enqueued as the first trial so that a
    search never returns worse than the default. A value outside the searched range is left out
    (the sampler chooses it)."""
    tree = cfg.to_dict()
    params = {}
    for key, dist in dists.items():
        value = _get(tree, key)
        if hasattr(dist, "choices"):
            value = _encode(value)
            if value in dist.choices:
                params[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high:
            if type(dist).__name__ == "IntDistribution":
                if float(value).is_integer():
                    params[key] = int(value)
            else:
                params[key] = float(value)
    return params


def suggest(trial, dists: dict) -> dict[str, Any]:
    """Ask the trial for a value of every parameter (fixed ones, enqueued or retried, come back as set)."""
    params = {}
    for key, dist in dists.items():
        if hasattr(dist, "choices"):
            params[key] = trial.suggest_categorical(key, dist.choices)
        elif type(dist).__name__ == "IntDistribution":
            params[key] = trial.suggest_int(key, dist.low, dist.high)
        else:
            params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return params
