"""Every fixture family converts; the output loads in transformers and computes what the source did;
verify passes; the manifest's hashes are the files' bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import conversion_cache
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixtures as fx
from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.manifest import MANIFEST_NAME
from ascend_convert.verify import verify

NATIVE = ("llama", "mistral", "qwen2", "qwen3", "phi3")
REMOTE_CODE = ("baichuan", "baichuan2", "qwen")
PROMPTS = ("Hello world, this is a test", "The quick brown fox")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, checkpoint):
    """converted(family, soc, variant) -> output dir, converted once per module."""
    get = conversion_cache(tmp_path_factory.mktemp("converted"), checkpoint)
    return lambda family, soc="ascend910a", variant="safetensors": get(family, variant, soc=soc)


def logits_of(model, tokenizer) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer(p, return_tensors="pt")).logits[0] for p in PROMPTS]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("family", fx.FAMILIES)
def test_manifest_hashes_are_the_bytes_written(converted, family):
    out = converted(family)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*manifest["files"], MANIFEST_NAME])
    for name, record in manifest["files"].items():
        assert record == {"sha256": sha256(out / name), "size": (out / name).stat().st_size}, name
    seen = 0
    for name, record in manifest["tensors"].items():
        with safe_open(str(out / record["file"]), "pt") as f:
            tensor = f.get_tensor(name)
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        assert hashlib.sha256(raw).hexdigest() == record["sha256"], name
        assert [str(tensor.dtype).removeprefix("torch."), list(tensor.shape)] == [record["dtype"], record["shape"]]
        seen += 1
    assert seen == manifest["summary"]["tensors"] > 0
    assert manifest["target"] == {"soc": "ascend910a", "dtype": "float16", "layout": "default"}
    assert manifest["source"]["family"] == family


@pytest.mark.parametrize("family", fx.FAMILIES)
def test_verify_against_the_source_passes(converted, checkpoint, family):
    out = converted(family)
    report = verify(out, source=checkpoint(family))
    assert report.ok and report.source_checked == report.tensors_checked > 0
    # bf16's 8-bit mantissa fits in fp16's 11 bits: only values in fp16's subnormal range round,
    # by at most half the subnormal step.
    assert report.max_abs_error <= 2.0 ** -25


@pytest.mark.parametrize("family", NATIVE)
def test_fp16_output_loads_in_transformers_and_matches_source_logits(converted, checkpoint, family):
    src, out = checkpoint(family), converted(family)
    config = json.loads((out / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "float16"
    tokenizer = AutoTokenizer.from_pretrained(out)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert {p.dtype for p in AutoModelForCausalLM.from_pretrained(out, dtype="auto").parameters()} == {torch.float16}
    for a, b in zip(logits_of(ref, tokenizer), logits_of(got, tokenizer)):
        assert a.std() > 0.5  # fixture logits are spread out, so a broken weight shows
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2 * float(a.abs().max()))
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("family", NATIVE)
def test_bf16_to_ascend910b_is_bit_identical(converted, checkpoint, family):
    src, out = checkpoint(family), converted(family, soc="ascend910b")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["target"]["dtype"] == "bfloat16"  # auto: the chip has bf16 and the source is bf16
    ref = AutoModelForCausalLM.from_pretrained(src).state_dict()
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
    assert all(not t["transforms"] for t in manifest["tensors"].values())


@pytest.mark.parametrize("family", REMOTE_CODE)
def test_remote_code_family_computes_its_reference(converted, checkpoint, fixture_root, family):
    """Baichuan/Qwen-v1 have no transformers class; their converted weights, read through the canonical
    view (W_pack/c_attn split, NormHead applied), must compute what the Llama/Qwen2 reference computes."""
    from ascend_convert.arch import find_spec
    from ascend_convert.hf_model import build_hf_model
    from ascend_convert.readers import open_checkpoint

    out = converted(family)
    for py in sorted(checkpoint(family).glob("*.py")):  # remote code travels with the weights
        assert (out / py.name).read_bytes() == py.read_bytes()
    reader = open_checkpoint(out)
    got = build_hf_model(reader, find_spec(reader.config()))
    ref_dir = fx.reference(family, fixture_root)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    for a, b in zip(logits_of(ref, tokenizer), logits_of(got, tokenizer)):
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2 * float(a.abs().max()))
        assert torch.equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.parametrize("variant", ["sharded", "bin", "bin-sharded"])
def test_every_input_variant_gives_the_same_tensors(converted, variant):
    base = json.loads((converted("qwen2") / MANIFEST_NAME).read_text())["tensors"]
    other = json.loads((converted("qwen2", variant=variant) / MANIFEST_NAME).read_text())["tensors"]
    assert {k: v["sha256"] for k, v in base.items()} == {k: v["sha256"] for k, v in other.items()}


def test_side_files_are_copied_unchanged(converted, checkpoint):
    src, out = checkpoint("llama"), converted("llama")
    copied = [p.name for p in src.iterdir() if p.name not in {"config.json", "model.safetensors"}
              and not p.name.startswith(".")]
    assert "tokenizer.json" in copied and "generation_config.json" in copied
    for name in copied:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_max_shard_size_writes_an_index_transformers_reads(tmp_path, checkpoint):
    src = checkpoint("llama")
    out = tmp_path / "out"
    result = convert(src, out, ConvertOptions(soc="ascend910b", max_shard_size="20KB"))
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) == result.manifest["summary"]["shards"] >= 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["weight_map"].keys() == result.manifest["tensors"].keys()
    ref = AutoModelForCausalLM.from_pretrained(src).state_dict()
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
