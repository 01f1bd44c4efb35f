"""Tests for the tiny checkpoint fixtures in ``fixtures/``.

The converter's tests trust these checkpoints to be real, deterministic and
internally consistent (every layout holds the same tensors; the remote-code
families are exact re-layouts of a transformers-loadable reference), so those
properties are checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fixtures import (
    FAMILIES,
    FUSED_EXPERTS,
    MOE_FAMILIES,
    MOE_VARIANTS,
    VARIANTS,
    build,
    checkpoints,
    reference,
)
from fixtures.tokenizer import IM_END, IM_START, TOKENIZER_VOCAB_SIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
NATIVE_FAMILIES = tuple(f for f in FAMILIES if f not in checkpoints.REMOTE)
REMOTE_FAMILIES = tuple(checkpoints.REMOTE)
PROMPT = "The keeper climbed the stairs and lit the lamp for the fishing boats."
EXPECTED_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "baichuan": "BaiChuanForCausalLM",
    "baichuan2": "BaichuanForCausalLM",
    "qwen": "QWenLMHeadModel",
}


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every family, variant and reference, built once for the session."""
    out = tmp_path_factory.mktemp("fixtures")
    for family in FAMILIES:
        for variant in VARIANTS:
            build(family, out, variant)
        reference(family, out)
    return out


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def prompt_ids(directory: Path) -> torch.Tensor:
    return AutoTokenizer.from_pretrained(directory)(PROMPT, return_tensors="pt").input_ids


# --------------------------------------------------------------------------- layout / API


def test_directory_names(root: Path) -> None:
    for family in FAMILIES:
        assert build(family, root) == root / family
        for variant in VARIANTS[1:]:
            assert build(family, root, variant) == root / f"{family}-{variant}"
        expected_ref = root / family if family in NATIVE_FAMILIES else root / f"{family}-reference"
        assert reference(family, root) == expected_ref
    assert not list(root.glob(".*.tmp")), "temporary build dirs left behind"


def test_unknown_family_or_variant_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build("gpt2", tmp_path)
    with pytest.raises(ValueError):
        build("llama", tmp_path, "gguf")


def test_build_is_idempotent_and_repairs_incomplete(tmp_path: Path) -> None:
    path = build("llama", tmp_path)
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build("llama", tmp_path) == path
    assert weights.stat().st_mtime_ns == stamp, "a complete fixture must not be rebuilt"

    (path / checkpoints.MARKER).unlink()  # simulate an interrupted build
    weights.write_bytes(b"garbage")
    assert build("llama", tmp_path) == path
    assert (path / checkpoints.MARKER).is_file()
    assert load_file(weights)  # rewritten


def test_every_variant_carries_same_metadata_files(root: Path) -> None:
    for family in FAMILIES:
        base = root / family
        for variant in VARIANTS[1:]:
            other = root / f"{family}-{variant}"
            for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
                assert (other / name).read_bytes() == (base / name).read_bytes(), (family, variant, name)


def test_config_records_bf16_and_architecture(root: Path) -> None:
    for family in FAMILIES:
        config = json.loads((root / family / "config.json").read_text())
        assert config["architectures"] == [EXPECTED_ARCH[family]]
        dtype_key = "torch_dtype" if family in REMOTE_FAMILIES else "dtype"  # transformers 5 writes "dtype"
        assert config[dtype_key] == "bfloat16"
        assert config["vocab_size"] == 320 and config["hidden_size"] == 64
        assert config["tie_word_embeddings"] is False
        assert "num_key_value_heads" not in config or family in NATIVE_FAMILIES


# --------------------------------------------------------------------------- determinism


def test_deterministic_across_processes(root: Path, tmp_path: Path) -> None:
    """A fresh interpreter (fresh RNG, fresh caches) writes identical bytes."""
    other = tmp_path / "again"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "fixtures", str(other)], check=True, env=env, cwd=REPO_ROOT, capture_output=True)
    files = sorted(p.relative_to(root) for p in root.glob("*/*.safetensors"))
    assert len(files) > 3 * len(FAMILIES)
    for rel in files:
        assert (other / rel).read_bytes() == (root / rel).read_bytes(), rel


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_variant_matches_single_file(root: Path, family: str) -> None:
    single = read_safetensors(root / family)
    directory = root / f"{family}-sharded"
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(single)
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    for shard in shards:
        with safe_open(shard, "pt") as f:
            assert all(index["weight_map"][k] == shard.name for k in f.keys())
    assert_same_tensors(read_safetensors(directory), single)


