"""Gemini-family JAX framework: configs, model, data, training, serving, export."""
