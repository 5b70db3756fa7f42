"""Models: the Mistral/Llama/Qwen2 decoder, its config, and the Hugging Face state-dict adapter."""
