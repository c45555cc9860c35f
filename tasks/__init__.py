"""What a policy is asked and how an answer is scored, with no model in it: the shipped prompt
sets and their licences (`data/`), the prompt format, GenEval's rules, the GenEval2 template,
Soft-TIFA, and the toy world (scenes, grammar, judge).

It stands on `flowarena.core` only, so models, rewards, benchmarks and reports can all read
it (tests/test_layers.py checks).
"""

# The toy world registers the reader of result schema 1 (its evaluations, laid out flat), so
# whoever reads results through any part of `tasks` reads old runs too.
from flowarena.tasks.toyworld import metrics as _toy_metrics  # noqa: E402, F401
