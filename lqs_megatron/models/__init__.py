"""Models: the Mistral/Llama decoder, its config, and the Hugging Face state-dict adapter."""
