"""Evaluation harness: lm-evaluation-harness request types over our models, tasks, metrics."""
