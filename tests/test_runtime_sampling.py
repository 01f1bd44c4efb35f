"""SamplingParams, Sampler and IncrementalDetokenizer, on real torch tensors and real tokenizers.

Tokenizers, all offline: the fixture checkpoints' byte-level BPE (trained on ASCII, so every
non-ASCII character is split into single-byte tokens), a sentencepiece BPE with byte fallback
trained here (the Llama-2 kind: "▁" for spaces, <0xNN> byte tokens), and the real SmolLM2 tokenizer
from its GGUF (GPT-2 byte-level, with merges that end in the middle of a character).
"""

from __future__ import annotations

import io
import random

import pytest
import torch
from transformers import AutoTokenizer, LlamaTokenizer

from runtime.detokenizer import REPLACEMENT, IncrementalDetokenizer
from runtime.engine.sampler import SampleOutput, Sampler, filtered_probs, make_generator
from runtime.sampling_params import SamplingParams


def _devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    try:
        import torch_npu  # noqa: F401

        found.append("npu")
    except ImportError:
        pass
    return found


DEVICES = _devices()


# ---------------------------------------------------------------------------------------------
# SamplingParams


def test_defaults_are_vllms():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens, p.min_tokens) == (1.0, 1.0, -1, 16, 0)
    assert (p.stop, p.stop_token_ids, p.seed, p.ignore_eos, p.logprobs, p.skip_special_tokens) == (
        [], [], None, False, None, True)
    assert not p.greedy


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature must be >= 0, got -1"),
    ({"temperature": "hot"}, "temperature must be >= 0, got 'hot'"),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"top_k": -2}, "top_k must be -1 or 0 (off) or >= 1, got -2"),
    ({"top_k": 2.5}, "top_k must be -1 or 0 (off) or >= 1, got 2.5"),
    ({"max_tokens": 0}, "max_tokens must be >= 1 or None, got 0"),
    ({"min_tokens": -1}, "min_tokens must be >= 0, got -1"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens must be <= max_tokens (4), got 5"),
    ({"stop": ["ok", ""]}, "stop must not contain an empty string"),
    ({"stop": ["ok", 3]}, "stop must be a string or a list of strings, got ['ok', 3]"),
    ({"stop_token_ids": [2, -1]}, "stop_token_ids must be a list of integers >= 0, got [2, -1]"),
    ({"seed": "42"}, "seed must be an integer in [-2**63, 2**64 - 1] or None, got '42'"),
    ({"seed": 2**64}, "seed must be an integer"),
    ({"logprobs": -1}, "logprobs must be an integer >= 0 or None, got -1"),
    ({"ignore_eos": "yes"}, "ignore_eos must be a bool, got 'yes'"),
])
def test_invalid_params_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    assert message in str(err.value)


def test_normalisation_and_greedy():
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(stop_token_ids=(7,)).stop_token_ids == [7]
    assert SamplingParams(top_k=0).top_k == -1
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=0.01).greedy


# ---------------------------------------------------------------------------------------------
# Sampler


def _logits(rows: int, vocab: int, seed: int, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=gen) * 3).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax_with_lowest_id_on_ties(device):
    logits = _logits(6, 50, 0, device)
    logits[1, 7] = logits[1, 30] = logits[1].max() + 1  # a tie: argmax takes the lower id
    out = Sampler()(logits, [SamplingParams(temperature=0)] * 6, [None] * 6)
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.token_ids[1] == 7
    assert out.logprobs == [None] * 6


@pytest.mark.parametrize("device", DEVICES)
def test_top_k_1_and_tiny_top_p_are_greedy_at_any_temperature(device):
    logits = _logits(8, 64, 1, device)
    logits[2, 5] = logits[2, 9] = logits[2].max() + 0.5
    expected = logits.argmax(dim=-1).tolist()
    sampler = Sampler()
    for temperature in (0.3, 1.0, 5.0, 100.0):
        for params in (SamplingParams(temperature=temperature, top_k=1),
                       SamplingParams(temperature=temperature, top_p=1e-6)):
            for _ in range(5):
                assert sampler(logits, [params] * 8, [None] * 8).token_ids == expected


