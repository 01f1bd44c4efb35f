"""Export the project's own runtime model (`runtime.model.CausalLM`) the way the engine runs it:
one step `model(input_ids, meta, kv_caches)` with paged attention over per-layer KV caches
`[num_blocks, block_size, kv_heads, head_dim]`, then `model.logits(hidden[rows])`.

The model, the steps' inputs and the caches come from the model runner's own functions
(`runtime.engine.model_runner`: `build_model`, `prepare_step`, `kv_caches`), on the meta device:
`open_model` reads only the config and the tensor names (no weights; a GGUF's metadata, tokenizer
included, is parsed whole). Two steps are exported: a prefill (B sequences × seq_len new tokens,
nothing cached) and a decode (B sequences × 1 new token after seq_len cached ones). The caches are
inputs of the exported step: `paged_attention` writes them in place (`index_copy_`), which
torch.export keeps as an input mutation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ascend_common.errors import UserError, first_line
from runtime.engine.options import ENGINE_DEFAULTS

BLOCK_SIZE: int = ENGINE_DEFAULTS["block_size"]  # the engine's default block size


def open_runtime(path: Path):
    """`runtime.model.loader.open_model`: config and tensor names of a checkpoint directory or .gguf file."""
    from runtime.model.loader import open_model

    try:
        return open_model(path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read the checkpoint is the checkpoint's
        raise UserError(f"{path}: the runtime cannot open this checkpoint "
                        f"({type(exc).__name__}: {first_line(exc)})") from None


def build_runtime_model(ckpt, dtype: str) -> torch.nn.Module:
    """`CausalLM` on the meta device in `dtype`, built by the model runner's `build_model` (RoPE table
    kept fp32), its quantized linears calling torch_npu's kernels as traceable stand-ins."""
    from runtime.engine.model_runner import build_model

    from .npu_stand_ins import tracing_kernels

    where = ckpt.path / "config.json" if ckpt.path.is_dir() else ckpt.path
    try:
        model = build_model(ckpt, torch.device("meta"), getattr(torch, dtype), tracing_kernels())
    except Exception as exc:  # noqa: BLE001 - a config the runtime's model cannot be built from
        raise UserError(f"{where}: the runtime cannot build its model from it "
                        f"({type(exc).__name__}: {first_line(exc)})") from None
    return model.eval()


def step_inputs(model: torch.nn.Module, batch: int, new_tokens: int, cached: int) -> tuple[tuple, int]:
    """(example inputs of one step, max_context_len): `batch` sequences of `new_tokens` new tokens
    after `cached` cached ones each, laid out by the model runner's `prepare_step` on meta (T = batch
    × new_tokens flat tokens; padded [B, max_q] query tables; [B, max_blocks] block tables), as flat
    tensors, with the KV caches the runner would allocate for them."""
    from runtime.engine.model_runner import kv_caches, prepare_step, uniform_batch

    meta_device = torch.device("meta")
    step = uniform_batch(batch, new_tokens, cached, BLOCK_SIZE)
    ids, meta, rows, _ = prepare_step(step, BLOCK_SIZE, meta_device)
    (group,) = meta.groups  # every sequence runs as many tokens: one group
    num_blocks = sum(len(seq.block_table) for seq in step.seqs)
    caches = kv_caches(model.cfg, num_blocks, BLOCK_SIZE, next(model.parameters()).dtype, meta_device)
    args = (ids, meta.positions, meta.slot_mapping, group.query_index, group.output_rows, group.query_positions,
            group.block_tables,
            torch.tensor(rows, device=meta_device),  # rows that sample: each sequence's last token
            [k for k, _ in caches], [v for _, v in caches])
    return args, group.max_context_len


def export_step(model: torch.nn.Module, what: str, batch: int, new_tokens: int,
                cached: int) -> torch.export.ExportedProgram:
    """One engine step, exported as the model's own forward (swapped in for the export, so module
    paths in the graph stay the model's): flat tensors in, `AttentionMetadata` built inside
    (`max_context_len` is a Python int, static), fp32 logits of the sampling rows out."""
    from runtime.layers.attention import AttentionGroup, AttentionMetadata

    from .export import export

    args, context = step_inputs(model, batch, new_tokens, cached)
    forward = model.forward

    def step(input_ids, positions, slot_mapping, query_index, output_rows, query_positions, block_tables, rows,
             k_caches, v_caches):
        group = AttentionGroup(query_index=query_index, output_rows=output_rows, query_positions=query_positions,
                               block_tables=block_tables, max_context_len=context)
        meta = AttentionMetadata(positions=positions, slot_mapping=slot_mapping, groups=[group])
        hidden = forward(input_ids, meta, list(zip(k_caches, v_caches)))
        return model.logits(hidden[rows])

    model.forward = step
    try:
        return export(model, args, None, what, model)
    finally:
        del model.forward


def _what(ckpt, model: torch.nn.Module, phase: str) -> str:
    return f"{ckpt.path} (runtime {type(model).__name__}) {phase}"


def trace_runtime(ckpt, dtype: str, batch: int, seq_len: int) -> tuple[dict, torch.export.ExportedProgram]:
    """(the ops of both steps, the prefill program) of one model built on meta: the prefill
    (`seq_len` new tokens per sequence, no cache) exported here while a forked child exports the
    decode step (one token after `seq_len` cached ones), as `hf_trace.trace_hf` does."""
    from .parallel import in_child
    from .trace import merge_uses, ops_in

    model = build_runtime_model(ckpt, dtype)
    decode = in_child(lambda: ops_in({"decode": export_step(model, _what(ckpt, model, "decode"), batch, 1, seq_len)}))
    prefill = export_step(model, _what(ckpt, model, "prefill"), batch, seq_len, 0)
    return merge_uses(ops_in({"prefill": prefill}), decode()), prefill
