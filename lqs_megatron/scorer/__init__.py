"""The data scorer: training data (data.py), model (model.py), training (train.py), corpus scoring (infer.py).

Supporting modules: predict.py (length-bucketed prediction shared by validation and
scoring), metrics.py (MSE, Pearson, Spearman), compat.py (tokenizer fingerprints and checks).
"""
