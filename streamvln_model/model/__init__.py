"""The model: config, Qwen2 + SigLIP + projector, tokenizer, chat templates, what trains, in which dtype."""
