"""``lqs pipeline``: the whole chain from raw jsonl to a pretrained, evaluated model.

The pipeline is a plan of public ``lqs`` commands (:mod:`.plan`), run one after the other
by :mod:`.runner`, which skips steps whose outputs are complete and fingerprints match, so a
stopped pipeline resumes at the first unfinished step. :mod:`.report` reads the results.
"""
