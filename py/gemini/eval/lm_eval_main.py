"""`lm_eval` with the `gemini` model registered (see lm_eval_adapter.py)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")   # local task data only

from lm_eval.__main__ import cli_evaluate  # noqa: E402

from gemini.eval import lm_eval_adapter  # noqa: E402,F401  (registers --model gemini)

if __name__ == "__main__":
  cli_evaluate()
