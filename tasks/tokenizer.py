"""Stage 4, Tokenizer Setup: load, add <image>/<memory>, check the chat template and masking."""

from __future__ import annotations

from streamvln_model.arguments import ModelArguments
from streamvln_model.builder import load_prepared_tokenizer, tokenizer_path
from streamvln_model.conversation import tokenize_conversation
from streamvln_model.data.errors import DataValidationError
from streamvln_model.evaluation import action_token_ids
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.types import ResolvedArguments, TokenizerPlan


def tokenizer_paths(inputs: dict) -> list[str]:
    return [tokenizer_path(ModelArguments(**inputs["arguments"].model))]


@planning_task("tokenizer-setup", reads=tokenizer_paths)
def setup_tokenizer(arguments: ResolvedArguments) -> TokenizerPlan:
    model_args, _, _ = parsed(arguments)
    path = tokenizer_path(model_args)
    tokenizer, spec = load_prepared_tokenizer(model_args)
    try:
        action_token_ids(tokenizer)
        probe = [{"from": "human", "value": "<image>."}, {"from": "gpt", "value": "↑STOP"}]
        tokenize_conversation(tokenizer, spec, probe)
    except (ValueError, KeyError) as err:
        raise DataValidationError([f"{path}: tokenizer unusable for navigation ({err})"]) from err
    return TokenizerPlan(
        path=path,
        vocab_size=len(tokenizer),
        image_token_id=spec.image_token_id,
        memory_token_id=spec.memory_token_id,
        always_learned=sorted(spec.always_learned),
    )
