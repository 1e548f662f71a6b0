"""Tokenization for training: prompt and response ids per example (`Encoded`), and generated responses as
training targets."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

@dataclass
class Encoded:
    """One tokenized example: prompt ids (never in the loss) and response ids (ending in EOS)."""

    prompt_ids: list[int]
    response_ids: list[int]
    index: int = 0  # position in the example list it came from
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)



IGNORE_INDEX = -100  # label value the losses skip (prompt and padding positions)


def close_response(generated: Sequence[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """A generated response as training targets: EOS appended only when the model stopped by itself.

    `generated` is cut at EOS (which it excludes). A response that used the whole `max_new_tokens` budget was
    truncated, so it gets no EOS, as a cut reference loses its EOS in `encode_examples` (MiniLLM); otherwise the
    student would be taught to stop where the budget, not the teacher, ended the answer. An empty one is [EOS].

    Returns the response ids: `generated` + [eos_id], or `generated` alone when it used the whole budget.
    """
    ids = list(generated)
    truncated = len(ids) >= max_new_tokens
    return ids if truncated else ids + [eos_id]


def encode_examples(examples: Sequence[dict], tokenizer, *, max_prompt_len: int, max_len: int,
                    drop_long: bool = True) -> tuple[list[Encoded], int]:
    """Tokenize examples: prompt ids, and response ids = tokens(output) + [eos].

    Prompts longer than `max_prompt_len` are dropped and counted (MiniLLM), or truncated to it when
    drop_long=False (DistiLLM). The response is cut so prompt + response <= max_len; a cut response
    loses its EOS, as in MiniLLM.

    `examples`: records with `prompt` and `output` (`load_instructions`).
    `max_prompt_len`: the longest prompt in tokens, < max_len.
    `drop_long`: drop longer prompts (True) or truncate them (False).
    Returns (encoded, n_dropped); Encoded.index is the position in `examples`, Encoded.meta['id'] the example's id.
    """
    if max_prompt_len >= max_len:
        raise ValueError(f"max_prompt_len ({max_prompt_len}) must be < max_len ({max_len}) "
                         "to leave room for a response")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    # Prompt and response are tokenized apart (MiniLLM tokenizes prompt + response and cuts): the template
    # ends in "\n", where GPT-2's pre-tokenizer splits anyway, so with GPT-2 the ids differ only when the
    # response starts with whitespace (1 of the 15,401 real rows).
    prompt_ids = _token_ids(tokenizer, [ex["prompt"] for ex in examples])
    output_ids = _token_ids(tokenizer, [ex["output"] for ex in examples])
    encoded, n_dropped = [], 0
    for i, (ex, prompt, output) in enumerate(zip(examples, prompt_ids, output_ids)):
        if len(prompt) > max_prompt_len:
            if drop_long:
                n_dropped += 1
                continue
            prompt = prompt[:max_prompt_len]
        response = (output + [eos])[: max_len - len(prompt)]
        encoded.append(Encoded(prompt_ids=prompt, response_ids=response, index=i, meta={"id": ex.get("id", str(i))}))
    return encoded, n_dropped


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]

