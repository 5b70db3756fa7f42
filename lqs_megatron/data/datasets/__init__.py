"""The indexed-dataset format and the operations on datasets that training, annotation and the scorer import."""
