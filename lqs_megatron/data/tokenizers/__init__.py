"""Tokenizer backends: loading, the word cache, gigatoken, fingerprints, training a tokenizer."""
