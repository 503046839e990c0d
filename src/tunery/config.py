"""The run configuration: one typed, frozen object that flows one way through the pipeline.

`load_config("run.yaml", overrides=["train.lr=3e-5"])` returns a validated `RunConfig`. Each
component receives only its own part (`cfg.data`, `cfg.train`, ...). Unknown keys are errors that
name the key and the closest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunery.errors import ConfigError

TaskType = Literal["auto", "classification", "multilabel", "regression"]


# Seeds go to random, numpy, torch and scikit-learn; numpy and scikit-learn take 0 .. 2**32 - 1.
SEED_MAX = 2**32 - 1
# torch.set_num_threads far beyond any machine crashes the process (100,000 segfaults); the config
# stays portable between machines, so the bound is fixed and the run warns beyond the cores it finds.
THREADS_MAX = 1024
# A run name becomes a directory name (plus ".partial"); file systems take 255 bytes.
NAME_MAX_BYTES = 200


class _Part(BaseModel):
    # inf and nan are never meaningful settings (lr=.inf trains on NaN losses)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Part):
    """Where the data is and how to read it."""

    train: str = Field(description="training file (csv, tsv, jsonl or parquet)")
    validation: str | None = Field(None, description="validation file; split from train if absent")
    test: str | None = Field(None, description="test file; split from train if absent")
    text_column: str | None = Field(None, description="text column; inferred if absent")
    text_pair_column: str | None = Field(None, description="second text column for pair tasks")
    label_column: str | None = Field(None, description="label column; inferred if absent")
    label_delimiter: str | None = Field(
        None, description="delimiter of multi-label strings such as 'a|b'; inferred if absent"
    )
    labels: list[str] | None = Field(None, description="label names in order; inferred if absent")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="share held out as the test split when there is no test file; 0: no "
        "test split (the run reports validation only; `tunery evaluate RUN --data FILE` tests it later)"
    )
    split_seed: int = Field(42, ge=0, le=SEED_MAX)
    max_length: int = Field(128, ge=8, le=8192, description="tokens per text (pair) after truncation")
    drop_invalid_rows: bool = Field(
        False, description="drop rows with empty texts or missing labels (reported as warnings)"
    )
    imbalance_ratio_warning: float = Field(
        10.0, gt=1, description="warn when the largest class is this many times the smallest"
    )
    label_names: dict[str, str] | None = Field(
        None, description="names for label values, e.g. {0: negative, 1: positive}: every output shows the "
        "names; classification only"
    )
    allow_vocabulary_mismatch: bool = Field(
        False, description="train even when the backbone's vocabulary misses much of the text ([UNK] "
        "tokens): the vocabulary error becomes a warning"
    )

    @field_validator("label_names", mode="before")
    @classmethod
    def _label_name_keys(cls, names: Any) -> Any:
        """YAML keys arrive as int, float, bool or str: each becomes the label value as text
        (0, 0.0 and "0" are all "0", as the data's labels are read)."""
        if not isinstance(names, dict):
            return names
        out: dict[str, Any] = {}
        for key, name in names.items():
            if isinstance(key, float) and key.is_integer():
                key = int(key)
            text = str(key).strip()
            if text in out:
                raise ValueError(f"label value {key!r} is named twice; give each value one name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"the name of label value {key!r} must be non-empty text, e.g. "
                                 f"{{{text}: positive}}")
            out[text] = name.strip()
        seen: dict[str, str] = {}
        for key, name in out.items():
            if name in seen:
                raise ValueError(f"label values {seen[name]!r} and {key!r} have the same name {name!r}; "
                                 f"give each value its own name")
            seen[name] = key
        return out

    @model_validator(mode="after")
    def _labels_have_names(self) -> DataConfig:
        if self.label_names is not None and self.labels is not None:
            unnamed = [v for v in self.labels if str(v).strip() not in self.label_names]
            if unnamed:
                raise ValueError(f"label_names: data.labels lists {', '.join(map(repr, unnamed))} with no "
                                 f"name in data.label_names; add a name for each value")
        return self


class TaskConfig(_Part):
    type: TaskType = "auto"
    problem_threshold: float = Field(
        0.5, gt=0, lt=1, description="starting multi-label threshold (tuned on validation)"
    )
    per_label_threshold: bool = Field(
        True, description="multi-label: also tune a threshold per label with at least 10 validation positives "
        "(the others keep the global one)"
    )


class LoraConfig(_Part):
    r: int = Field(8, ge=1, le=4096)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"])


class ModelConfig(_Part):
    backbone: str = Field("minilm-l6", description="alias, local Hugging Face directory or hub id")
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze_embeddings: bool = Field(
        True, description="keep word embeddings fixed: faster steps, little or no accuracy cost"
    )
    freeze_layers: int = Field(
        0, ge=0, description="keep the lowest K encoder layers (and all the embeddings) fixed: no backward "
        "below layer K. A speed knob that costs accuracy: MiniLM on an SST-2 slice, 1 epoch: K=2 1.28x the "
        "samples/s for -0.3 points, K=4 1.86x for -2.5 (docs/benchmarks.md). Full fine-tuning only")
    classifier_dropout: float | None = Field(None, ge=0, lt=1)
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="how the head sees the text: cls (the [CLS] state), mean (an added layer that starts as "
        "mean pooling); auto: mean for backbones pretrained with it (sentence-transformers), else cls",
    )
    correct_typos: bool = Field(
        False, description="correct misspelt words before the model reads them (a defence against typo "
        "attacks): each Latin-letter word outside the training texts' words and the backbone's vocabulary "
        "becomes its most frequent neighbour one edit away; the lexicon is kept in the run (tunery/spelling.py)")


