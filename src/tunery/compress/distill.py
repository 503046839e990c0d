"""`tunery distill --teacher RUN --student BACKBONE|RUN`: a small student trained on the teacher's
data with the teacher's knowledge (tunery.distillation, tunery.train.distill), as a normal training
run: it resumes after a crash, is evaluated beside the TF-IDF baseline, and can be compressed in turn.

The student's config is the teacher's data, task and evaluation sections (so the splits are the
same rows), the student's backbone with tunery's default recipe for it, and a `distill:` section;
`overrides` (`--set KEY=VALUE`) change any of it, as for `tunery train`.
"""

from __future__ import annotations

from pathlib import Path

from tunery.errors import ConfigError, RunError


def distill_config(teacher: str | Path, student: str, *, layers: int | None = None, unlabelled: str | None = None,
                   name: str | None = None, output_dir: str | None = None, overrides: list[str] = ()):
    """The RunConfig of a distillation run (validated; nothing is read but the teacher's files)."""
    from tunery.config import apply_overrides, config_from_dict, load_config
    from tunery.distillation import teacher_run
    from tunery.refs import find_run
    from tunery.rundir import META

    run, meta = teacher_run(str(teacher))
    tcfg = load_config(run / "config.yaml")
    if layers:
        if meta.get("backend", "transformers") != "transformers":
            raise ConfigError("--layers builds the student from the teacher's weights: give a transformer teacher run")
        backbone = str((run / "model").resolve())
    else:
        backbone = student
        if (Path(student) / META).is_file() or not Path(student).exists():
            try:  # a student run (a directory, run name or registry name) continues from its weights
                backbone = str((find_run(student) / "model").resolve())
            except RunError:
                if (Path(student) / META).is_file():
                    raise
                # not a run: a backbone alias or hub id
    tree = {"name": name or f"{run.name}-distilled", "output_dir": output_dir or str(run.parent),
            "data": tcfg.data.model_dump(mode="json"), "task": tcfg.task.model_dump(mode="json"),
            "evaluate": tcfg.evaluate.model_dump(mode="json"), "model": {"backbone": backbone},
            "distill": {"teacher": str(run.resolve()), "layers": layers, "unlabelled": unlabelled}}
    return config_from_dict(apply_overrides(tree, list(overrides)), source="tunery distill")


def distill_run(teacher: str | Path, student: str, *, layers: int | None = None, unlabelled: str | None = None,
                name: str | None = None, output_dir: str | None = None, overrides: list[str] = (), callbacks=None,
                store=None) -> Path:
    """Train the student; returns its completed run directory."""
    from tunery.pipeline import train

    cfg = distill_config(teacher, student, layers=layers, unlabelled=unlabelled, name=name, output_dir=output_dir,
                         overrides=overrides)
    return train(cfg, callbacks=callbacks, store=store)
