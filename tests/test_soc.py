"""`--dtype auto`: bf16 only where the chip has it and the source is bf16, else fp16 — for a GGUF's
dequantized (fp32) weights too, which a 910B then gets in fp16, not bf16."""

import pytest

from ascend_common.errors import UserError
from ascend_common.soc import SOCS, resolve_dtype
from ascend_convert.plan import dominant_float_dtype
from ascend_convert.readers import TensorInfo


@pytest.mark.parametrize(("soc", "source", "chosen"), [
    ("ascend910b", "bfloat16", "bfloat16"),
    ("ascend910b", "float32", "float16"),
    ("ascend910b", "float16", "float16"),
    ("ascend910a", "bfloat16", "float16"),
    ("ascend310p", "bfloat16", "float16"),
    ("ascend310p", "float32", "float16"),
])
def test_auto(soc, source, chosen):
    assert resolve_dtype(SOCS[soc], "auto", source) == chosen


def test_a_dtype_the_chip_lacks_is_refused():
    with pytest.raises(UserError, match=r"^--dtype bfloat16: ascend910a \(Atlas 800 / 910A\) has no bfloat16 "
                                        r"support; it supports float16, float32$"):
        resolve_dtype(SOCS["ascend910a"], "bfloat16", "bfloat16")


def test_a_gguf_source_counts_as_fp32_by_its_dequantized_bytes():
    """Q4_1 blocks are read as fp32: the source dtype is the one most elements come out in."""
    infos = [TensorInfo("model.embed_tokens.weight", "float32", (320, 64), "m.gguf", "Q4_1"),
             TensorInfo("model.norm.weight", "float32", (64,), "m.gguf", "float32"),
             TensorInfo("lm_head.weight", "bfloat16", (8, 64), "m.gguf", "bfloat16")]
    assert dominant_float_dtype(infos) == "float32"
    assert resolve_dtype(SOCS["ascend910b"], "auto", dominant_float_dtype(infos)) == "float16"
