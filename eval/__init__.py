"""Evaluation: leave-one-out full-ranking metrics and baselines. Import submodules (`from eval.metrics import
ndcg_at_k`), never `import eval`: the package name shadows the builtin."""