@pytest.mark.parametrize("family", FAMILIES)
def test_bin_variants_match_safetensors(root: Path, family: str) -> None:
    single = read_safetensors(root / family)
    state = torch.load(root / f"{family}-bin" / "pytorch_model.bin", weights_only=True)
    assert_same_tensors(state, single)
    pointers = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(set(pointers)) == len(pointers), "tensors must not share storage"
    assert all(t.is_contiguous() for t in state.values())

    directory = root / f"{family}-bin-sharded"
    shards = sorted(directory.glob("pytorch_model-*-of-*.bin"))
    assert len(shards) >= 2
    index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        part = torch.load(shard, weights_only=True)
        assert all(index["weight_map"][k] == shard.name for k in part)
        merged.update(part)
    assert_same_tensors(merged, single)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_native_family_loads_with_transformers(root: Path, family: str) -> None:
    directory = root / family
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert type(model).__name__ == EXPECTED_ARCH[family]
    assert model.dtype == torch.bfloat16
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == model.config.eos_token_id
    assert model.config.pad_token_id < model.config.vocab_size
    expected = dict(model.state_dict())
    for variant in VARIANTS[1:]:
        other = AutoModelForCausalLM.from_pretrained(root / f"{family}-{variant}")
        assert_same_tensors(dict(other.state_dict()), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_are_well_spread_and_fp16_safe(root: Path, family: str) -> None:
    """Greedy decoding must not hinge on near-ties; values must fit fp16."""
    directory = reference(family, root)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        out = model(prompt_ids(directory), output_hidden_states=True)
    logits = out.logits[0]
    assert torch.isfinite(logits).all()
    assert logits.std(dim=-1).min() > 1.0
    assert max(p.abs().max() for p in model.parameters()) < 10
    assert max(h.abs().max() for h in out.hidden_states) < 1000  # fp16 max is 65504


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_no_constant_tensors(root: Path, family: str) -> None:
    """Norm weights and biases are random (not ones/zeros); no embedding row is zero."""
    tensors = read_safetensors(root / family)
    for name, tensor in tensors.items():
        assert tensor.float().std() > 0, name
    assert (tensors["model.embed_tokens.weight"].abs().sum(dim=-1) > 0).all()


def test_tokenizer(root: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(root / "llama")
    assert len(tokenizer) <= TOKENIZER_VOCAB_SIZE
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == "<|endoftext|>"
    text = "Héllo wörld, 42 zebras! 你好"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    ids = tokenizer(chat).input_ids
    assert tokenizer.convert_tokens_to_ids(IM_START) in ids and tokenizer.convert_tokens_to_ids(IM_END) in ids


# --------------------------------------------------------------------------- remote-code families


def test_baichuan_w_pack_unfuses_to_reference(root: Path) -> None:
    for family in ("baichuan", "baichuan2"):
        tensors = read_safetensors(root / family)
        ref = read_safetensors(reference(family, root))
        hidden = json.loads((root / family / "config.json").read_text())["hidden_size"]
        unfused = {}
        for name, tensor in tensors.items():
            if name.endswith("self_attn.W_pack.weight"):
                q, k, v = tensor.split(hidden, dim=0)
                prefix = name.removesuffix("W_pack.weight")
                unfused.update({f"{prefix}q_proj.weight": q, f"{prefix}k_proj.weight": k, f"{prefix}v_proj.weight": v})
            else:
                unfused[name] = tensor
        if family == "baichuan2":  # compared separately below
            unfused["lm_head.weight"] = ref["lm_head.weight"]
        assert_same_tensors(unfused, ref)


def test_baichuan2_norm_head_relation(root: Path) -> None:
    stored = load_file(root / "baichuan2" / "model.safetensors")["lm_head.weight"].float()
    ref = load_file(reference("baichuan2", root) / "model.safetensors")["lm_head.weight"].float()
    ref_norms = ref.norm(dim=-1)
    assert torch.allclose(ref_norms, torch.ones_like(ref_norms), atol=1e-2)
    scale = stored.norm(dim=-1) / ref_norms
    assert scale.min() >= 0.5 - 1e-2 and scale.max() <= 2.0 + 1e-2
    assert scale.std() > 0.1, "the per-row factors should actually vary"
    # normalizing the stored rows reproduces the reference up to bf16 rounding (2**-8 relative)
    assert torch.allclose(F.normalize(stored, dim=-1), ref, atol=2 * 2**-8, rtol=0)
    assert not torch.allclose(stored, ref, atol=1e-2)


def test_qwen_unfuses_to_reference(root: Path) -> None:
    tensors = read_safetensors(root / "qwen")
    ref = read_safetensors(reference("qwen", root))
    config = json.loads((root / "qwen" / "config.json").read_text())
    assert config["intermediate_size"] == 2 * ref["model.layers.0.mlp.up_proj.weight"].shape[0]
    width = config["kv_channels"] * config["num_attention_heads"]
    unfused = {
        "model.embed_tokens.weight": tensors.pop("transformer.wte.weight"),
        "model.norm.weight": tensors.pop("transformer.ln_f.weight"),
        "lm_head.weight": tensors.pop("lm_head.weight"),
    }
    for i in range(config["num_hidden_layers"]):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = tensors.pop(f"{src}attn.c_attn.{kind}").split(width, dim=0)
            unfused.update({f"{dst}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v))})
        unfused[f"{dst}self_attn.o_proj.weight"] = tensors.pop(f"{src}attn.c_proj.weight")
        unfused[f"{dst}input_layernorm.weight"] = tensors.pop(f"{src}ln_1.weight")
        unfused[f"{dst}post_attention_layernorm.weight"] = tensors.pop(f"{src}ln_2.weight")
        unfused[f"{dst}mlp.up_proj.weight"] = tensors.pop(f"{src}mlp.w1.weight")
        unfused[f"{dst}mlp.gate_proj.weight"] = tensors.pop(f"{src}mlp.w2.weight")
        unfused[f"{dst}mlp.down_proj.weight"] = tensors.pop(f"{src}mlp.c_proj.weight")
    assert not tensors, f"unexpected tensors: {sorted(tensors)}"
    assert_same_tensors(unfused, ref)
    assert all(ref[f"model.layers.{i}.self_attn.q_proj.bias"].abs().sum() > 0 for i in range(2))


@pytest.mark.parametrize("family", REMOTE_FAMILIES)
def test_remote_code_stand_in_reproduces_reference_logits(root: Path, family: str) -> None:
    """The shipped stand-in modeling file, run through trust_remote_code, matches the reference."""
    directory = root / family
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32)
    assert type(model).__name__ == EXPECTED_ARCH[family]
    ref = AutoModelForCausalLM.from_pretrained(reference(family, root), dtype=torch.float32)
    ids = prompt_ids(directory)
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    # baichuan2 re-normalizes bf16-rounded rows, so it only matches to bf16 precision
    atol = 0.05 if family == "baichuan2" else 1e-4
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


# --------------------------------------------------------------------------- mixture of experts

#: (class, sparse layers) of each MoE fixture, as fixtures/families.py documents them.
MOE_EXPECTED = {"qwen3_moe": ("Qwen3MoeForCausalLM", [0, 2]), "qwen2_moe": ("Qwen2MoeForCausalLM", [1, 3]),
                "mixtral": ("MixtralForCausalLM", [0, 1])}


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_moe_family_loads_the_same_model_from_every_layout(checkpoint, family: str) -> None:
    """Every layout (the Hub's per-expert names, sharded, .bin, and v5's fused 3-D experts) is one
    model: 8 experts, top-2, sparse exactly where documented, well-spread fp16-safe logits."""
    cls, sparse = MOE_EXPECTED[family]
    model = AutoModelForCausalLM.from_pretrained(checkpoint(family), dtype=torch.float32)
    assert type(model).__name__ == cls and model.config.num_experts_per_tok == 2
    layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]
    assert layers == sparse
    assert all(model.model.layers[i].mlp.experts.gate_up_proj.shape[0] == 8 for i in sparse)
    expected = dict(model.state_dict())
    for variant in MOE_VARIANTS[1:]:
        other = AutoModelForCausalLM.from_pretrained(checkpoint(family, variant), dtype=torch.float32)
        assert_same_tensors(dict(other.state_dict()), expected)
    names = set(read_safetensors(checkpoint(family)))  # save_pretrained: the Hub's per-expert names
    assert any(".experts.7." in n for n in names) and not any(n.endswith("gate_up_proj") for n in names)
    fused = set(read_safetensors(checkpoint(family, FUSED_EXPERTS)))
    assert f"model.layers.{sparse[0]}.mlp.experts.gate_up_proj" in fused
    with torch.no_grad():
        logits = model(prompt_ids(checkpoint(family))).logits[0]
    assert logits.std(dim=-1).min() > 1.0 and max(p.abs().max() for p in model.parameters()) < 10
