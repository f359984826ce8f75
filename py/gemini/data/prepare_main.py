"""`bazel run //py/gemini/data:prepare -- --out=DIR` (see prepare.py)."""

import sys

from gemini.data import prepare

if __name__ == "__main__":
  prepare.main(sys.argv[1:])
