"""Text sources, slicing and calibration sampling on the real Austen novels."""

import pytest
import torch

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.sources import disjoint_specs, load_text, tokenize
from pqorder.errors import AssetError, ConfigError


def test_austen_novels_are_real_text():
    emma = load_text("austen:emma").text
    assert emma.startswith("EMMA") and "Woodhouse" in emma and len(emma) > 800_000
    assert "Elizabeth" in load_text("austen:pride").text


def test_slices_are_disjoint_and_cover_the_text():
    full = load_text("austen:persuasion").text
    a = load_text("austen:persuasion[0:0.5]").text
    b = load_text("austen:persuasion[0.5:1]").text
    assert a + b == full and a and b
    assert disjoint_specs("austen:emma", "austen:emma") == (
        "austen:emma[0:0.5]",
        "austen:emma[0.5:1]",
    )
    assert disjoint_specs("austen:pride", "austen:emma") == ("austen:pride", "austen:emma")


def test_pydoc_and_file_sources(tmp_path):
    assert "for" in load_text("pydoc").text
    path = tmp_path / "t.txt"
    path.write_text("hello world\n")
    assert load_text(f"file:{path}").text == "hello world\n"


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("austen:ulysses", AssetError),
        ("gutenberg", ConfigError),
        ("file:/no/such/file.txt", AssetError),
        ("austen:emma[0.6:0.2]", ConfigError),
        ("austen:emma[0:2]", ConfigError),
    ],
)
def test_bad_sources(spec, error):
    with pytest.raises(error):
        load_text(spec)


def test_calibration_is_deterministic_and_shaped(smol):
    spec = CalibrationSpec("austen:pride", n_samples=8, seqlen=64, seed=0)
    a = sample_calibration(spec, smol.tokenizer)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, sample_calibration(spec, smol.tokenizer))
    other = CalibrationSpec("austen:pride", n_samples=8, seqlen=64, seed=1)
    assert not torch.equal(a, sample_calibration(other, smol.tokenizer))


@pytest.mark.parametrize(("n", "seqlen"), [(0, 64), (4, 1)])
def test_bad_calibration(smol, n, seqlen):
    with pytest.raises(ConfigError):
        sample_calibration(CalibrationSpec("austen:pride", n, seqlen), smol.tokenizer)
    with pytest.raises(ConfigError, match="context"):
        CalibrationSpec(seqlen=10_000).validate(max_context=8192)


def test_tokenized_texts_are_reused_per_tokenizer_and_text(smol):
    text = load_text("austen:emma").text
    ids = tokenize(smol.tokenizer, text)
    assert tokenize(smol.tokenizer, text) is ids  # the second evaluation does not re-tokenize
    fresh = smol.tokenizer(text[:5000], add_special_tokens=False)["input_ids"]
    assert tokenize(smol.tokenizer, text[:5000]).tolist() == fresh  # another text: its own ids
    assert ids[: len(fresh) - 5].tolist() == fresh[:-5]  # a prefix tokenizes alike (cut aside)
