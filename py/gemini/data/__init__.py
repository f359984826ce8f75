"""Data: bundled corpus, tokenizer, filters, shards and the loader's Python face (README.md)."""
