"""What a policy is asked and how an answer is scored, with no model in it: the shipped prompt
sets and their licences (`data/`), the prompt format, GenEval's rules, the GenEval2 template,
Soft-TIFA, and the toy world (scenes, grammar, judge).

It stands on `flowarena.core` only, so models, rewards, benchmarks and reports can all read
it (tests/test_layers.py checks).
"""
