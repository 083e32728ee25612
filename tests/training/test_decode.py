"""The one greedy decoder's stop rule (training.decode), on a scripted model and a tiny Llama."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from serving.testing import char_tokenizer
from training.decode import STOP_TEXT, greedy_decode, stop_token_ids
from workload.tasks import extract_answer


class ScriptedModel:
    """``generate`` as transformers does it, but each prompt's next tokens come from a script:
    a row ends at its first stop id and is padded after it; all rows stop, or the budget."""

    def __init__(self, tokenizer, scripts: dict[str, list[int]]):
        self.tokenizer, self.scripts, self.calls = tokenizer, scripts, []

    def generate(self, *, input_ids, attention_mask, do_sample, max_new_tokens, eos_token_id,
                 pad_token_id):
        assert do_sample is False
        self.calls.append(input_ids.shape[0])
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m],
                                           skip_special_tokens=True)
            row, done = [], False
            for t in self.scripts[prompt][:max_new_tokens]:
                row.append(pad_token_id if done else t)
                done = done or t in eos_token_id
            rows.append(row)
        width = max(len(r) for r in rows)
        rows = [r + [pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_stop_ids_are_the_newline_token_then_eos():
    tok = char_tokenizer()
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("\n"), tok.eos_token_id]


def test_a_tokenizer_without_a_newline_token_stops_at_eos_only():
    class NoNewline:
        unk_token_id, eos_token_id = 3, 2

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

    assert stop_token_ids(NoNewline()) == [2]


def test_text_runs_through_the_first_stop_and_counts_it():
    tok = char_tokenizer()
    eos = tok.eos_token_id
    model = ScriptedModel(tok, {
        "1+1=": _ids(tok, "2\n7\n") + [eos],    # newline stop: kept in the text
        "say 7:": _ids(tok, "7") + [eos] + _ids(tok, "xx"),  # eos stop: counted, not shown
        "loop:": _ids(tok, "abcdefghij"),        # no stop: cut at the budget
        "nl:": _ids(tok, "\nabc"),               # stops at once: an empty answer
    })
    prompts = ["1+1=", "say 7:", "loop:", "nl:"]
    got = greedy_decode(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert [d.text for d in got] == ["2\n", "7", "abcdef", "\n"]
    assert [d.output_tokens for d in got] == [2, 2, 6, 1]
    assert [d.prompt_tokens for d in got] == [len(_ids(tok, p)) for p in prompts]
    assert model.calls == [3, 1]  # chunks of batch_size, order kept
    assert [extract_answer(d.text) for d in got] == ["2", "7", "abcdef", ""]


def test_on_a_real_model_the_text_is_what_decoding_every_new_token_gives(tmp_path):
    """The rule agrees with decoding the whole continuation (pad is special, so the padding
    after a stop vanishes): the ladder's transformers figures were measured that way."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                         head_dim=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    newline = tok.convert_tokens_to_ids(STOP_TEXT)
    with torch.no_grad():  # bias the output towards the newline so some rows stop early
        model.lm_head.weight[newline] *= 4
    prompts = [f"{i}*{i}=" for i in range(12)]
    got = greedy_decode(model, tok, prompts, max_new_tokens=8, batch_size=5)

    tok.padding_side = "left"
    whole = []
    for start in range(0, len(prompts), 5):
        enc = tok(prompts[start:start + 5], return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=8,
                                 eos_token_id=[newline, tok.eos_token_id],
                                 pad_token_id=tok.pad_token_id)
        whole += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [d.text for d in got] == whole
    assert any(d.output_tokens < 8 for d in got) and any(d.output_tokens == 8 for d in got)
    for d in got:
        assert STOP_TEXT not in d.text[:-1] and 1 <= d.output_tokens <= 8
