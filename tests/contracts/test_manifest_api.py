"""API-priced tiers in the fleet manifest: a second economics form, no weights to pin."""

from __future__ import annotations

import pytest

from contracts.documents import dump_yaml
from contracts.manifest import load_fleet
from policies import DocumentError

HOSTED = ("{gpus: 1, usd_per_gpu_hour: 3.6, prefill_tokens_per_s: 1000, "
          "decode_tokens_per_s: 500}")
MIXED = """
apiVersion: autopilot/v1
kind: FleetManifest
spec:
  pricing: {cached_input_discount: 0.5}
  tiers:
    - {name: S, rank: 0, model: s, variants: [{name: bf16, weights: w/s, economics: %s}]}
    - name: X
      rank: 1
      model: vendor-large
      variants: [{name: api, economics: %s}]
"""
PER_TOKEN = ("{usd_per_1m_input_tokens: 3, usd_per_1m_cached_input_tokens: 0.3, "
             "usd_per_1m_output_tokens: 15}")


def fleet(api: str = PER_TOKEN, hosted: str = HOSTED):
    return load_fleet(MIXED % (hosted, api))


def refused(text: str) -> str:
    with pytest.raises(DocumentError) as exc:
        load_fleet(text)
    return str(exc.value)


def test_per_token_api_prices_are_per_million_tokens():
    f = fleet()
    e = f.economics("X")
    assert e.api_priced and f.tier("X").variant().api_priced
    assert not f.economics("S").api_priced
    assert e.usd_per_input_token == pytest.approx(3e-6)
    assert e.usd_per_output_token == pytest.approx(15e-6)
    assert e.usd_per_cached_input_token(0.5) == pytest.approx(0.3e-6)  # its own, not 50%
    assert e.usd_per_call == 0.0
    # 1,000 in (400 cached), 100 out: 600 * 3e-6 + 400 * 0.3e-6 + 100 * 15e-6.
    assert e.call_usd(1000, 400, 100, cached_input_discount=0.5) == pytest.approx(
        600 * 3e-6 + 400 * 0.3e-6 + 100 * 15e-6)
    # No GPUs, no replicas, nothing provisioned.
    assert (e.gpus_per_replica, e.provisioned_gpus, e.usd_per_hour) == (0.0, 0.0, 0.0)
    assert f.tier("X").variant().weights is None and f.tier("X").variant().files == {}


def test_cached_price_defaults_to_the_fleet_discount_and_per_request_adds_per_call():
    e = fleet("{usd_per_1m_input_tokens: 2, usd_per_1m_output_tokens: 8, "
              "usd_per_request: 0.01}").economics("X")
    assert e.usd_per_cached_input_token(0.5) == pytest.approx(1e-6)
    assert e.call_usd(1000, 0, 0, cached_input_discount=0.5) == pytest.approx(0.002 + 0.01)
    only = fleet("{usd_per_request: 0.04}").economics("X")
    assert only.call_usd(5000, 0, 900, cached_input_discount=0.5) == pytest.approx(0.04)


def test_one_form_or_the_other_with_errors_naming_the_field():
    both = refused(MIXED % (HOSTED, ("{usd_per_1m_input_tokens: 3, usd_per_1m_output_tokens: 15,"
                                     " gpus: 2}")))
    assert "spec.tiers.1.variants.0.economics" in both
    assert "self-hosted gpus" in both and "usd_per_1m_input_tokens" in both
    neither = refused(MIXED % (HOSTED, "{}"))
    assert "no prices" in neither and "usd_per_request" in neither and "gpus" in neither
    half = refused(MIXED % (HOSTED, "{usd_per_1m_input_tokens: 3}"))
    assert "usd_per_1m_output_tokens is missing" in half
    hosted_half = refused(MIXED % ("{gpus: 1, usd_per_gpu_hour: 2}", PER_TOKEN))
    assert "spec.tiers.0.variants.0.economics" in hosted_half
    assert "prefill_tokens_per_s, decode_tokens_per_s" in hosted_half
    dear_cache = refused(MIXED % (HOSTED, ("{usd_per_1m_input_tokens: 1, "
                                           "usd_per_1m_cached_input_tokens: 2, "
                                           "usd_per_1m_output_tokens: 2}")))
    assert "usd_per_1m_cached_input_tokens (2.0) exceeds usd_per_1m_input_tokens" in dear_cache
    replicas = refused(MIXED % (HOSTED, "{usd_per_request: 0.01, replicas: 2}"))
    assert "replicas: an API-priced variant provisions no GPUs" in replicas
    negative = refused(MIXED % (HOSTED, "{usd_per_request: -1}"))
    assert "usd_per_request" in negative


def test_weights_absent_only_for_an_api_tier():
    no_weights = refused((MIXED % (HOSTED, PER_TOKEN)).replace("{name: bf16, weights: w/s,",
                                                                "{name: bf16,"))
    assert "variant 'bf16': weights is required for a self-hosted variant" in no_weights
    api_weights = refused((MIXED % (HOSTED, PER_TOKEN)).replace("{name: api,",
                                                                 "{name: api, weights: w/x,"))
    assert "variant 'api' is API-priced: it has no weights" in api_weights
    pinned = refused((MIXED % (HOSTED, PER_TOKEN)).replace(
        "{name: api,", "{name: api, files: {a.bin: '" + "0" * 64 + "'},"))
    assert "it has no files" in pinned
    adapter = refused((MIXED % (HOSTED, PER_TOKEN)).replace(
        "{name: api,", "{name: api, adapters: [{name: lora, path: a}],"))
    assert "it has no adapters" in adapter


def test_each_form_dumps_only_its_own_fields_and_round_trips():
    f = fleet()
    hosted = f.spec.model_dump(mode="json")["tiers"][0]["variants"][0]["economics"]
    assert set(hosted) == {"gpus", "usd_per_gpu_hour", "prefill_tokens_per_s",
                           "decode_tokens_per_s", "replicas", "capacity_type"}
    api = f.spec.model_dump(mode="json")["tiers"][1]["variants"][0]["economics"]
    assert set(api) == {"usd_per_1m_input_tokens", "usd_per_1m_cached_input_tokens",
                        "usd_per_1m_output_tokens"}
    again = load_fleet(dump_yaml(f))
    assert again.content_hash == f.content_hash and again.economics("X") == f.economics("X")
