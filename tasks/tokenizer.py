"""Stage 4, Tokenizer Setup: load, add <image>/<memory>, check the chat template and masking."""

from __future__ import annotations

from streamvln_model.config.arguments import ModelArguments
from streamvln_model.config.preflight import PreflightError, tokenizer_problems
from streamvln_model.model.builder import load_prepared_tokenizer, tokenizer_path
from tasks.caching import planning_task
from tasks.model import parsed
from tasks.types import ResolvedArguments, TokenizerPlan


def tokenizer_paths(inputs: dict) -> list[str]:
    return [tokenizer_path(ModelArguments(**_model_fields(inputs["arguments"].model)))]


def _model_fields(model: dict) -> dict:
    return {k: model[k] for k in ("model_name_or_path", "tokenizer_name_or_path")}


@planning_task("tokenizer-setup", reads=tokenizer_paths)
def setup_tokenizer(arguments: ResolvedArguments) -> TokenizerPlan:
    resolved = parsed(arguments)
    problems = tokenizer_problems(resolved)
    if problems:
        raise PreflightError(problems)
    tokenizer, spec = load_prepared_tokenizer(resolved.model)
    return TokenizerPlan(
        path=tokenizer_path(resolved.model),
        vocab_size=len(tokenizer),
        image_token_id=spec.image_token_id,
        memory_token_id=spec.memory_token_id,
        always_learned=sorted(spec.always_learned),
    )
