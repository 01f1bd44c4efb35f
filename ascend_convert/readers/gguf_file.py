"""GGUF files (llama.cpp): the header read by `gguf_header` (milliseconds, where `gguf.GGUFReader`
takes seconds on a large vocabulary), tensors dequantized with the `gguf` package one at a time,
renamed to HF names, llama's q/k row permutation undone; config, tokenizer and chat template come
from the GGUF's metadata through transformers' own GGUF support, written out as ordinary HF files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ascend_common.errors import UserError

from ..arch import ArchSpec, find_spec_for_gguf
from .base import CheckpointReader, TensorInfo
from .gguf_header import GGUFHeader

# GGUF tensors that carry nothing HF checkpoints store (llama3 GGUFs precompute RoPE frequencies).
GGUF_DERIVED_TENSORS = frozenset({"rope_freqs.weight"})
STORED_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
#: The transform `load` applies to llama-family q/k weights (TensorInfo.transforms).
UNPERMUTE_QK = "unpermute_qk:gguf"


def reverse_permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert permutation of q/k rows (interleaved RoPE pairs → HF's rotate-half)."""
    dim = weight.shape[0] // n_heads // 2
    w = weight.reshape(n_heads, dim, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


class GGUFReader(CheckpointReader):
    format = "gguf"

    def __init__(self, path: Path, extra_specs: list[ArchSpec] | None = None) -> None:
        super().__init__(path.parent)
        self.path = path
        try:
            self._header = GGUFHeader(path)
        except (ValueError, OSError) as exc:  # GGUFFormatError, or numpy refusing to map an empty file
            raise UserError(f"{path}: not a valid GGUF file ({exc})") from None
        arch = self._field("general.architecture")
        name = self._field("general.name")
        self.spec = find_spec_for_gguf(arch, name, extra_specs)
        self._config_obj = self._load_hf_config()
        self._config = self._config_obj.to_dict()
        self._config["architectures"] = [self.spec.architectures[0]]
        cfg = self.spec.canonical_config(self._config, where=str(path))
        heads = {"q": cfg["num_attention_heads"], "k": cfg["num_key_value_heads"]}
        self._unpermute: dict[str, int] = {}  # q/k weight -> its head count, for llama.cpp's permutation
        name_map = self._gguf_to_hf_names(arch, cfg["num_hidden_layers"])
        self._by_name: dict[str, object] = {}
        self._infos: list[TensorInfo] = []
        for tensor in sorted(self._header.tensors, key=lambda t: t.data_offset):
            if tensor.name in GGUF_DERIVED_TENSORS:
                continue
            hf_name = name_map.get(tensor.name)
            if hf_name is None:
                raise UserError(f"{path}: tensor {tensor.name} has no Hugging Face name for a {self.spec.family} model")
            qtype = tensor.tensor_type.name
            shape = tuple(int(d) for d in reversed(tensor.shape))
            dtype = STORED_FLOAT_TYPES.get(qtype, "float32")
            stored_as = STORED_FLOAT_TYPES.get(qtype, qtype)  # float types by torch's name, quant types by GGML's
            transforms = [] if stored_as == dtype else [f"dequantize:{stored_as}"]
            role = self.spec.role_of(hf_name)
            if self.spec.gguf_unpermute_qk and role is not None and role[0] in heads:
                self._unpermute[hf_name] = heads[role[0]]
                transforms.append(UNPERMUTE_QK)
            self._infos.append(TensorInfo(hf_name, dtype, shape, path.name, stored_as, tuple(transforms)))
            self._by_name[hf_name] = tensor

    def _field(self, key: str) -> str:
        value = self._header.fields.get(key, "")
        return value if isinstance(value, str) else ""

    def _load_hf_config(self):
        from transformers import AutoConfig

        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            return AutoConfig.from_pretrained(str(self.root), gguf_file=self.path.name)
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"{self.path}: cannot read the model config from GGUF metadata ({exc})") from None

    def _gguf_to_hf_names(self, arch: str, n_layers: int) -> dict[str, str]:
        """Map GGUF names to HF names with gguf's own table, over the HF model's parameter names."""
        import gguf
        from transformers import AutoModelForCausalLM

        arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
        table = gguf.get_tensor_name_map(arch_enum, n_layers)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self._config_obj)
        mapping = {}
        for hf_name in model.state_dict():
            base, _, suffix = hf_name.rpartition(".")
            gguf_base = table.get_name(base)
            if gguf_base is not None:
                mapping[f"{gguf_base}.{suffix}"] = hf_name
        return mapping

    def config(self) -> dict:
        return self._config

    def tensors(self) -> list[TensorInfo]:
        return self._infos

    def weight_files(self) -> list[Path]:
        return [self.path.resolve()]

    def load(self, info: TensorInfo) -> torch.Tensor:
        from gguf.quants import dequantize

        tensor = self._by_name[info.name]
        values = dequantize(tensor.data, tensor.tensor_type).reshape(info.shape)
        if info.name in self._unpermute:
            values = reverse_permute_qk(values, self._unpermute[info.name])
        if not values.flags.writeable or not values.flags.c_contiguous:  # F32 tensors are read-only memmap views
            values = np.array(values, order="C")
        return torch.from_numpy(values).to(getattr(torch, info.dtype))

    def write_side_files(self, out_dir: Path) -> list[str]:
        from transformers import AutoTokenizer, GenerationConfig

        before = set(p.name for p in out_dir.iterdir())
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.root), gguf_file=self.path.name)
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"{self.path}: cannot build the tokenizer from GGUF metadata ({exc})") from None
        tokenizer.save_pretrained(str(out_dir))
        GenerationConfig.from_model_config(self._config_obj).save_pretrained(str(out_dir))
        return sorted(set(p.name for p in out_dir.iterdir()) - before)
