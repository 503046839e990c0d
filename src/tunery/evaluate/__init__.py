"""Evaluation: metrics (pure functions), the TF-IDF baseline, error analysis, the HTML report.

Heavy imports (scikit-learn, scipy, matplotlib) happen inside the functions that need them, so
importing this package is cheap.
"""

from tunery.evaluate.baseline import baseline_metrics, baseline_scores
from tunery.evaluate.errors import most_confident_mistakes
from tunery.evaluate.metrics import (
    classification_metrics,
    compute_metrics,
    default_metric,
    greater_is_better,
    metric_names,
    metric_value,
    multilabel_metrics,
    regression_metrics,
    tune_threshold,
)
from tunery.evaluate.report import render_report, write_report
from tunery.evaluate.verdict import compare_to_baseline, likely_causes, make_verdict, verdict_line

__all__ = [
    "baseline_metrics",
    "baseline_scores",
    "classification_metrics",
    "compare_to_baseline",
    "compute_metrics",
    "default_metric",
    "greater_is_better",
    "likely_causes",
    "make_verdict",
    "metric_names",
    "metric_value",
    "most_confident_mistakes",
    "multilabel_metrics",
    "regression_metrics",
    "render_report",
    "tune_threshold",
    "verdict_line",
    "write_report",
]
