"""`compile_decode`: decode steps through torch.compile. Not bit-equal to transformers (Inductor fuses
and rounds once where eager rounds per op), so what is held here is accuracy against fp64, that the
compiled graphs run the steps they are built for and no others, and where it is refused."""

from __future__ import annotations

import pytest
import torch

from ascend_common.errors import UserError
from runtime import LLM, SamplingParams
from runtime.engine.model_runner import ModelRunner
from runtime.engine.scheduler import ScheduledBatch
from runtime.engine.sequence import Sequence
from runtime.model.loader import open_model

BLOCK = 4


def _sequences(count: int, seed: int) -> list[Sequence]:
    """Seeded prompts of different lengths (3-21 tokens), on blocks of their own."""
    g = torch.Generator().manual_seed(seed)
    seqs, first = [], 0
    for n in torch.randint(3, 22, (count,), generator=g).tolist():
        seq = Sequence(torch.randint(1, 300, (n,), generator=g).tolist(), SamplingParams(max_tokens=8))
        seq.block_table = list(range(first, first + 8))  # room for the prompt and 8 decodes
        first += 8
        seqs.append(seq)
    return seqs


def _prefill(runner: ModelRunner, seqs: list[Sequence]) -> torch.Tensor:
    """Every prompt in one step; the fp64 logits of each one's last token."""
    logits = runner.run(ScheduledBatch(seqs, [s.num_tokens for s in seqs])).sample.double()
    for seq in seqs:
        seq.num_computed_tokens = seq.num_tokens
    return logits


def _decode(runner: ModelRunner, seqs: list[Sequence], tokens: list[int]) -> torch.Tensor:
    """One decode step of the given next tokens; its fp64 logits."""
    for seq, token in zip(seqs, tokens):
        seq.token_ids.append(token)
    logits = runner.run(ScheduledBatch(seqs, [1] * len(seqs))).sample.double()
    for seq in seqs:
        seq.num_computed_tokens += 1
    return logits


@pytest.mark.parametrize("count", [1, 3])
def test_compiled_decode_is_as_accurate_as_eager_against_fp64(checkpoint, count):
    """Llama fixture in bf16, teacher-forced with fp64's greedy tokens: the compiled decode's logits
    are as far from fp64's as eager's (measured: 0.91x eager's mean error at batch 1, 0.95x at
    batch 3), and every decode step ran compiled while the prefill did not."""
    ckpt = open_model(checkpoint("llama"))
    runners = {}
    for name, dtype, compiled in (("fp64", torch.float64, False), ("eager", torch.bfloat16, False),
                                  ("compiled", torch.bfloat16, True)):
        runners[name] = ModelRunner(ckpt, torch.device("cpu"), dtype, BLOCK, compile_decode=compiled)
        runners[name].allocate(8 * count)
    seqs = _sequences(count, seed=count)
    exact, tokens = [_prefill(runners["fp64"], seqs)], []
    for _ in range(6):  # fp64's own greedy continuation
        tokens.append(exact[-1].argmax(-1).tolist())
        exact.append(_decode(runners["fp64"], seqs, tokens[-1]))
    errors = {}
    for name in ("eager", "compiled"):
        seqs = _sequences(count, seed=count)
        logits = [_prefill(runners[name], seqs)] + [_decode(runners[name], seqs, step) for step in tokens]
        errors[name] = torch.stack([(a - b).abs().mean() for a, b in zip(logits, exact)])
    assert runners["compiled"].compiled.steps == len(tokens)
    assert torch.equal(errors["compiled"][0], errors["eager"][0])  # the prefill ran eager in both
    assert errors["compiled"].mean() <= 1.25 * errors["eager"].mean(), errors


def _graphs() -> int:
    """The graphs Dynamo holds for the model's forward (every compiled engine of the process shares them)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from runtime.model.decoder import CausalLM

    return len(_debug_get_cache_entry_list(CausalLM.forward.__code__))


@pytest.mark.parametrize("family", ["llama", "qwen3"])  # Qwen3: q/k norms in the graph
def test_the_engine_builds_both_graphs_at_start_and_decodes_with_them(checkpoint, family):
    """Warm-up runs a batch-1 and a batch-2 decode step compiled; requests of any batch and context
    then decode compiled with no graph built after the warm-up (block counts of 1 and more, batches
    of 1 and 3), and in fp32 give eager's tokens, logprobs within 1e-4."""
    path = checkpoint(family)
    args = {"device": "cpu", "dtype": "float32", "block_size": BLOCK, "kv_cache_memory": "1MiB"}
    compiled = LLM(path, compile_decode=True, **args)
    assert compiled.engine.runner.compiled.steps == 2
    graphs = _graphs()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (5, 17, 9)]
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=3, ignore_eos=True)
    compiled.generate([prompts[0][:2]], params)  # contexts of one block, then two
    assert compiled.engine.runner.compiled.steps == 2 + 5  # every decode step (the prefill gives the first token)
    ours = compiled.generate(prompts, params)
    assert compiled.engine.runner.compiled.steps == 2 + 5 + 5
    assert _graphs() == graphs
    runner = compiled.engine.runner
    runner.max_gather_slots = BLOCK  # each sequence attends as a group of its own: no step is compiled
    assert [o.token_ids for o in compiled.generate(prompts, params)] == [o.token_ids for o in ours]
    assert runner.compiled.steps == 12
    for a, b in zip(ours, LLM(path, **args).generate(prompts, params)):
        assert a.token_ids == b.token_ids
        for step_a, step_b in zip(a.logprobs, b.logprobs):
            for token, logprob in step_b.items():
                assert abs(step_a[token] - logprob) < 1e-4


def test_compile_decode_is_refused_under_tensor_parallel(checkpoint):
    with pytest.raises(UserError) as err:
        LLM(checkpoint("llama"), device="cpu", tensor_parallel_size=2, compile_decode=True)
    assert str(err.value) == "compile_decode runs on one device: drop --compile-decode or use tensor_parallel_size 1"


@pytest.mark.parametrize("family, kind", [("qwen3_moe", "mixture-of-experts layers"),
                                          ("deepseek_v3", "multi-head latent attention")])
def test_compile_decode_is_refused_for_models_it_does_not_trace(checkpoint, family, kind):
    with pytest.raises(UserError) as err:
        LLM(checkpoint(family), device="cpu", compile_decode=True)
    assert str(err.value) == f"compile_decode serves dense models; this one has {kind}: drop --compile-decode"
