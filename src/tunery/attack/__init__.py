"""Offline attacks that measure how a model holds when its input is perturbed (`tunery attack`).

TextAttack, the usual library, needs counter-fitted word vectors, the Universal Sentence Encoder and
NLTK data downloaded at run time, and pulls TensorFlow: it does not run offline. tunery builds the
two attacks that matter for typed customer text, black-box (any backend, ONNX included), on its own
word splitter: `typo` (DeepWordBug's character edits) and `synonym` (PWWS over WordNet 3.0, read
from Debian's wordnet-base with NLTK's reader). See search.py for the algorithms and constraints.
"""

from tunery.attack.run import AttackError, SentenceEncoder, attack_run, attack_texts
from tunery.attack.search import RECIPES, Attack, Outcome, Settings

__all__ = ["RECIPES", "Attack", "AttackError", "Outcome", "SentenceEncoder", "Settings", "attack_run", "attack_texts"]
