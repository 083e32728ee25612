import pytest

from contracts.manifest import load_fleet, sha256_file, verify_files
from policies import DocumentError

STARTER = "controlplane/starter/fleet.yaml"


def test_starter_economics_match_the_practice_tier_table():
    fleet = load_fleet(STARTER)
    per_1k = {t.name: t.variant().economics.usd_per_input_token * 1000 for t in fleet.tiers}
    assert per_1k["S"] == pytest.approx(0.00012, rel=0.05)
    assert per_1k["M"] == pytest.approx(0.00063, rel=0.01)
    assert per_1k["L"] == pytest.approx(0.0079, rel=0.01)
    assert 60 < per_1k["L"] / per_1k["S"] < 70
    assert fleet.tier_names == ["S", "M", "L"]


def test_tiers_are_data_any_number_ordered_by_rank():
    text = open(STARTER).read().replace("rank: 0", "rank: 5")
    fleet = load_fleet(text)
    assert fleet.tier_names == ["M", "L", "S"]


def test_duplicate_rank_and_bad_hash_are_refused():
    with pytest.raises(DocumentError, match="ranks must be distinct"):
        load_fleet(open(STARTER).read().replace("rank: 1", "rank: 0"))
    bad = open(STARTER).read().replace(
        "weights: models/coder-small", "weights: models/coder-small\n          files: {a.bin: xyz}"
    )
    with pytest.raises(DocumentError) as exc:
        load_fleet(bad)
    assert "64 lowercase hex" in str(exc.value)


def test_verify_files_names_the_mismatching_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"weights")
    good = {"w.bin": sha256_file(tmp_path / "w.bin")}
    assert verify_files(tmp_path, good) == []
    (tmp_path / "w.bin").write_bytes(b"tampered")
    [(name, problem)] = verify_files(tmp_path, good)
    assert name.endswith("w.bin") and "!= manifest" in problem
    [(name, problem)] = verify_files(tmp_path, {"gone.bin": "0" * 64}, exact=False)
    assert name.endswith("gone.bin") and problem == "missing"
    # Exact (the default): w.bin, which nothing pins now, is named too.
    assert [(n.rsplit("/", 1)[-1], p.split(":")[0])
            for n, p in verify_files(tmp_path, {"gone.bin": "0" * 64})] == [
        ("gone.bin", "missing"), ("w.bin", "not pinned by the manifest")]