class AdversarialConfig(_Part):
    """Adversarial training on the word embeddings (train/adversarial.py)."""

    method: Literal["none", "fgm", "pgd", "freelb"] = Field(
        "none", description="fgm: also train on embeddings moved against the model (2 passes a step); pgd: moved "
        "by `steps` projected ascent steps (steps + 1 passes); freelb: the mean gradient of `steps` perturbed "
        "passes, no clean pass (steps passes)"
    )
    epsilon: float = Field(
        0.05, gt=0, lt=1, description="size of each text's perturbation (pgd, freelb: the radius of its ball), "
        "relative to the L2 norm of its word embeddings"
    )
    steps: int = Field(3, ge=1, le=32, description="pgd, freelb: ascent steps K")
    step_size: float | None = Field(
        None, gt=0, lt=1, description="pgd, freelb: each ascent step's length, in the unit of epsilon; "
        "default 2 * epsilon / steps"
    )


class NoiseConfig(_Part):
    """Perturbed copies of the training texts with their gold labels (train/noise.py): training on
    text as attacks and careless typing change it. Training split only; seeded by train.seed."""

    copies: int = Field(0, ge=0, le=8, description="perturbed copies of each training text (0: off); each copy "
                        "costs one more pass over the training rows per epoch")
    typo: float = Field(0.2, ge=0, le=1, description="share of each copy's words given one typo (swap, delete, "
                        "insert, a keyboard neighbour), at least one word")
    synonym: float = Field(0.0, ge=0, le=1, description="share of each copy's words replaced by a random WordNet "
                           "synonym (stopwords and capitalised names kept); needs WordNet (Debian wordnet-base)")

    @model_validator(mode="after")
    def _something_to_do(self) -> NoiseConfig:
        if self.copies and not (self.typo or self.synonym):
            raise ValueError(f"copies: {self.copies} with typo: 0 and synonym: 0 makes exact copies: give "
                             f"train.noise.typo or train.noise.synonym a share above 0, or copies: 0")
        return self


class DPConfig(_Part):
    """Record-level differential privacy: DP-SGD (Abadi et al. 2016) on Opacus (train/dp.py). Each
    training row's gradient is clipped to max_grad_norm, Gaussian noise of std noise_multiplier *
    max_grad_norm is added to each step's sum, and epsilon (for delta) is reported by the RDP
    accountant. See docs/privacy.md."""

    noise_multiplier: float = Field(
        0.0, ge=0, le=1000, description="DP-SGD: the noise multiplier z (noise std z * max_grad_norm on each "
        "step's sum of clipped per-row gradients); 0: off. About 0.5-1.5 in practice; larger is more private"
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="DP-SGD: each training row's gradient is clipped to this L2 norm (replaces "
        "train.grad_clip)"
    )
    delta: float = Field(
        1e-5, gt=0, lt=1, description="DP-SGD: the delta that epsilon is reported for; keep it below 1 / training rows"
    )


