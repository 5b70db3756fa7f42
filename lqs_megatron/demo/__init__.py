"""The embedded demo: a corpus built from text that ships with Python (see :mod:`lqs_megatron.demo.corpus`)."""