def test_mixed_batch_keeps_greedy_rows_greedy():
    logits = _logits(6, 40, 2)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=2.0)] * 3
    for _ in range(10):
        ids = Sampler()(logits, params, [None] * 6).token_ids
        assert ids[0::2] == logits[0::2].argmax(dim=-1).tolist()


def test_filtered_probs_top_k_then_top_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    # top_p 0.75: the mass above 0.15 is 0.8 >= 0.75, so only {0.5, 0.3} stay, renormalised.
    got = filtered_probs(logits, [1.0], [-1], [0.75])
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    got = filtered_probs(logits, [1.0], [3], [1.0])
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.5, 0.15, 0.3]]) / 0.95)
    # top-k first, then top-p on what is left: top_k 2 leaves {0.625, 0.375}; 0.625 already reaches
    # top_p 0.6 (though 0.5 of the full softmax would not), while 0.7 needs both.
    got = filtered_probs(logits, [1.0], [2], [0.6])
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    got = filtered_probs(logits, [1.0], [2], [0.7])
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    # top_p = 1 keeps even a vanishing tail.
    tail = torch.tensor([[30.0, 0.0, -5.0]])
    assert (filtered_probs(tail, [1.0], [-1], [1.0]) > 0).all()


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew a token whose probability is 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# chi-square 99.99% quantiles: 9 degrees of freedom 33.7, 3 degrees 21.1. Seeds are fixed, so these
# are not flaky; they fail when the distribution is wrong (e.g. temperature ignored: chi2 in the 1000s).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seeded", [False, True])
def test_frequencies_follow_softmax_over_temperature(device, seeded):
    vocab, rows, calls, temperature = 10, 1000, 20, 0.7
    logits = _logits(1, vocab, 3, device).expand(rows, vocab).contiguous() / 2
    params = [SamplingParams(temperature=temperature)] * rows
    torch.manual_seed(0)
    generator = make_generator(1234, device) if seeded else None
    counts = torch.zeros(vocab)
    for _ in range(calls):
        out = Sampler()(logits, params, [generator] * rows)
        counts += torch.bincount(torch.tensor(out.token_ids), minlength=vocab)
    expected = torch.softmax(logits[0].cpu() / temperature, dim=-1)
    assert _chi_square(counts, expected) < 33.7


def test_top_k_frequencies_follow_the_renormalised_softmax():
    vocab, rows = 12, 4000
    logits = _logits(1, vocab, 4).expand(rows, vocab).contiguous() / 3
    torch.manual_seed(1)
    counts = torch.zeros(vocab)
    for _ in range(5):
        out = Sampler()(logits, [SamplingParams(temperature=1.5, top_k=4)] * rows, None)
        counts += torch.bincount(torch.tensor(out.token_ids), minlength=vocab)
    expected = torch.softmax(logits[0] / 1.5, dim=-1)
    top = expected.topk(4).indices
    masked = torch.zeros(vocab)
    masked[top] = expected[top] / expected[top].sum()
    assert _chi_square(counts, masked) < 21.1


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_rows_are_reproducible_whatever_else_is_in_the_batch(device):
    vocab, steps = 100, 25
    mine = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, seed=1234)
    my_logits = [_logits(1, vocab, 100 + s, device) for s in range(steps)]

    def run(others: int, position: int, other_seed: int) -> list[int]:
        generator = make_generator(mine.seed, device)
        other_params = [SamplingParams(temperature=0.8 + 0.1 * j, seed=(j if j % 2 else None))
                        for j in range(others)]
        other_gens = [make_generator(p.seed, device) for p in other_params]
        drawn = []
        for step in range(steps):
            rows = list(_logits(others, vocab, other_seed + step, device))
            rows.insert(position, my_logits[step][0])
            params = other_params[:position] + [mine] + other_params[position:]
            gens = other_gens[:position] + [generator] + other_gens[position:]
            torch.manual_seed(other_seed + step)  # the unseeded rows' draws differ between runs too
            drawn.append(Sampler()(torch.stack(rows), params, gens).token_ids[position])
        return drawn

    alone = run(0, 0, 0)
    assert run(5, 3, 77) == alone
    assert run(9, 9, 4242) == alone
    assert len(set(alone)) > 5  # it is sampling, not a constant


