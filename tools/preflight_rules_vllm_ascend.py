"""Write `ascend_convert/preflight/rules/vllm-ascend-182b75e.json`: vllm-ascend's loader rules as
read from its commit 182b75e (2026-08-22), each fact and rule with the file and line it came from.

The packed-module map is parsed out of vllm-ascend's own `modelslim_config.py` (the copy in
`../shared/data/vllm-ascend/`, byte-identical to that commit); everything else was read by hand from
that commit's code, docs and unit tests, and from vLLM's model code, and is written down below as
data. vLLM lines are from the v0.34.0 source: vllm-ascend@182b75e pins vLLM v0.27.1
(`.github/vllm-release-tag.commit`), which could not be fetched here; the facts cited were checked
to be the same kind of code in both (model construction, weight loaders), but their line numbers
are 0.34.0's. Adding a release: copy this script, re-read what changed, write a new file.

    python tools/preflight_rules_vllm_ascend.py [--modelslim-config PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
M = "vllm_ascend/quantization/modelslim_config.py"
M310 = "vllm_ascend/_310p/quantization/modelslim_config.py"
U = "vllm_ascend/utils.py"
D = "docs/source/user_guide/support_matrix/supported_models.md"
S = "vllm_ascend/quantization/methods/w8a8_static.py"
Y = "vllm_ascend/quantization/methods/w8a8_dynamic.py"
W = "vllm_ascend/quantization/methods/w8a16.py"
V = "vLLM v0.34.0 source"


def packed_modules(path: Path) -> dict:
    """`packed_modules_model_mapping` as vllm-ascend defines it (a literal, evaluated with its one helper)."""
    src = path.read_text(encoding="utf-8")
    env: dict = {}
    for node in ast.parse(src).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id in ("_MINIMAX_M3_PACKED_MODULES", "packed_modules_model_mapping"):
            env[target.id] = eval(ast.get_source_segment(src, node.value), {}, env)
    return env["packed_modules_model_mapping"]


def part(dtype, shape, **extra) -> dict:
    return {"dtype": dtype, "shape": shape, **extra}


#: msModelSlim saves W8A8's input_offset as a float; copy_ turns the whole number into the int8 parameter.
OFFSET = part("int8", [1], float_ok=True)
PER_CHANNEL = {"weight": part("int8", ["out", "in"]), "weight_scale": part("params", ["out", 1]),
               "weight_offset": part("params", ["out", 1])}
W8A8 = {"weight": part("int8", ["out", "in"]), "input_scale": part("params", [1]), "input_offset": OFFSET,
        "quant_bias": part("int32", ["out"]), "deq_scale": part({"bfloat16": "float32", "float16": "int64"}, ["out"]),
        "weight_scale": part("params", ["out", 1]), "weight_offset": part("params", ["out", 1])}


def loaders() -> dict:
    """The ModelSlim loader of each SoC family: A2/A3's and 310P's own (a registry and methods of its own,
    and no lookup for embeddings)."""
    a2_registered = {  # methods/*.py @register_scheme(quant_type, layer_type) at 182b75e
        "linear": ["W8A8", "W8A8_DYNAMIC", "W8A16", "W8A8_MIX", "W8A8_MXFP8", "W8A8FP8_DYNAMIC", "W4A8_MXFP",
                   "W4A4_DYNAMIC", "W4A4_FLATQUANT_DYNAMIC", "W4A4_MXFP4", "W4A4_MXFP4_FLATQUANT"],
        "moe": ["W8A8_DYNAMIC", "W8A8_MXFP8", "W8A8FP8_DYNAMIC", "W4A16", "W4A16_MXFP4", "W4A8_DYNAMIC",
                "W4A8_MXFP", "W4A4_MXFP4"],
    }
    p310_registered = {"linear": ["W8A8", "W8A8_DYNAMIC", "W8A8S", "W8A8SC"], "moe": ["W8A8_DYNAMIC"]}
    dyn_310 = {"weight": part("int8", ["out", "in"]), "weight_scale": part("float32", ["out", 1]),
               "weight_offset": part("float32", ["out", 1])}
    moe_310 = {"weight": part("int8", ["out", "in"]), "weight_scale": part("float32", ["out", 1]),
               "weight_offset": part("params", ["out", 1])}
    w8a8_310 = {**W8A8, "deq_scale": part("int64", ["out"])}
    return {
        "a2": {"registered": a2_registered, "embedding_lookup": True,
               "schemes": {"W8A8": {"linear": W8A8}, "W8A8_DYNAMIC": {"linear": PER_CHANNEL, "moe": PER_CHANNEL},
                           "W8A16": {"linear": PER_CHANNEL}},
               "source": f"vllm_ascend/quantization/methods/*.py register_scheme; {S}:58-86, {Y}:71-83 and 198-222, "
                         f"{W}:39-56 (per channel only)"},
        "310p": {"registered": p310_registered, "embedding_lookup": False,
                 "schemes": {"W8A8": {"linear": w8a8_310}, "W8A8_DYNAMIC": {"linear": dyn_310, "moe": moe_310}},
                 "source": f"{M310}:33-34, 75, 136-141 (embeddings: AscendUnquantizedEmbeddingMethod310, no lookup); "
                           "vllm_ascend/_310p/quantization/methods/{w8a8_base,w8a8_static,w8a8_dynamic,w8a8s,w8a8sc}.py"},
    }


def facts(modelslim_config: Path) -> dict:
    A2, P = "ascend910b", "ascend310p"

    def row(name, types, tiers):
        return {"row": name, "model_types": types, "tiers": tiers}

    router = r"\.mlp\.gate\.weight$"
    return {
        "weights": {"glob": "*.safetensors", "index": "model.safetensors.index.json",
                    "source": "vLLM DefaultModelLoader._prepare_weights: globs *.safetensors in the model directory, "
                              "keeps those model.safetensors.index.json lists (filter_duplicate_safetensors_files)"},
        "description": {"file": "quant_model_description.json", "source": f"{M}:95 MODELSLIM_CONFIG_FILENAME",
                        "float": "FLOAT",
                        "model_keys": ["model_quant_type", "version", "group_size", "fa_quant_type",
                                       "indexer_quant_type", "kv_cache_type", "kv_quant_type", "reduce_quant_type",
                                       "metadata"],
                        "versions": ["1.0.0"]},
        "packed_modules": packed_modules(modelslim_config),
        "packed_modules_source": f"{M}:105-402 packed_modules_model_mapping",
        "vllm_packed_modules": {
            "llama": {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]},
            "mistral": {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]},
            "qwen2": {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]},
            "qwen3": {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]},
            "qwen2_moe": {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]},
            "mixtral": {"qkv_proj": ["q_proj", "k_proj", "v_proj"]},
            "phi3": {"qkv_proj": ["qkv_proj"], "gate_up_proj": ["gate_up_proj"]},
        },
        "vllm_packed_modules_source": f"{V}: packed_modules_mapping of llama.py:475, qwen2.py:459, qwen3.py:284, "
                                      "qwen2_moe.py:439-458, mixtral.py:379, phi3.py (LlamaForCausalLM's); used where "
                                      f"vllm-ascend's map has no entry ({M}:727-728)",
        "socs": {
            A2: {"tier": "supported", "why": "Atlas A2/A3, docs/source/faqs.md:17-29"},
            P: {"tier": "experimental", "why": "[Experimental] Atlas 300I Duo, docs/source/faqs.md:17-29"},
            "ascend910a": {"tier": "unsupported",
                           "why": "docs/source/faqs.md:17-29 'Ascend 910, Ascend 910 Pro B ... unplanned yet'; "
                                  "vllm_ascend/device/hardware.py:64-75 raises 'Cannot support runtime soc_version'"},
        },
        "soc_loader": {A2: "a2", "ascend910a": "a2", P: "310p"},
        "loaders": loaders(),
        "models": [
            row("DeepSeek V3/3.1, R1", ["deepseek_v3"], {A2: "supported"}),
            row("DeepSeek V3.2", ["deepseek_v32"], {A2: "supported"}),
            row("DeepSeek V2.5", ["deepseek_v2"], {A2: "untested"}),
            row("Qwen3-Dense", ["qwen3"], {A2: "supported", P: "supported"}),
            row("Qwen3-30B-A3B / Qwen3-235B-A22B", ["qwen3_moe"], {A2: "supported", P: "supported"}),
            row("Qwen3-Next", ["qwen3_next"], {A2: "experimental"}),
            row("GLM-4.x", ["glm4_moe"], {A2: "supported"}),
            row("GLM-5", ["glm_moe_dsa"], {A2: "experimental"}),
            row("Gemma4", ["gemma4", "gemma4_text"], {A2: "experimental"}),
            row("Kimi-K2", ["kimi_k2"], {A2: "experimental"}),
            row("MiniMax-M2", ["minimax_m2"], {A2: "experimental"}),
            row("Qwen2 / Qwen2.5", ["qwen2"], {A2: "experimental"}),
            row("Llama2/3/3.1/3.2", ["llama"], {A2: "experimental"}),
            row("Mistral/Mistral-Instruct", ["mistral"], {A2: "experimental"}),
            row("Baichuan / Baichuan2", ["baichuan"], {A2: "experimental"}),
            row("Phi-3/4", ["phi3"], {A2: "experimental"}),
            row("InternLM", ["internlm"], {A2: "experimental"}),
            row("MiniCPM", ["minicpm"], {A2: "experimental"}),
            row("MiniCPM3", ["minicpm3"], {A2: "experimental"}),
            row("Ernie4.5", ["ernie4_5"], {A2: "experimental"}),
            row("Ernie4.5-Moe", ["ernie4_5_moe"], {A2: "experimental"}),
            row("Gemma-2", ["gemma2"], {A2: "experimental"}),
            row("Gemma-3", ["gemma3", "gemma3_text"], {A2: "experimental"}),
            row("Qwen3-VL", ["qwen3_vl"], {A2: "supported", P: "supported"}),
            row("Qwen3-VL-30B-A3B / 235B-A22B", ["qwen3_vl_moe"], {A2: "supported"}),
            row("Qwen2-VL", ["qwen2_vl"], {A2: "experimental"}),
            row("Qwen2.5-VL", ["qwen2_5_vl"], {A2: "experimental"}),
        ],
        "models_source": f"{D} (rows mapped to config.json model_type by ascendkit)",
        "model_type_aliases": {"deepseekv2": "DeepSeek-V2's is deepseek_v2, V3/R1's deepseek_v3 (msModelSlim's "
                                             "--mindie_format writes deepseekv2; vllm-ascend #2296, #1270)"},
        "removed_architectures": {"BaichuanForCausalLM": "0.23.0", "BaiChuanForCausalLM": "0.23.0",
                                  "QWenLMHeadModel": "0.23.0"},
        "removed_architectures_source": f"{V}: vllm/model_executor/models/registry.py:884-908 "
                                        "_PREVIOUSLY_SUPPORTED_MODELS",
        "vllm_release": "v0.27.1",
        # Which weights the loader asks the description about: every LinearBase, FusedMoE and
        # VocabParallelEmbedding built with the quant config, by its prefix.
        "lookups": {
            "not_looked_up": {
                "*": [r"\.shared_expert_gate\.weight$", router, r"\.block_sparse_moe\.gate\.weight$"],
                "mixtral": [r"^model\.embed_tokens\.weight$"],
                "glm4_moe": [r"^model\.embed_tokens\.weight$"],
            },
            "looked_up": {"qwen3_moe": [router]},
            "embedding_without_prefix": ["llama", "mistral", "phi3"],
            "mtp_not_looked_up": [r"\.eh_proj\.weight$", r"\.embed_tokens\.weight$"],
            "source": f"{V}: routers are GateLinear without quant_config (qwen2_moe.py:143-147, mixtral.py:111-115, "
                      "deepseek_v2.py:321-326, glm4_moe.py:141-147) but Qwen3-MoE's has it (qwen3_moe.py:170-174); "
                      "shared_expert_gate is a ReplicatedLinear with quant_config=None (qwen2_moe.py:149-155); Mixtral's "
                      "and GLM-4.5's embeddings are built without quant_config (mixtral.py:316-319, glm4_moe.py:429-431), "
                      "Llama's without a prefix (llama.py:382-386: looked up as '', FLOAT if any weight is); MTP layers "
                      "are skipped by the main model (deepseek_v2.py:1650-1652, glm4_moe.py:495) and their eh_proj and "
                      "embed_tokens take no quant config (deepseek_mtp.py:84, 163-166; glm4_moe_mtp.py:95, 160)",
        },
        # Multi-head latent attention (DeepSeek-V2/V3 and their kin): vLLM's use_mla, which
        # vllm-ascend's MLA backend and 310P's runner act on.
        "mla": {
            "model_types": ["deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_mtp", "kimi_k2", "kimi_linear",
                            "longcat_flash", "pangu_ultra_moe", "pangu_ultra_moe_mtp", "glm_moe_dsa"],
            "config_key": "kv_lora_rank",
            "float_weights": [r"\.kv_b_proj\.weight$"],
            "refused_socs": {P: "MLAAttention is not supported for 310P."},
            "source": f"{V}: vllm/transformers_utils/model_arch_config_convertor.py is_deepseek_mla (the model_type in "
                      "this list and kv_lora_rank not None; model_config.use_mla); vllm_ascend/attention/mla_v1.py:907-909 "
                      "(kv_b_proj unquantized); vllm_ascend/_310p/model_runner_310p.py:706-708 (310P)",
        },
        # The multi-token-prediction layer (layer index >= num_hidden_layers): the parts around its
        # decoder block are built without a quant method, and a quantized decoder block is a known
        # runtime failure.
        "mtp": {
            "float_modules": [r"\.eh_proj$", r"\.enorm$", r"\.hnorm$", r"\.shared_head\.norm$", r"\.embed_tokens$"],
            "float_modules_source": f"{V}: deepseek_mtp.py:84, 163-166 and glm4_moe_mtp.py:95, 160 (eh_proj a plain "
                                    "nn.Linear, the MTP embed_tokens a VocabParallelEmbedding without quant_config; "
                                    "enorm, hnorm and shared_head.norm RMSNorm); DeepSeekMTP.load_weights looks every "
                                    "tensor up in params_dict (KeyError on a name the module lacks); "
                                    "vllm_ascend/models/deepseek_mtp.py:15-49 subclasses it",
            # The draft's layers are looked up with the target's model_type (its packed map:
            # q_a_proj + kv_a_proj_with_mqa as fused_qkv_a_proj), not deepseek_mtp's: the base
            # proposer's draft vllm_config keeps the target's model_config (step3p5.py:724-742
            # replaces it for Step3.5 only), and vllm-ascend's nightly W8A8 R1 runs with MTP
            # (tests/e2e/nightly/single_node/models/configs/MTPX-DeepSeek-R1-0528-W8A8.yaml:60-85),
            # which an unpacked fused_qkv_a_proj lookup would refuse (modelslim_config.py:469).
            "packed_map": "target",
            "packed_map_source": "vllm_ascend/spec_decode/llm_base_proposer.py:261-282 _get_model; "
                                 "vllm_ascend/spec_decode/step3p5.py:724-742; "
                                 "tests/e2e/nightly/single_node/models/configs/MTPX-DeepSeek-R1-0528-W8A8.yaml:60-85",
        },
        "vision_prefixes": [r"^visual\.", r"^model\.visual\.", r"^vision_tower\.", r"^vision_model\.",
                            r"^model\.vision_tower\."],
        "quant_part_names": ["weight_scale", "weight_offset", "input_scale", "input_offset", "deq_scale", "quant_bias"],
        "kernel_limits": [
            {"type": "W8A8_DYNAMIC", "kind": "linear", "model_dtypes": ["float16"], "loader": "a2",
             "message": "W8A8_DYNAMIC in a float16 model: the method hands npu_quant_matmul its weight_scale in the "
                        "model's dtype, which the kernel refuses (aclnnQuantMatmulWeightNz: Tensor scale not "
                        "implemented for DT_FLOAT16); serve in bfloat16"},
            {"type": "W8A16", "kind": "linear", "model_dtypes": ["bfloat16"], "loader": "a2", "with_bias": True,
             "message": "W8A16 with a bias in a bfloat16 model: npu_weight_quant_batchmatmul takes the bias in the "
                        "model's dtype and refuses bfloat16 (biasOptional's dtype should be [DT_FLOAT])"},
        ],
        "config_keys": {"heads": ["num_attention_heads", "n_head", "num_heads"],
                        "kv_heads": ["num_key_value_heads", "multi_query_group_num", "n_head_kv"],
                        "intermediate": ["intermediate_size", "moe_intermediate_size",
                                         "shared_expert_intermediate_size"],
                        "expert_intermediate": ["moe_intermediate_size"],
                        "experts": ["num_experts", "num_local_experts", "n_routed_experts"]},
        "config_keys_source": f"{V}: attention asserts (qwen2.py:138-148, llama.py:145-155), MergedColumnParallelLinear "
                              "linear.py:791, FusedMoEConfig fused_moe/config.py:1396-1398",
        "row_parallel": ["o_proj", "down_proj", "w2", "dense", "out_proj", "fc2"],
        "supported_quant_methods": ["ascend", "compressed-tensors", "fp8", "deepseek_v4_fp8", "modelopt_mxfp8",
                                    "mxfp8"],
        "supported_quant_methods_source": "vllm_ascend/platform.py:88-95 supported_quantization",
        "nz": {"never": ["float32"], "soc_always": [P], "float_only_in_mode": 2, "default_mode": 1,
               "quant_matmul_max_n": 65536,
               "source": f"{U}:249-286 _should_trans_nz / maybe_trans_nz; {Y}:349-352 (MoE W8A8 weights always "
                         "cast); vllm_ascend/ops/linear.py:80-101 (310P keeps n=1/k=1 float weights in ND)",
               "default_mode_source": "vllm_ascend/envs.py:76-80 VLLM_ASCEND_ENABLE_NZ default 1; "
                                      "ascend_config.py:238-245 weight_nz_mode",
               "unsourced": "alignment of H and W to 16/32 for npu_format_cast"},
    }


def rules() -> dict:
    out = {}

    def rule(id, what, action, source, severity="error", scope="checkpoint"):
        out[id] = {"what": what, "action": action, "source": source, "severity": severity, "scope": scope}

    weights_source = "vLLM DefaultModelLoader._prepare_weights (filter_duplicate_safetensors_files)"
    rule("files.weights", "The directory holds weight files where the engine looks for them.",
         "refuse (no weights to load)", weights_source)
    rule("files.header", "Every safetensors header is valid (length, JSON, dtypes, byte ranges).",
         "refuse (safetensors cannot open the file)", "safetensors format: an 8-byte header length, a JSON header, "
                                                      "contiguous data_offsets")
    rule("files.index", "Index files and shards agree: no missing or extra tensor, no path out of the directory.",
         "refuse or skip (vLLM loads only the files model.safetensors.index.json lists)", weights_source)
    rule("files.duplicate", "No tensor is stored in two files.", "garbage (the last file read wins)",
         "vLLM's safetensors iterator yields every file's tensors in turn; load_weights copies each into its parameter")
    rule("files.tokenizer", "A tokenizer is present.", "refuse (the tokenizer is loaded at start-up)",
         "vLLM init_tokenizer_from_configs -> transformers AutoTokenizer.from_pretrained")
    rule("files.chat_template", "A chat template is present.", "refuse /v1/chat/completions requests",
         "transformers apply_chat_template: no chat template set and none given raises ValueError", "warning")
    rule("files.manifest", "Files match ascend_manifest.json (size; sha256 with --hash).",
         "garbage (the files are not the ones converted and verified)", "ascendkit convert's manifest")
    rule("model.soc", "The engine runs on the SoC.", "refuse (Cannot support runtime soc_version)",
         "docs/source/faqs.md:17-29; vllm_ascend/device/hardware.py:64-75", scope="deployment")
    rule("model.support", "The model type is in the engine's supported-models matrix for the SoC.", "load untested",
         D, "warning", "deployment")
    rule("model.mla_soc", "An MLA model runs on a SoC whose runner has MLA attention.",
         "refuse (ValueError: MLAAttention is not supported for 310P., at KV-cache allocation after the weights load)",
         "vllm_ascend/_310p/model_runner_310p.py:706-708 initialize_kv_cache_tensors", scope="deployment")
    rule("model.architecture", "The engine's vLLM still has the model class.",
         "refuse (architecture no longer supported)", f"{V}: vllm/model_executor/models/registry.py:884-908",
         scope="deployment")
    rule("model.type", "config.json's model_type is one the engine knows.", "refuse (unknown model type)",
         "transformers AutoConfig / vLLM model registry")
    rule("model.dtype", "The model's dtype is one the SoC computes in.", "refuse (no bf16 on this SoC)",
         f"{D}: Atlas 300I DUO rows, BF16 column ❌; vllm-ascend #9294 (910A: float16, not bf16)")
    rule("model.tensor_dtype", "Every tensor's dtype is one the SoC has and the model's own.",
         "cast (to the model's dtype at load)", "vLLM weight loaders: param.data.copy_(loaded_weight) converts the "
                                                "dtype; vllm-ascend #6490, #9294, #3534")
    rule("quant.description", "A quantized checkpoint has the description file the engine reads, valid JSON.",
         "refuse (ModelSlim Quantization Config Not Found, or the model built unquantized)",
         f"{M}:860-958 maybe_update_config; vllm_ascend/quantization/utils.py:125-175 detect_quantization_method")
    rule("quant.version", "The description says its format version.",
         "none (vllm-ascend does not read it; MindIE and msModelSlim do)",
         "msModelSlim 26.1.0 AscendV1Saver writes version", "warning")
    rule("quant.model_quant_type", "model_quant_type names a quant type the engine registers.",
         "none (vllm-ascend does not read it; MindIE does)",
         "msModelSlim 26.1.0 AscendV1Saver; vllm_ascend/quantization/methods/*.py register_scheme", "warning")
    rule("quant.undescribed", "Every weight the loader looks up is in the description.",
         "refuse (KeyError on the tensor's name)",
         f"{M}:469 get_linear_quant_type: quant_description[prefix + '.weight']; 731-775 get_quant_method")
    rule("quant.undescribed_mtp", "The MTP layer's looked-up weights are in the description.",
         "refuse when served with MTP speculative decoding (KeyError); the main model skips the layer",
         f"{M}:166-170 (NOTE 2: add the MTP layer to the description, FLOAT); vllm-ascend #5794", "warning")
    rule("quant.mtp_float_parts", "An MTP layer's eh_proj, enorm, hnorm, shared_head.norm and embed_tokens are "
                                  "floats, in the files and the description.",
         "refuse (KeyError on the quantized parameter's name in DeepSeekMTP.load_weights) or garbage (int8 values "
         "copied into the float parameter)",
         f"{V}: deepseek_mtp.py:84, 163-166, glm4_moe_mtp.py:95, 160 (built without a quant method), "
         "DeepSeekMTP.load_weights params_dict[name]; vllm_ascend/models/deepseek_mtp.py:15-49")
    rule("quant.mtp_quantized", "The MTP layer's decoder block is FLOAT (only W8A8 with a float MTP layer is known to "
                                "serve DeepSeek-R1 with MTP).",
         "fail at run time when served with MTP speculative decoding (ACL stream synchronize failed, error code "
         "507011); the main model skips the layer",
         f"{M}:167 (NOTE 1: the MTP layer is not quantized on the NPU); vllm-ascend #2771 (open: mixed MTP fails on "
         "R1, 'W8A8 + MTP float' works), PR #7177", "warning")
    rule("quant.mla_kv_b_proj", "An MLA model's kv_b_proj is FLOAT.",
         "refuse (AssertionError in AscendMLAImpl.process_weights_after_loading, after the weights are read)",
         "vllm_ascend/attention/mla_v1.py:907-909 ('NOTE: We currently do not support quant kv_b_proj.'); MLA: "
         f"{V} model_arch_config_convertor.py is_deepseek_mla")
    rule("quant.undescribed_other", "Every tensor in the files is in the description.",
         "none for vllm-ascend (it looks up weights only); msModelSlim's saver lists every tensor",
         "msModelSlim 26.1.0 AscendV1Saver", "warning")
    rule("quant.norm_bias", "Norm biases (anti-outlier quantization) are announced by the description.",
         "garbage (the biases are dropped: the norm gets a bias parameter only when a description key names "
         "norm.bias)", "vllm_ascend/ops/layernorm.py:42-47")
    rule("quant.embedding_quantized", "The embedding is FLOAT (an int8 LM head only where the loader quantizes one).",
         "fail at the first forward (AttributeError: AscendEmbeddingMethod has no embedding()); on 310P, garbage "
         "(every VocabParallelEmbedding, the LM head included, gets the unquantized method: int8 values copied into "
         "a float weight)",
         "vllm_ascend/quantization/method_adapters.py:281-293 (AscendEmbeddingMethod: the linear scheme's weights "
         f"and apply, no embedding()), vllm_ascend/ops/vocab_parallel_embedding.py:94-111, 221, 243; {M}:766-772; "
         f"{M310}:135-141")
    rule("quant.tied_head", "A quantized LM head is not tied to the embedding (config.json tie_word_embeddings false).",
         "garbage (the head is made the embedding's float weight and lm_head.* is skipped at load: the int8 head "
         "and its scales are never read)",
         f"{V}: ParallelLMHead.tie_weights (the unquantized method's: layer.weight = embed_tokens.weight), "
         "LlamaForCausalLM.load_weights skip_prefixes ['lm_head.'] when tie_word_embeddings")
    rule("quant.absent", "Every tensor the description lists is in the files.",
         "garbage (the quantized parameter is never loaded)",
         "vLLM: parameters the checkpoint does not fill keep torch.empty's contents (no check with a quant config)")
    rule("quant.fused_mixed", "All parts of a fused module share one quant type.",
         "refuse (ValueError: Not all shards ... same quant type / some but not all shards quantized)",
         f"{M}:431-470 get_linear_quant_type, 776-805 is_layer_skipped_ascend")
    rule("quant.experts_mixed", "All experts of one layer share one quant type.",
         "garbage (one method, chosen from expert 0's type, loads every expert)",
         f"{M}: packed_modules_model_mapping 'experts' = experts.0's parts; 752-765 one method per layer")
    rule("quant.experts_lookup", "The engine can find the quant type of a quantized MoE layer.",
         "refuse (KeyError: '<layer>.experts.weight')",
         f"{M}:469 get_linear_quant_type without an 'experts' entry in the model type's packed map")
    rule("quant.unsupported_type", "Every quant type is one the engine registers for the layer kind.",
         "refuse (NotImplementedError: doesn't support quant_type)",
         f"{M}:511-541 create_scheme_for_layer; methods/registry.py; {M310}:33-34, 75")
    rule("quant.part_missing", "A quantized layer has every tensor its method declares.",
         "garbage (the parameter keeps torch.empty's contents)",
         "methods/*.py get_weight / get_pertensor_param / get_perchannel_param")
    rule("quant.part_dtype", "Each tensor of a quantized layer has the dtype its method declares.",
         "cast (copy_ converts the values: integers become other numbers)",
         f"methods/*.py parameter dtypes; {S}:80-83 deq_scale float32 for bf16, int64 for fp16")
    rule("quant.part_shape", "Each tensor of a quantized layer has the shape its method declares.",
         "refuse (weight loader shape assertion)",
         "methods/*.py parameter shapes; vLLM weight_loader asserts param.shape == loaded_weight.shape")
    rule("quant.part_extra", "A layer has no tensor its method lacks a parameter for.",
         "refuse (There is no module or parameter named ...)", f"{V}: AutoWeightsLoader._load_module (models/utils.py "
                                                               "~447-459)")
    rule("quant.float_int8", "A weight described FLOAT is stored as a float.",
         "garbage (int8 values copied into a float parameter)",
         f"{M}:776-815 is_layer_skipped_ascend: FLOAT layers get the unquantized method")
    rule("quant.kernel_dtype", "Each quantized layer's method runs in the model's dtype.",
         "fail at the first forward (the kernel refuses the scale's or the bias's dtype)",
         f"{Y}: apply() passes layer.weight_scale (params dtype) to npu_quant_matmul, vllm-ascend #12907, #7443; "
         f"{W}:58-72 passes the bias, #7039", scope="deployment")  # the serving --dtype decides it, not the files
    rule("quant.leftover_config", "config.json's quantization_config does not fight the ModelSlim description.",
         "refuse (vLLM: the model config's quantization method does not match --quantization ascend), or the "
         "description is never read",
         f"vLLM ModelConfig._verify_quantization; {M}:592-597 override_quantization_method; vllm-ascend #2296, #1270")
    rule("tp.heads", "Attention heads divide by the tensor-parallel size.", "refuse (divide(): not divisible)",
         "vLLM QKVParallelLinear / attention: divide(total_num_heads, tp_size)", scope="deployment")
    rule("tp.kv_heads", "KV heads divide by the TP size, or the TP size by them (replicated).",
         "refuse (divide(): not divisible)",
         "vLLM QKVParallelLinear: kv heads split when >= tp_size, else replicated tp_size / kv_heads times",
         scope="deployment")
    rule("tp.intermediate", "MLP and expert widths divide by the TP size.", "refuse (divide(): not divisible)",
         "vLLM MergedColumnParallelLinear / RowParallelLinear / FusedMoE: divide(intermediate_size, tp_size)",
         scope="deployment")
    rule("tp.group", "A rank's shard of a per-group quantized weight holds whole groups.",
         "refuse (scale shard shape mismatch)",
         "row-parallel layers split the input dim by tp_size: (in / tp) % group_size == 0", scope="deployment")
    rule("ep.experts", "Experts divide by the expert-parallel size.", "load unevenly (some ranks hold one more expert)",
         "vLLM FusedMoE determine_expert_map", "warning", "deployment")
    rule("nz.shape", "Every weight cast to FRACTAL_NZ at load has a shape the NZ matmul takes.",
         "fail at NZ (aclnnMatmulWeightNz: not support mat2 n = 1 or k = 1)",
         f"{U}:249-286 _should_trans_nz (no shape guard at 182b75e but 310P's float one); vllm-ascend #10014, "
         "guard added by PR #16058 (2026-09-08)", scope="deployment")
    rule("nz.kernel_limit", "A W8A8 weight's output dim is below npu_quant_matmul's limit.",
         "fail (npu_quant_matmul rejects weight dims >= 65536; vllm-ascend splits only wq_b)",
         f"{Y}:139-143 the loader's own workaround and its TODO", "warning", "deployment")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modelslim-config", type=Path,
                        default=ROOT.parent / "shared" / "data" / "vllm-ascend" / "modelslim_config.py")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "ascend_convert" / "preflight" / "rules" / "vllm-ascend-182b75e.json")
    args = parser.parse_args()
    data = {"engine": "vllm-ascend", "release": "182b75e", "date": "2026-08-22",
            "read_from": "vllm-project/vllm-ascend@182b75e (2026-08-22; nearest tag v0.25.1rc1): "
                         "vllm_ascend/quantization/ and _310p/quantization/, ops/linear.py, ops/layernorm.py, utils.py, "
                         "envs.py, platform.py, docs/.../supported_models.md and faqs.md (copies of the loader in "
                         "shared/data/vllm-ascend); vLLM facts from the v0.34.0 source (it pins v0.27.1)",
            "rules": rules(), "facts": facts(args.modelslim_config)}
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(data['rules'])} rules")


if __name__ == "__main__":
    main()