class TrainConfig(_Part):
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    lr: float | None = Field(
        None, gt=0, description="peak learning rate; default: the backbone's recommended one, else 5e-5"
    )
    head_lr: float | None = Field(None, gt=0, description="learning rate of the new head")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="layer-wise lr decay: each layer down trains at this times the lr above"
    )
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float | None = Field(
        1.0, gt=0, description="clip each step's gradient to this L2 norm (null: off); not applied under train.dp, "
        "whose per-row clip (train.dp.max_grad_norm) replaces it"
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="evaluate and keep an exponential moving average of the weights"
    )
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    dp: DPConfig = Field(default_factory=DPConfig)
    rdrop: float = Field(
        0.0, ge=0, description="R-Drop: weight of the divergence between two dropout passes of each batch "
        "(0: off; the paper used 0.1-1 for classification); 2x the step cost"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where the hardware runs it fast (AVX512-BF16/AMX, CUDA)"
    )
    group_by_length: bool = True
    cls_only_last_layer: bool = Field(
        True, description="train with the last encoder layer computed at [CLS] only, the one position a "
        "BERT-family classifier reads (1.09x a step with MiniLM; cls_only.py): the same logits, gradients and "
        "dropout masks as the full layer, so the same run for a seed. Prediction always uses it")
    seed: int = Field(42, ge=0, le=SEED_MAX)
    eval_every_steps: int | None = Field(None, ge=1, description="default: once per epoch")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="default: at each eval")
    early_stopping_patience: int | None = Field(3, ge=1, description="evals without improvement")
    metric: str | None = Field(None, description="validation metric to select on; task default")
    pos_weight_max: float | None = Field(
        10.0, ge=1, description="multi-label: weigh each label's positives in the loss by "
        "sqrt(negatives / positives), at most this; null: unweighted"
    )
    multilabel_loss: Literal["bce", "focal", "asl"] = Field(
        "bce", description="multi-label: bce (binary cross-entropy), focal (gamma 2) or asl (asymmetric loss, "
        "Ridnik et al. 2021); see train/losses.py"
    )
    label_prior_bias: bool = Field(
        True, description="multi-label: start each label's output bias at the logit of its (weighted) "
        "frequency in training instead of 0 (probability 0.5)"
    )
    log_every_steps: int = Field(20, ge=1)
    num_threads: int | None = Field(None, ge=1, le=THREADS_MAX, description="torch threads; default all cores")
    progress: bool = True
    keep_checkpoints: bool = Field(
        False, description="keep checkpoints/ (the last and best training state) when the run completes; "
        "by default only model/ (the best weights) is kept"
    )

    @model_validator(mode="after")
    def _one_robustness_objective(self) -> TrainConfig:
        if self.rdrop and self.adversarial.method != "none":
            raise ValueError(f"rdrop: {self.rdrop} and adversarial.method: {self.adversarial.method} together are not "
                             f"supported (R-Drop doubles the clean pass that the adversarial step builds on); "
                             f"set one of them: train.rdrop: 0 or train.adversarial.method: none")
        return self

    @model_validator(mode="after")
    def _dp_sgd_alone(self) -> TrainConfig:
        """DP-SGD's guarantee rests on each training row adding one clipped gradient to a step: what
        adds more, or mixes the rows of a batch, is refused with the reason and the fix."""
        z = self.dp.noise_multiplier
        if not z:
            return self
        off = "or train.dp.noise_multiplier: 0 (DP-SGD off)"
        if self.adversarial.method != "none":
            raise ValueError(f"dp.noise_multiplier: {z} with adversarial.method: {self.adversarial.method} is not "
                             f"supported (the adversarial passes add gradients that per-row clipping does not see "
                             f"as one row's); set train.adversarial.method: none {off}")
        if self.rdrop:
            raise ValueError(f"dp.noise_multiplier: {z} with rdrop: {self.rdrop} is not supported (R-Drop's "
                             f"divergence term couples two passes of each row in one doubled batch); set "
                             f"train.rdrop: 0 {off}")
        if self.noise.copies:
            raise ValueError(f"dp.noise_multiplier: {z} with noise.copies: {self.noise.copies} is not supported: "
                             f"each text would train as {self.noise.copies + 1} rows, and the guarantee, per row, "
                             f"would not hold for the text; set train.noise.copies: 0 {off}")
        if self.precision == "bf16":
            raise ValueError(f"dp.noise_multiplier: {z} with precision: bf16 is not supported (per-row gradients "
                             f"are computed in fp32); set train.precision: fp32 or auto (fp32 under DP-SGD)")
        return self


