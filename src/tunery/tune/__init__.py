"""Hyperparameter search (`tunery tune`): an Optuna 5 study whose storage is the store's database.

space.py reads the config's `search:` section; budget.py holds the time rules; study.py creates and
loads studies; trial.py runs one trial as one real tunery run in its own process; worker.py runs
trials until the study is done; report.py writes study.html. Optuna is imported inside these
modules only, so `import tunery` stays fast.
"""

from tunery.tune.budget import parse_duration
from tunery.tune.worker import StudyResult, join_study, resume_study, run_study

__all__ = ["StudyResult", "join_study", "parse_duration", "resume_study", "run_study"]
