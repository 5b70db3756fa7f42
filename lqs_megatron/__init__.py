"""lqs_megatron: Learnability-Quality Score data scoring, selection and ordering for LLM pretraining."""

__version__ = "0.1.0"
