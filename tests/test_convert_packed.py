"""`convert --layout packed --tp N [--nz]`: rank files split as the runtime splits (and served by it
with the tokens of the unsplit model), the vocabulary padded to N·16 with zero rows, FRACTAL_NZ tiles
that invert exactly, a manifest that covers every rank file and a verify that rebuilds each rank from
the source, a resumable run, and clear errors for a model that does not split."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ascend_convert.converter import ConvertOptions, convert
from ascend_convert.tp_layout import from_nz, nz_block, to_nz
from ascend_convert.verify import verify
from runtime import LLM, SamplingParams

PROMPTS = [[5, 77, 12, 190, 33], [250, 3, 3, 41, 9, 100, 200, 17, 64, 31, 8]]
GREEDY = SamplingParams(temperature=0, max_tokens=10)


@pytest.mark.parametrize(("shape", "dtype"), [((17, 33), torch.bfloat16), ((5, 3, 7), torch.float32),
                                              ((64, 100), torch.int8), ((1, 1), torch.float16), ((48, 32), torch.float16)])
def test_fractal_nz_tiles_as_designed_and_inverts_exactly(shape, dtype):
    g = torch.Generator().manual_seed(0)
    nd = (torch.randn(*shape, generator=g) * 40).to(dtype)
    nz = to_nz(nd)
    *lead, h, w = shape
    w0 = nz_block(dtype)
    assert w0 == 32 // nd.element_size()
    assert tuple(nz.shape) == (*lead, math.ceil(w / w0), math.ceil(h / 16), 16, w0)
    assert torch.equal(from_nz(nz, shape), nd)
    # element (i, j) sits in tile (j // w0, i // 16) at (i % 16, j % w0); the padding is zeros
    i, j = h - 1, w - 1
    assert torch.equal(nz[..., j // w0, i // 16, i % 16, j % w0], nd[..., i, j])
    assert int((nz != 0).sum()) == int((nd != 0).sum())


def test_packed_ranks_split_pad_and_serve_the_tokens_of_the_source(tmp_path):
    """A Qwen2-shaped model (q/k/v biases) with a vocabulary of 333: padded to 352 for 2 ranks."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=333, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    src = tmp_path / "src"
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(src)
    out = tmp_path / "packed"
    convert(src, out, ConvertOptions(layout="packed", tp=2, nz=True, dtype="float32"))
    manifest = json.loads((out / "ascend_manifest.json").read_text())
    assert {k: manifest["target"][k] for k in ("layout", "tp", "nz", "vocab_size", "padded_vocab_size")} == {
        "layout": "packed", "tp": 2, "nz": True, "vocab_size": 333, "padded_vocab_size": 352}
    assert set(manifest["files"]) >= {"tp2/rank0.safetensors", "tp2/rank1.safetensors", "config.json"}
    source = {k: v.float() for k, v in load_file(src / "model.safetensors").items()}
    for rank in range(2):
        with safe_open(str(out / f"tp2/rank{rank}.safetensors"), "pt") as f:
            meta, tensors = f.metadata(), {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118
        nd = json.loads(meta["nd_shapes"])
        assert (meta["tp_size"], meta["rank"], meta["padded_vocab_size"]) == ("2", str(rank), "352")
        qkv = from_nz(tensors["model.layers.0.self_attn.qkv.weight"], tuple(nd["model.layers.0.self_attn.qkv.weight"]))
        head = 16
        q = source["model.layers.0.self_attn.q_proj.weight"][rank * 2 * head:(rank + 1) * 2 * head]
        k = source["model.layers.0.self_attn.k_proj.weight"][rank * head:(rank + 1) * head]
        v = source["model.layers.0.self_attn.v_proj.weight"][rank * head:(rank + 1) * head]
        assert torch.equal(qkv, torch.cat([q, k, v]))
        assert torch.equal(tensors["model.layers.0.self_attn.qkv.bias"], torch.cat([
            source[f"model.layers.0.self_attn.{p}_proj.bias"][s] for p, s in
            (("q", slice(rank * 32, rank * 32 + 32)), ("k", slice(rank * 16, rank * 16 + 16)),
             ("v", slice(rank * 16, rank * 16 + 16)))]))
        o = from_nz(tensors["model.layers.0.self_attn.o.weight"], tuple(nd["model.layers.0.self_attn.o.weight"]))
        assert torch.equal(o, source["model.layers.0.self_attn.o_proj.weight"][:, rank * 32:(rank + 1) * 32])
        down = from_nz(tensors["model.layers.1.mlp.down.weight"], tuple(nd["model.layers.1.mlp.down.weight"]))
        assert torch.equal(down, source["model.layers.1.mlp.down_proj.weight"][:, rank * 48:(rank + 1) * 48])
        embed = tensors["model.embed_tokens.weight"]  # a lookup table: never tiled
        assert "model.embed_tokens.weight" not in nd and embed.shape == (176, 64)
        real = 333 - rank * 176
        assert torch.equal(embed[:min(real, 176)], source["model.embed_tokens.weight"][rank * 176:rank * 176 + 176])
        assert not embed[min(real, 176):].any()
        assert torch.equal(tensors["model.norm.weight"], source["model.norm.weight"])
    want = [o.token_ids for o in LLM(src, device="cpu", dtype="float32", kv_cache_memory="2MiB").generate(PROMPTS, GREEDY)]
    llm = LLM(out, device="cpu", kv_cache_memory="2MiB", tensor_parallel_size=2)
    try:
        assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == want
    finally:
        llm.engine.shutdown()


def test_the_manifest_covers_every_rank_file_and_verify_rebuilds_them(checkpoint, tmp_path):
    src = checkpoint("llama")
    out = tmp_path / "packed"
    assert run_cli("convert", src, out, "--layout", "packed", "--tp", "2", "--dtype", "float32").code == 0
    report = verify(out, source=src)
    assert report.ok and report.source_checked == report.tensors_checked > 0
    result = run_cli("verify", out, "--source", src, "--logits")
    assert_one_line_error(result, "does not read the packed tensor-parallel layout", code=result.code)
    path = out / "tp2" / "rank1.safetensors"
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors["model.layers.1.mlp.down.weight"][0, 0] += 1
    save_file(tensors, path, metadata=meta)
    report = verify(out, source=src, stop_at_first=False)
    assert not report.ok
    assert any("tp2/rank1.safetensors: sha256" in f for f in report.failures)
    assert any("tensor model.layers.1.mlp.down.weight differs from splitting the source for rank 1" in f
               for f in report.failures)
    (out / "tp2" / "rank1.safetensors").rename(out / "tp2" / "rank9.safetensors")
    report = verify(out, stop_at_first=False)
    assert any("rank9.safetensors: weight file not listed" in f for f in report.failures)


def test_an_interrupted_packed_conversion_resumes(checkpoint, tmp_path):
    src, out = checkpoint("qwen2"), tmp_path / "packed"
    args = ("--layout", "packed", "--tp", "2", "--nz")
    killed = run_cli("convert", src, out, *args, env={"ASCENDKIT_FAILPOINT": "kill-after-shard:1"})
    assert killed.code == -9 and not out.exists()
    assert (tmp_path / ".packed.partial" / "tp2" / "rank0.safetensors").is_file()
    resumed = run_cli("convert", src, out, *args, "--resume", "--json")
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_shards"] == ["tp2/rank0.safetensors"]
    fresh = tmp_path / "fresh"
    assert run_cli("convert", src, fresh, *args).code == 0
    for name in ("tp2/rank0.safetensors", "tp2/rank1.safetensors"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    assert verify(out, source=src).ok


def test_packed_layout_errors(checkpoint, tmp_path):
    src = checkpoint("llama")
    assert_one_line_error(run_cli("convert", src, tmp_path / "a", "--layout", "packed", "--tp", "3"),
                          "tensor parallel size 3: the model's 4 attention heads are not divisible by 3")
    assert_one_line_error(run_cli("convert", src, tmp_path / "a", "--nz"), "--tp and --nz are for --layout packed")
    assert_one_line_error(run_cli("convert", src, tmp_path / "a", "--layout", "packed", "--quantize", "w8a16"),
                          "--layout packed writes float weights")
    assert not (tmp_path / "a").exists() and not (tmp_path / ".a.partial").exists()