def test_different_seeds_give_different_draws():
    logits = torch.zeros(1, 50)  # uniform: any two streams agree on 1 draw in 50
    draws = {}
    for seed in (1, 2):
        generator = make_generator(seed, "cpu")
        draws[seed] = [Sampler()(logits, [SamplingParams(seed=seed)], [generator]).token_ids[0]
                       for _ in range(200)]
    same = sum(a == b for a, b in zip(draws[1], draws[2]))
    assert same < 20
    again = make_generator(1, "cpu")
    assert [Sampler()(logits, [SamplingParams(seed=1)], [again]).token_ids[0] for _ in range(200)] == draws[1]


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_raw_log_softmax_and_include_the_chosen_token(device):
    logits = _logits(4, 30, 5, device)
    params = [SamplingParams(temperature=0.5, top_k=2, logprobs=3), SamplingParams(temperature=0, logprobs=0),
              SamplingParams(temperature=1.0), SamplingParams(temperature=3.0, logprobs=5, seed=9)]
    gens = [None, None, None, make_generator(9, device)]
    out = Sampler()(logits, params, gens)
    assert isinstance(out, SampleOutput)
    reference = torch.log_softmax(logits.float(), dim=-1).cpu()
    assert out.logprobs[2] is None
    assert out.logprobs[1] == pytest.approx({out.token_ids[1]: reference[1, out.token_ids[1]].item()})
    assert out.token_ids[1] == logits[1].argmax().item()
    for row in (0, 3):
        entry = out.logprobs[row]
        n = params[row].logprobs
        top = reference[row].topk(n).indices.tolist()
        assert out.token_ids[row] in entry
        assert next(iter(entry)) == out.token_ids[row]  # the chosen token comes first
        assert set(entry) == set(top) | {out.token_ids[row]}
        for token, value in entry.items():
            assert value == pytest.approx(reference[row, token].item(), abs=1e-5)
    # The sampled row never leaves its top_k=2 set, and its logprobs ignore the temperature.
    assert out.token_ids[0] in reference[0].topk(2).indices.tolist()


def test_suppressed_tokens_are_never_chosen():
    logits = _logits(2, 20, 6)
    best = logits.argmax(dim=-1).tolist()
    params = [SamplingParams(temperature=0, logprobs=1), SamplingParams(temperature=1.0)]
    for _ in range(50):
        out = Sampler()(logits, params, None, suppress=[[best[0], 999], [best[1]]])
        assert out.token_ids[0] == logits[0].topk(2).indices[1].item()
        assert out.token_ids[1] != best[1]
        # logprobs stay those of the raw logits: the suppressed best token is still reported.
        assert best[0] in out.logprobs[0]


def test_make_generator_and_shape_checks():
    assert make_generator(None, "cpu") is None
    a, b = make_generator(7, "cpu"), make_generator(7, torch.device("cpu"))
    assert torch.rand(3, generator=a).tolist() == torch.rand(3, generator=b).tolist()
    with pytest.raises(ValueError, match="3 logit rows need 3"):
        Sampler()(torch.zeros(3, 5), [SamplingParams()] * 2, [None] * 3)
    with pytest.raises(ValueError, match="logits must be"):
        Sampler()(torch.zeros(5), [SamplingParams()], [None])


# ---------------------------------------------------------------------------------------------
# Tokenizers


@pytest.fixture(scope="module")
def bpe(checkpoint):
    return AutoTokenizer.from_pretrained(checkpoint("llama"))


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A Llama-style sentencepiece BPE with byte fallback, trained on a few lines (milliseconds)."""
    import sentencepiece

    from fixtures.tokenizer import CORPUS_PATH

    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines() + ["café crème naïve", "中文 字符 测试"] * 3
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2)
    directory = tmp_path_factory.mktemp("spm")
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    return LlamaTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def smollm2(smollm2_bf16):
    """SmolLM2's tokenizer, as `convert` saved it from the GGUF (loading it from the GGUF parses the
    whole file's metadata again)."""
    return AutoTokenizer.from_pretrained(smollm2_bf16)


