"""Explanations: which words drove a prediction (IG, SHAP, LIME, leave-one-out occlusion), mapped
back to the words of the text, with each method's measured faithfulness.

    import tunery
    model = tunery.load("runs/my-run")
    e = model.explain("the plot was thin but the acting superb", method="ig")
    [(w.text, round(w.score, 3)) for w in e.top(3)]

Captum runs IG, LIME and Kernel SHAP; the word alignment and the faithfulness metrics are ours.
Captum is an optional engine: `pip install 'tunery[explain]'`.
"""

from tunery.explain.core import Explanation, WordScore, explain
from tunery.explain.methods import METHODS

__all__ = ["METHODS", "Explanation", "WordScore", "explain"]