class EvaluateConfig(_Part):
    baseline: bool = True
    n_errors: int = Field(20, ge=0, description="most confident mistakes listed in the report")
    calibration_bins: int = Field(10, ge=2, le=1000)
    figures: bool = Field(True, description="draw the report's plots (about a second a report); false: tables only")
    explanations: int = Field(
        8, ge=0, le=50, description="predictions explained word by word in the report (the most confident "
        "mistakes, 5 of 8, then correct ones; Integrated Gradients, occlusion for ONNX runs; at most 30 s); 0: none"
    )


class AugmentConfig(_Part):
    """Text-level augmentation for distillation: copies of each training text, changed without
    external data, that the teacher labels (TinyBERT's and DistilBERT's task distillation gain much
    of their accuracy from such transfer data)."""

    copies: int = Field(0, ge=0, le=32, description="augmented copies of each training text (0: none)")
    mask_prob: float = Field(0.1, ge=0, lt=1, description="share of words replaced by the mask token")
    drop_prob: float = Field(0.1, ge=0, lt=1, description="share of words dropped")
    span_prob: float = Field(0.3, ge=0, le=1, description="chance a copy is a contiguous n-gram sub-span "
                             "(at least half the words) before masking and dropping")
    synonym_prob: float = Field(0.0, ge=0, lt=1, description="share of words replaced by a random WordNet synonym "
                                "(the teacher labels the copy, so the meaning may move); needs WordNet (Debian "
                                "wordnet-base)")
    joins: int = Field(0, ge=0, le=32, description="copies of each training text followed by another training "
                       "text drawn at random, unchanged, which the teacher labels: inputs longer than the training "
                       "texts, for when the texts to predict are longer (sentences after phrases); single-text tasks")
    seed: int | None = Field(None, description="the seed the copies are drawn with (default: train.seed): fix it to "
                             "train other seeds on the same copies (their teacher labels cached)")

    @model_validator(mode="after")
    def _shares(self):
        total = self.mask_prob + self.drop_prob + self.synonym_prob
        if total >= 1:
            raise ValueError(f"mask_prob {self.mask_prob} + drop_prob {self.drop_prob} + synonym_prob "
                             f"{self.synonym_prob} = {total:g} would change every word; keep their sum below 1")
        return self


