"""Curation: selection (which sequences to keep) and ordering (in what order to train on them).

- :mod:`lqs_megatron.curate.selection`: ``top-r``, ``top-k``, ``threshold`` -> sorted indices;
- :mod:`lqs_megatron.curate.ordering`: ``folding``, ``sorting``, ``shuffle`` and DELT's later
  ``zigzag``, ``stair``, ``saw``, ``segment`` -> a permutation, optionally jittered (window shuffle);
- :mod:`lqs_megatron.curate.apply`: apply either to an indexed dataset or a scored jsonl file.

Definitions, tie-breaking and rounding rules are in ``docs/curation.md``.
"""