def _stream(tokenizer, prompt: list[int], generated: list[int], skip: bool = True):
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
    deltas = [detok.append(t) for t in generated]
    return detok, deltas


def _continuation(tokenizer, prompt: list[int], generated: list[int], skip: bool = True) -> str:
    """What the generated ids add to the prompt's text: the reference for the streamed text."""
    before = tokenizer.decode(prompt, skip_special_tokens=skip)
    return tokenizer.decode(prompt + generated, skip_special_tokens=skip)[len(before):]


def _random_text(rng: random.Random) -> str:
    pool = list("abcdefgh ,.\n") + ["é", "ü", "中", "文", "字", "😀", "🎉", "👍🏽", "€", " the", " lamp"]
    return "".join(rng.choice(pool) for _ in range(rng.randrange(1, 25)))


def _check_valid_text_streams(tokenizer, rng: random.Random, prompt: list[int]) -> None:
    text = _random_text(rng)
    ids = tokenizer.encode(text, add_special_tokens=False)
    detok, deltas = _stream(tokenizer, prompt, ids)
    assert not any(REPLACEMENT in d for d in deltas), (text, deltas)
    assert "".join(deltas) == detok.text == _continuation(tokenizer, prompt, ids)


# ---------------------------------------------------------------------------------------------
# IncrementalDetokenizer


def test_split_character_is_held_back_not_replaced(bpe):
    ids = bpe.encode("a中😀", add_special_tokens=False)
    assert len(ids) == 1 + 3 + 4  # the fixture tokenizer has only single-byte tokens for these
    detok, deltas = _stream(bpe, [], ids)
    assert deltas == ["a", "", "", "中", "", "", "", "😀"]
    assert detok.text == "a中😀"


def test_unfinished_tail_shows_in_text_as_the_full_decode_does(bpe):
    ids = bpe.encode("ab中", add_special_tokens=False)[:-1]  # stop one byte short of 中
    detok, deltas = _stream(bpe, [], ids)
    assert "".join(deltas) == "ab"
    assert detok.text == bpe.decode(ids) == "ab" + REPLACEMENT


@pytest.mark.parametrize("skip", [True, False])
def test_byte_level_random_ids_equal_the_full_decode(bpe, skip):
    rng = random.Random(0)
    prompt = bpe.encode("The keeper lit the lamp.", add_special_tokens=False)
    vocab = len(bpe)
    for trial in range(150):
        generated = [rng.randrange(vocab + 10) for _ in range(rng.randrange(1, 40))]  # some past the vocab
        detok, deltas = _stream(bpe, prompt if trial % 2 else [], generated, skip)
        assert detok.text == bpe.decode(generated, skip_special_tokens=skip), generated
        assert detok.text.startswith("".join(deltas))
        assert not any(d.endswith(REPLACEMENT) for d in deltas)  # only ever a finished character


def test_byte_level_multilingual_text_streams_without_replacement_chars(bpe):
    rng = random.Random(1)
    for trial in range(150):
        _check_valid_text_streams(bpe, rng, bpe.encode("Hi <|im_start|>", add_special_tokens=False)
                                  if trial % 2 else [])


def test_sentencepiece_continues_the_prompt_with_its_space(spm):
    prompt = spm.encode("the lamp")  # <s> ▁the ▁lamp
    generated = spm.encode("keeper 中文", add_special_tokens=False)
    detok, deltas = _stream(spm, prompt, generated)
    assert detok.text == " keeper 中文" == _continuation(spm, prompt, generated)
    assert deltas[0].startswith(" ")
    # Without a prompt the leading space is the one a plain decode strips.
    assert _stream(spm, [], generated)[0].text == spm.decode(generated) == "keeper 中文"


@pytest.mark.parametrize("skip", [True, False])
def test_sentencepiece_random_pieces_and_text(spm, skip):
    rng = random.Random(2)
    prompt = spm.encode("Say something:")
    pieces = [i for i, tok in enumerate(spm.convert_ids_to_tokens(list(range(len(spm)))))
              if not tok.startswith("<0x")]  # byte tokens: see test_sentencepiece_invalid_bytes
    for trial in range(100):
        p = prompt if trial % 2 else []
        generated = [rng.choice(pieces) for _ in range(rng.randrange(1, 30))]
        detok, deltas = _stream(spm, p, generated, skip)
        assert "".join(deltas) == detok.text == _continuation(spm, p, generated, skip)
        _check_valid_text_streams(spm, rng, p)


