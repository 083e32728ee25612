"""The reference fleet's training script: tokenizer, quantization, --quick run, pinned files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from contracts.manifest import load_fleet, resolve_path, verify_files
from training.ladder import heldout_suite, ladder_markdown, summarize
from training.model import (
    BOS,
    EOS,
    VOCAB,
    build_tokenizer,
    check_coverage,
)
from training.quantize import qmax, quantize_model_, roundtrip
from training.train import (
    TrainConfig,
    encode_examples,
    run,
)
from workload.tasks import (
    DIFFICULTIES,
    FAMILIES,
    format_example,
    generate_tasks,
    split_of,
)

COMMITTED = Path(__file__).resolve().parents[2] / "training" / "fleet"


# ------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_every_generated_example():
    tok = build_tokenizer()
    texts = [format_example(t) for t in generate_tasks(3000, seed=11)]
    check_coverage(texts)
    for text in texts[:300]:
        ids = tok(text)["input_ids"]
        assert ids[0] == VOCAB[BOS]
        assert len(ids) == len(text) + 1  # one token per character, plus <bos>
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_matches_the_training_encoding(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    task = generate_tasks(1, seed=3)[0]
    text = format_example(task)
    ids, labels = encode_examples([text], [len(task.prompt)])
    expected = reloaded(text)["input_ids"] + [VOCAB[EOS]]
    assert ids[0, : len(expected)].tolist() == expected
    # The loss covers the answer, its newline and <eos>, nothing of the prompt.
    taught = [i for i in labels[0].tolist() if i != -100]
    assert reloaded.decode(taught, skip_special_tokens=True) == task.answer + "\n"


def test_coverage_check_names_the_missing_character():
    with pytest.raises(ValueError, match="é"):
        check_coverage(["eval: é"])


# ---------------------------------------------------------------------- quantization
def test_roundtrip_error_is_within_half_a_step_per_row():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=g)
    w[3] = 0.0  # an all-zero row stays exact
    for bits in (8, 4):
        restored, codes, scale = roundtrip(w, bits)
        assert codes.abs().max() <= qmax(bits)
        step = scale.unsqueeze(1)
        assert torch.all((restored - w).abs() <= step / 2 + 1e-6)
        assert torch.equal(restored[3], w[3])
    err8 = (roundtrip(w, 8)[0] - w).norm() / w.norm()
    err4 = (roundtrip(w, 4)[0] - w).norm() / w.norm()
    assert err8 < 0.01 < err4 < 0.2
    assert not torch.equal(roundtrip(w, 8)[0], roundtrip(w, 4)[0])


def test_roundtrip_refuses_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        roundtrip(torch.zeros(3), 8)
    with pytest.raises(ValueError, match="bits"):
        qmax(1)


def test_quantize_model_touches_block_linears_only():
    from transformers import LlamaForCausalLM

    from training.model import TIER_SHAPES, llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(TIER_SHAPES[0], dtype="float32"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    errors = quantize_model_(model, 4)
    after = model.state_dict()
    assert errors and all(0 < e < 0.3 for e in errors.values())
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"],
                           after["model.layers.0.mlp.up_proj.weight"])


# --------------------------------------------------------------------- --quick run
@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    outs = [tmp_path_factory.mktemp(f"quick{i}") for i in range(2)]
    for out in outs:
        run(TrainConfig(out=out, seed=5, quick=True, measure_ladder=False))
    return outs


def _all_hashes(out: Path) -> dict[str, dict[str, str]]:
    fleet = load_fleet(out / "fleet.yaml")
    return {f"{t.name}/{v.name}": v.files for t in fleet.tiers for v in t.variants}


def test_quick_run_writes_a_verifiable_manifest(quick_runs):
    out = quick_runs[0]
    fleet = load_fleet(out / "fleet.yaml")
    assert fleet.tier_names == ["S", "M", "L"]
    for tier in fleet.tiers:
        assert [v.name for v in tier.variants] == ["bf16", "int8", "int4"]
        assert tier.default_variant == "bf16"
        for variant in tier.variants:
            assert not Path(variant.weights).is_absolute()
            root = resolve_path(variant.weights, out)
            assert {"config.json", "model.safetensors", "generation_config.json",
                    "tokenizer.json", "tokenizer_config.json"} <= set(variant.files)
            assert verify_files(root, variant.files) == []
    # int8 and int4 are really different weights from the base and from each other
    s = {v.name: v.files["model.safetensors"] for v in fleet.tier("S").variants}
    assert len(set(s.values())) == 3
    # a tampered file is caught
    victim = resolve_path(fleet.tier("M").variant("int4").weights, out) / "config.json"
    victim.write_text(victim.read_text() + " ")
    problems = verify_files(victim.parent, fleet.tier("M").variant("int4").files)
    assert [p for p, _ in problems] == [str(victim)]


def test_quick_run_is_deterministic(quick_runs):
    first, second = quick_runs
    a, b = _all_hashes(first), _all_hashes(second)
    a["M/int4"].pop("config.json"), b["M/int4"].pop("config.json")  # tampered above
    assert a == b


def test_economics_follow_the_tier_table(quick_runs):
    fleet = load_fleet(quick_runs[0] / "fleet.yaml")
    s, l_ = fleet.economics("S"), fleet.economics("L")
    assert (s.gpus, s.decode_tokens_per_s, l_.gpus, l_.decode_tokens_per_s) == (1, 6000, 8, 700)
    assert fleet.economics("S", "int4").decode_tokens_per_s == pytest.approx(6000 * 2.2)
    assert "stand-in" in (fleet.metadata.description or "")


# ---------------------------------------------------------------------------- ladder
def test_heldout_suite_is_distinct_heldout_prompts_in_every_cell():
    suite = heldout_suite(3, seed=1)
    assert len(suite) == 3 * len(FAMILIES) * len(DIFFICULTIES)
    assert len({t.task_id for t in suite}) == len(suite)
    assert all(split_of(t) == "heldout" for t in suite)


def test_summary_and_markdown_from_rows():
    rows = [
        {"tier": "S", "variant": "bf16", "family": "expr_eval", "difficulty": 1, "n": 4,
         "passed": 3, "pass_rate": 0.75},
        {"tier": "S", "variant": "bf16", "family": "expr_eval", "difficulty": 3, "n": 4,
         "passed": 1, "pass_rate": 0.25},
    ]
    summary = summarize(rows)
    assert summary == {"S": {"bf16": {"all": 0.5, "d1": 0.75, "d3": 0.25}}}
    text = ladder_markdown({"results": rows, "summary": summary, "per_cell": 4,
                            "evaluator": "transformers", "base_variant": "bf16"})
    assert "| S | bf16 | 0.75 | nan | 0.25 | 0.50 |" in text


# ------------------------------------------------------------------ committed fleet
def test_committed_fleet_verifies_against_committed_files():
    manifest = COMMITTED / "fleet.yaml"
    if not manifest.exists():
        pytest.fail(f"{manifest} is missing: run `autopilot fleet train`")
    fleet = load_fleet(manifest)
    assert fleet.tier_names == ["S", "M", "L"]
    for tier in fleet.tiers:
        for variant in tier.variants:
            root = resolve_path(variant.weights, manifest.parent)
            assert root.is_relative_to(COMMITTED)
            assert verify_files(root, variant.files) == [], f"{tier.name}/{variant.name}"
    ladder = json.loads((COMMITTED / "ladder.json").read_text())
    assert ladder["manifest_hash"] == fleet.content_hash
    summary = ladder["summary"]
    # the competence ladder the routing relies on: L clearly beats S, S is easy-band capable
    assert summary["L"]["bf16"]["all"] > summary["S"]["bf16"]["all"] + 0.1
    assert summary["S"]["bf16"]["d1"] > summary["S"]["bf16"]["d3"]
