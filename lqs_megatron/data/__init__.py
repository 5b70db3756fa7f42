"""Data layer: indexed datasets, tokenizers, preprocessing, sampling, batching."""
