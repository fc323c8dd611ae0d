"""Uses vulture cannot see (scripts/dead_code.py; patterns go to ignore_names in pyproject.toml).

Every entry is set on, or read by, code outside this repository, or is API the tests use.
"""
# ruff: noqa: B018

_ = object()

# Attributes set on third-party objects, which their library reads.
_.inference_mode, _.base_model_name_or_path  # peft LoraConfig (checkpoint/loading.py, model/lora.py)
_.eval_strategy, _.warmup_steps  # transformers TrainingArguments (config/arguments.py)
_.model_accepts_loss_kwargs, _.fsdp_plugin  # transformers Trainer, accelerate state (training/trainer.py)
_.config_class  # transformers PreTrainedModel (model/modeling.py)
_.normalizer  # tokenizers Tokenizer (model/tokenizer.py)
_.pix_fmt, _.thread_count, _.bit_rate  # PyAV output stream (synthetic/video_qa.py)

# The published forward() signature, kept so published callers' keyword arguments still bind.
_.depths, _.poses, _.intrinsics, _.image_sizes, _.return_dict, _.modalities, _.task_ids

# API the tests use: summaries of the synthetic writers, a check result as a Problem record.
_.shard_paths, _.image_folder, _.annotations_path, _.to_problem
