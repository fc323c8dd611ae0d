"""Checkpoints: where every model folder is written, checked and read.

- save.py: every save mode (full, ZeRO-3/FSDP gathered, LoRA adapter, projector only; synthetic);
- layout.py: the published-compatible layout (tower folder, tokenizer fields, companion files);
- reload_check.py: the worker's reload probe after a save;
- headers.py: the one safetensors-header checker (preflight before training, the flow after);
- staging.py: the Trainer's checkpoint-N folders (written aside, renamed, rotated, resumed from);
- adapters.py: LoRA adapter files and the other trained weights beside them;
- loading.py: the three save layouts, their record, and `load_trained`.
"""