def test_sentencepiece_byte_fallback_character_is_held_back(spm):
    ids = spm.encode("a😀", add_special_tokens=False)
    assert spm.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    detok, deltas = _stream(spm, spm.encode("x"), ids)
    assert deltas[-4:] == ["", "", "", "😀"]
    assert detok.text == " a😀"


@pytest.mark.slow
def test_smollm2_merges_that_end_mid_character(smollm2):
    ids = smollm2.encode(" 😀 符", add_special_tokens=False)
    tokens = smollm2.convert_ids_to_tokens(ids)
    assert any(smollm2.decode([i]).endswith(REPLACEMENT) and len(t) > 1 for i, t in zip(ids, tokens))
    detok, deltas = _stream(smollm2, [], ids)
    assert not any(REPLACEMENT in d for d in deltas)
    assert detok.text == " 😀 符"
    rng = random.Random(3)
    prompt = smollm2.encode("<|im_start|>user\nHi<|im_end|>\n", add_special_tokens=False)
    for trial in range(100):
        p = prompt if trial % 2 else []
        _check_valid_text_streams(smollm2, rng, p)
        generated = [rng.randrange(len(smollm2)) for _ in range(rng.randrange(1, 30))]
        detok, deltas = _stream(smollm2, p, generated, skip=bool(trial % 3))
        assert detok.text == smollm2.decode(generated, skip_special_tokens=bool(trial % 3))


# ---------------------------------------------------------------------------------------------
# Stop strings


def _stream_until_stop(tokenizer, ids: list[int], stop: list[str]):
    detok = IncrementalDetokenizer(tokenizer, [])
    for n, token in enumerate(ids, 1):
        detok.append(token)
        if detok.check_stop(stop) is not None:
            return detok, n
    return detok, len(ids)


def _token_boundaries(tokenizer, ids: list[int]) -> list[int]:
    return [len(tokenizer.decode(ids[:n])) for n in range(1, len(ids))]


def test_stop_string_spanning_two_tokens_is_cut_exactly(bpe):
    text = "The keeper climbed the stairs and lit the lamp for the boats."
    ids = bpe.encode(text, add_special_tokens=False)
    for boundary in _token_boundaries(bpe, ids)[2:-2]:
        stop = text[boundary - 2:boundary + 2]  # two characters each side of a token boundary
        detok, used = _stream_until_stop(bpe, ids, [stop])
        assert detok.stop_string == stop
        assert detok.text == text[:text.index(stop)]
        assert used < len(ids) or text.endswith(stop)


def test_stop_string_inside_one_token_and_earliest_of_several(bpe):
    text = "alpha beta gamma delta"
    ids = bpe.encode(text, add_special_tokens=False)
    detok, _ = _stream_until_stop(bpe, ids, ["delta", "eta", "mm"])
    assert (detok.stop_string, detok.text) == ("eta", "alpha b")
    with pytest.raises(RuntimeError, match="stop string 'eta'"):
        detok.append(ids[-1])
    assert detok.check_stop(["delta"]) == "eta"  # stays stopped
    detok, _ = _stream_until_stop(bpe, ids, ["zeta"])
    assert (detok.stop_string, detok.text) == (None, text)
    assert IncrementalDetokenizer(bpe, []).check_stop([]) is None


def test_multibyte_stop_string(bpe, spm):
    for tokenizer in (bpe, spm):
        ids = tokenizer.encode("go 中文 now", add_special_tokens=False)
        detok, _ = _stream_until_stop(tokenizer, ids, ["文"])
        assert detok.text == "go 中"
        assert REPLACEMENT not in detok.text


def test_stop_checked_once_after_many_appends_still_found(bpe):
    ids = bpe.encode("one two three four", add_special_tokens=False)
    detok = IncrementalDetokenizer(bpe, [])
    for token in ids:
        detok.append(token)
    assert detok.check_stop(["two"]) == "two"
    assert detok.text == "one "
    assert detok.token_ids == ids
