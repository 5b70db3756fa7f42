"""Preprocessing: raw corpora (jsonl, parquet, arrow) to indexed datasets and back, sharded runs."""