class DistillConfig(_Part):
    """Knowledge distillation (tunery distill): the loss is alpha * CE(gold) + (1 - alpha) * T^2 *
    KL(teacher || student) at temperature T; rows without a gold label (augmented, unlabelled) get the
    teacher's term only."""

    teacher: str | None = Field(None, description="the teacher: a run directory, run name or registry name")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the gold-label loss (1 - alpha: the teacher's)")
    temperature: float = Field(2.0, gt=0, le=100, description="softmax temperature of both models in the KL term")
    unlabelled: str | None = Field(None, description="a file of unlabelled texts the teacher labels (csv, tsv, jsonl, "
                                   "parquet, or txt: one text per line)")
    unlabelled_column: str | None = Field(None, description="its text column; default: the training text column")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    layers: int | None = Field(None, ge=1, description="a student built from the teacher's lower K layers")
    intermediate: Literal["auto", "on", "off"] = Field(
        "auto", description="also match hidden states and attention maps (auto: where teacher and student share "
        "the tokenizer and hidden size)")
    hidden_weight: float = Field(1.0, ge=0, description="weight of the hidden-state MSE term")
    attention_weight: float = Field(1.0, ge=0, description="weight of the attention-map MSE term")


# federated.server_lr when it is not set, by strategy (FedAdam's eta as in Reddi et al. 2021; FedAvgM's
# step as in Hsu et al. 2019, momentum 0.9)
SERVER_LR_DEFAULT = {"fedadam": 0.01, "fedavgm": 1.0}


class FederatedConfig(_Part):
    """`tunery federate`: training across clients whose data stays with them (federated/)."""

    clients: int | None = Field(None, ge=2, le=64, description="clients made by splitting data.train "
                                "(partition); leave out when client_data lists each client's own file")
    client_data: list[str] | None = Field(None, description="each client's own labelled file (2 or more), "
                                          "instead of splitting data.train")
    partition: Literal["iid", "dirichlet"] = Field(
        "iid", description="how data.train is split: iid (a seeded shuffle) or dirichlet (each label's rows "
        "shared out by Dir(alpha): non-IID)")
    alpha: float = Field(0.5, gt=0, le=1000, description="dirichlet: concentration; small gives each client few labels")
    min_rows: int = Field(8, ge=1, description="dirichlet: the fewest rows a client may get (drawn again below it)")
    rounds: int = Field(3, ge=1, le=1000)
    local_epochs: float = Field(1.0, gt=0, description="each client's training per round, in epochs of its data")
    local_steps: int | None = Field(None, ge=1, description="each client's optimizer steps per round (instead "
                                    "of local_epochs)")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the clients trained each round")
    lr_scale: float | None = Field(
        None, gt=0, le=100, description="lora updates with train.lr unset: the default LoRA rate times this; "
        "default: the clients trained per round, at most 8 (the mean of K clients' updates moves like one step "
        "of a K-times batch); full updates keep the centralised rate")
    min_clients: int = Field(2, ge=1, description="the fewest clients a round needs (it fails below)")
    round_timeout: float = Field(600, gt=0, description="seconds a round waits for its clients")
    strategy: Literal["fedavg", "fedavgm", "fedprox", "fedadam", "trimmed_mean", "krum"] = "fedavg"
    mu: float = Field(0.01, ge=0, description="fedprox: weight of the proximal term (mu/2)*||w - w_global||^2")
    server_lr: float | None = Field(
        None, gt=0, le=100, description="the server optimizer's learning rate: fedadam's eta (default 0.01), "
        "fedavgm's step on the mean update (default 1.0); other strategies have none (configs saved before "
        "fedavgm carry 0.01 here for every strategy, so it is not refused)")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="fedavgm: momentum of the server's steps across rounds")
    trim: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: share cut from each end, per coordinate")
    krum_malicious: int = Field(1, ge=0, description="krum: the bad clients it must withstand (f)")
    keep: Literal["best", "last"] = Field(
        "best", description="the global model the run keeps: best (the round whose model scored best on the "
        "clients' validation rows, as a centralised run keeps its best checkpoint) or last (the final round's)")
    updates: Literal["lora", "full"] = Field(
        "lora", description="what clients send: lora (the adapters and the head: far fewer bytes) or full")
    dp_noise: float = Field(0.0, ge=0, le=100, description="client-level differential privacy: the noise "
                            "multiplier z (Gaussian noise of std z * dp_clip / clients per round on the mean "
                            "update); 0: off")
    dp_clip: float = Field(1.0, gt=0, description="client-level DP: each client's update (its difference from "
                           "the global model) is clipped to this L2 norm")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="client-level DP: the delta that epsilon is reported for")
    secure_aggregation: bool = Field(
        False, description="Flower's SecAgg+: the server learns only the weighted sum of the updates, never one "
        "client's (fedavg, fedavgm, fedprox, fedadam; not with the robust strategies or dp_noise, which need each update)")
    secagg_threshold: int | None = Field(
        None, ge=2, description="secure_aggregation: shares needed to remove a client's mask, so the clients that "
        "may drop in a round are those sampled minus this; default a majority of those sampled")
    secagg_clip: float = Field(8.0, gt=0, le=1e4, description="secure_aggregation: each sent value must lie in "
                               "[-secagg_clip, secagg_clip] (quantised to 2^22 steps over that range)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="partition and client sampling; default train.seed")

    @model_validator(mode="after")
    def _one_source_of_client_data(self) -> FederatedConfig:
        if (self.clients is None) == (self.client_data is None):
            raise ValueError("give federated.clients (split data.train into that many clients) or "
                             "federated.client_data (one file per client), exactly one of them")
        if self.client_data is not None and len(self.client_data) < 2:
            raise ValueError(f"federated.client_data lists {len(self.client_data)} file: federated training "
                             f"needs 2 or more clients")
        n = self.n_clients
        if self.min_clients > n:
            raise ValueError(f"federated.min_clients {self.min_clients} is more than the {n} clients: lower it")
        if self.dp_noise and self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(f"federated.dp_noise works with strategy fedavg or fedprox (the noise is calibrated "
                             f"to a mean of clipped updates), not {self.strategy}: change one of them")
        if self.secure_aggregation and self.strategy not in ("fedavg", "fedavgm", "fedprox", "fedadam"):
            raise ValueError(f"federated.secure_aggregation works with strategy fedavg, fedavgm, fedprox or fedadam, not "
                             f"{self.strategy}: a robust strategy must see each client's update, which secure "
                             f"aggregation hides from the server; choose one of them")
        if self.secure_aggregation and self.dp_noise:
            raise ValueError("federated.secure_aggregation and federated.dp_noise do not go together: Flower's "
                             "client-level DP clips each update on the server, which secure aggregation hides; "
                             "for a privacy guarantee with secure aggregation use record-level DP (train.dp)")
        if self.secagg_threshold is not None and self.secagg_threshold > n:
            raise ValueError(f"federated.secagg_threshold {self.secagg_threshold} is more than the {n} clients: "
                             f"lower it")
        if self.strategy == "trimmed_mean" and int(self.trim * n) == 0:
            raise ValueError(f"federated.trim {self.trim} of {n} clients cuts no client from either end, so "
                             f"trimmed_mean would be a plain mean: set trim to at least {1 / n:.2f}")
        if self.strategy == "krum" and n < 2 * self.krum_malicious + 3:
            raise ValueError(f"federated.strategy krum withstands krum_malicious={self.krum_malicious} bad clients "
                             f"only with at least {2 * self.krum_malicious + 3} clients (2f + 3); {n} given")
        return self

    @property
    def n_clients(self) -> int:
        """The clients of the federation: `clients`, or one per `client_data` file."""
        return self.clients if self.clients is not None else len(self.client_data or [])

    @property
    def server_step(self) -> float | None:
        """The server optimizer's learning rate: server_lr, or the strategy's default (None: no server optimizer)."""
        return self.server_lr if self.server_lr is not None else SERVER_LR_DEFAULT.get(self.strategy)


class RunConfig(_Part):
    name: str | None = Field(None, description="run name; default: data stem + timestamp")
    output_dir: str = "runs"
    data: DataConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    federated: FederatedConfig | None = Field(None, description="tunery federate: clients, rounds, strategy")
    search: dict[str, dict[str, Any]] | None = Field(
        None, description="tunery tune: the settings to search, by dotted key, e.g. {train.lr: {log: [1e-5, 5e-4]}}; "
        "kinds: log, float, int (a [low, high] range) or choice (a list); empty: defaults that fit the backbone"
    )

    @field_validator("search")
    @classmethod
    def _check_search(cls, search: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        if search:
            for key, spec in search.items():
                check_search_param(key, spec)
        return search

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        return None if name is None else check_run_name(name)

    @field_validator("output_dir")
    @classmethod
    def _check_output_dir(cls, output_dir: str) -> str:
        if not output_dir or "\0" in output_dir:
            raise ValueError("output_dir must be a directory path, e.g. runs")
        return output_dir

    @model_validator(mode="after")
    def _dp_sgd_without_teacher(self) -> RunConfig:
        if self.train.dp.noise_multiplier and self.distill.teacher:
            raise ValueError(f"train.dp.noise_multiplier: {self.train.dp.noise_multiplier} with distill.teacher is "
                             f"not supported (the teacher, trained on the same rows without DP-SGD, would pass "
                             f"them on through its soft labels); leave distill.teacher out or set "
                             f"train.dp.noise_multiplier: 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SEARCH_KINDS = ("log", "float", "int", "choice")
# Settings a search may not vary: they name the run or where it goes, or hold the search itself.
_NOT_SEARCHABLE = ("name", "output_dir", "search")


def searchable_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Every dotted config key a `search:` section may name (the leaves of RunConfig)."""
    model = model or RunConfig
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if not prefix and name in _NOT_SEARCHABLE:
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += searchable_keys(ann, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def check_search_param(key: str, spec: Any) -> None:
    """One `search:` entry: a known dotted key and exactly one kind with a valid range or list;
    ValueError naming the key, the problem and the valid forms."""
    valid = searchable_keys()
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{key!r} is not a setting that can be searched{hint}; searchable keys: {', '.join(valid)}")
    forms = "log: [low, high], float: [low, high], int: [low, high] or choice: [a, b, ...]"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"{key}: give exactly one of {forms} (got {_shown(spec)})")
    kind, values = next(iter(spec.items()))
    if kind not in SEARCH_KINDS:
        close = difflib.get_close_matches(str(kind), SEARCH_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{key}: unknown kind {kind!r}{hint}; valid kinds: {', '.join(SEARCH_KINDS)}")
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ValueError(f"{key}: choice takes a non-empty list of values, e.g. choice: [16, 32] "
                             f"(got {_shown(values)})")
        return
    number = int if kind == "int" else (int, float)
    if (not isinstance(values, list) or len(values) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)):
        example = "[1, 5]" if kind == "int" else "[1e-5, 5e-4]"
        raise ValueError(f"{key}: {kind} takes [low, high] with {'whole ' if kind == 'int' else ''}numbers, e.g. "
                         f"{kind}: {example} (got {_shown(values)})")
    low, high = values
    if not low < high:
        raise ValueError(f"{key}: {kind}: [{low}, {high}]: low must be below high")
    if kind == "log" and low <= 0:
        raise ValueError(f"{key}: log: [{low}, {high}]: a log range must be above 0; use float: for a range "
                         "that starts at 0")


def check_run_name(name: str) -> str:
    """A run name must be usable as one directory name on any file system."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise ValueError("a run name must be a plain directory name: no '/', '\\' or control characters, "
                         "not starting with '.'")
    size = len(name.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        raise ValueError(f"a run name becomes a directory name: this one is {size} bytes (UTF-8), "
                         f"use at most {NAME_MAX_BYTES}")
    return name


def _model_at(path: tuple[Any, ...], root: type[BaseModel] = RunConfig) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `path` (a pydantic error location);
    sections may be models or mappings of models (``plans: {name: Plan}``)."""
    model: type[BaseModel] = root
    keys = list(path[:-1])
    while keys:
        field = model.model_fields.get(str(keys.pop(0)))
        if field is None:
            return None
        ann = field.annotation
        if get_origin(ann) is dict and keys:
            ann = get_args(ann)[1]
            keys.pop(0)  # the mapping's own key
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


_HINTS = {  # the fix, where the bound alone does not say it
    "train.num_threads": "; leave it unset to use every core",
    "train.seed": f"; use a seed from 0 to {SEED_MAX}",
    "data.split_seed": f"; use a seed from 0 to {SEED_MAX}",
    "train.lr": "; leave it unset for the backbone's recommended rate",
}


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def format_errors(err: ValidationError, source: str, *, root: type[BaseModel] = RunConfig) -> str:
    """One line per problem: the file, the dotted key, what is wrong, and the closest valid key."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            model = _model_at(e["loc"], root)
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(e["loc"][-1]), valid, n=1)
            hint = f" (did you mean {'.'.join([*map(str, e['loc'][:-1]), close[0]])!r}?)" if close else ""
            lines.append(f"{source}: unknown key {loc!r}{hint}; valid keys here: {', '.join(valid)}")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key {loc!r}")
        elif not loc:  # a check across sections (RunConfig's own validators): the message names the keys
            lines.append(f"{source}: {e['msg'].removeprefix('Value error, ')}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            hint = _HINTS.get(loc, "")
            lines.append(f"{source}: {loc}: {msg} (got {_shown(e.get('input'))}){hint}")
    return "\n".join(lines)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML (`3e-5`, `true`, `[a, b]`)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. train.lr=3e-5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            where = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML ({where}); "
                              f"quote it or write it as YAML, e.g. {key.strip()}=3e-5 or "
                              f"{key.strip()}=[a, b]") from None
        if isinstance(value, str) and raw.strip().lower() in ("none", "null"):
            value = None
        _set_path(tree, key.strip(), value)
    return tree


def config_from_dict(tree: dict[str, Any], *, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def read_yaml_mapping(path: Path, sections: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); ConfigError naming the file if not."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections ({sections})")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply overrides, validate. Data paths are resolved against the config's
    directory, so a config can travel with its data."""
    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found; `tunery init DATA` writes a starter") from None
    except OSError as err:  # a symlink loop, a name too long, no permission
        raise ConfigError(f"config file {str(path)[:120]!r}: {err.strerror}; give the path of a YAML file "
                          "(`tunery init DATA` writes a starter)") from None
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a file; give the path of a YAML file")
    tree = apply_overrides(read_yaml_mapping(path, "data, train, ..."), overrides)
    data = tree.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            value = data.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                candidate = path.parent / value
                # absolute, so the saved config re-runs (and resumes) from any directory
                data[key] = str((candidate if candidate.exists() or not Path(value).exists() else Path(value)).resolve())
    return config_from_dict(tree, source=str(path))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
