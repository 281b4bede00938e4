"""The shipped CTranslate2 Whisper model rewritten as a whisper.cpp ggml file (no download, no PyTorch).

No registry package carries a ggml Whisper model, so the whisper.cpp engine converts the one the project
already ships (`shared/asr/models.py`) once, into `ASR_MODELS_DIR/ggml-<name>.bin` (written under a temporary
name, then renamed: a racing process sees no file or a complete one; `clipjet models` does it at image build).

Source: CTranslate2's `model.bin` (binary version 6: for each variable its name, shape, dtype id and bytes, then
aliases) plus the folder's vocabulary. Target: the layout whisper.cpp's `models/convert-pt-to-ggml.py` writes:
magic, eleven int32 hyper-parameters, the mel filterbank (float32), the byte-level tokens, then each tensor
(dims, name length, type, dims innermost first, name, data) under OpenAI Whisper's state-dict names.
CTranslate2 fuses attention projections (self: q|k|v, cross: q and k|v); they are split back. Whisper's key
projections have no bias: CTranslate2's fused zero bias for k is dropped.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shared.errors import ModelUnavailable

GGML_MAGIC = 0x67676D6C  # "ggml"
CT2_BINARY_VERSION = 6
CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # id → numpy type (bfloat16 unsupported)
FTYPE_F32, FTYPE_F16 = 0, 1
TYPE_Q8_0 = 8  # ggml_type of a Q8_0 tensor
FTYPE_MOSTLY_Q8_0 = 7 + 2 * 1000  # the file's ftype: GGML_FTYPE_MOSTLY_Q8_0 + GGML_QNT_VERSION (2) x 1000
Q8_BLOCK = 32
Q8_DTYPE = np.dtype([("d", "<f2"), ("qs", "i1", (Q8_BLOCK,))])  # ggml's block_q8_0: fp16 scale, 32 int8
WEIGHT_TYPES = ("f16", "q8_0")
N_FFT = 400
SAMPLE_RATE = 16_000
EOT_TOKEN = "<|endoftext|>"
MODEL_FILE_MODE = 0o644  # a converted model is read by the service user, whoever converted it
KEEP_F32 = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding")


@dataclass(frozen=True)
class Ct2Model:
    variables: dict[str, np.ndarray]

    def get(self, name: str) -> np.ndarray:
        try:
            return self.variables[name]
        except KeyError as exc:
            raise ModelUnavailable(f"the CTranslate2 model has no variable {name!r}: not a Whisper model") from exc

    def layers(self, side: str) -> int:
        return sum(1 for name in self.variables
                   if name.startswith(f"{side}/layer_") and name.endswith("ffn/linear_0/weight"))


def read_ct2(path: Path) -> Ct2Model:
    """The variables of a CTranslate2 `model.bin` (aliases resolved), as numpy arrays over one read of the file."""
    blob = path.read_bytes()
    at = 0

    def take(fmt: str) -> int:
        nonlocal at
        (value,) = struct.unpack_from(fmt, blob, at)
        at += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal at
        size = take("H")
        value = blob[at:at + size - 1].decode()
        at += size
        return value

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ModelUnavailable(f"{path}: CTranslate2 binary version {version}; this converter reads "
                               f"{CT2_BINARY_VERSION}")
    spec = text()
    if spec != "WhisperSpec":
        raise ModelUnavailable(f"{path}: a {spec} model, not Whisper")
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, size = take("B"), take("I")
        dtype = CT2_DTYPES[dtype_id] if dtype_id < len(CT2_DTYPES) else None
        if dtype is None:
            raise ModelUnavailable(f"{path}: variable {name} has a dtype (id {dtype_id}) this converter cannot read")
        count = size // np.dtype(dtype).itemsize
        variables[name] = np.frombuffer(blob, dtype=dtype, count=count, offset=at).reshape(shape)
        at += size
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return Ct2Model(variables)


def dequantized(model: Ct2Model, prefix: str) -> np.ndarray:
    """A linear layer's weight as float32 (int8 weights carry a per-row `weight_scale`)."""
    weight = model.get(f"{prefix}/weight")
    if weight.dtype == np.int8:
        scale = model.get(f"{prefix}/weight_scale").astype(np.float32)
        return weight.astype(np.float32) / scale.reshape(-1, 1)
    return weight.astype(np.float32)


def read_tokens(folder: Path) -> list[str]:
    """The model's tokens in id order, as CTranslate2 stores them (vocabulary.json or vocabulary.txt)."""
    if (folder / "vocabulary.json").is_file():
        return list(json.loads((folder / "vocabulary.json").read_text(encoding="utf-8")))
    if (folder / "vocabulary.txt").is_file():
        return (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    raise ModelUnavailable(f"{folder}: no vocabulary.json or vocabulary.txt")


def byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte → printable character map, inverted (tokens are stored in that form)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(kept), 0
    for byte in range(256):
        if byte not in kept:
            kept.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(kept, chars, strict=True)}


def text_tokens(tokens: list[str]) -> list[bytes]:
    """The ordinary (non-special) tokens as bytes: those before <|endoftext|>, as whisper.cpp expects them."""
    try:
        eot = tokens.index(EOT_TOKEN)
    except ValueError as exc:
        raise ModelUnavailable(f"the vocabulary has no {EOT_TOKEN}") from exc
    decode = byte_decoder()
    return [bytes(decode[c] for c in token) for token in tokens[:eot]]


def mel_filters(n_mels: int) -> np.ndarray:
    from faster_whisper.feature_extractor import FeatureExtractor

    return np.asarray(FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels), dtype=np.float32)


def _attention(model: Ct2Model, src: str, dst: str, cross: bool) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}_ln.weight", model.get(f"{src}/layer_norm/gamma")
    yield f"{dst}_ln.bias", model.get(f"{src}/layer_norm/beta")
    if cross:  # linear_0 = q, linear_1 = k|v, linear_2 = out
        q_w, q_b = dequantized(model, f"{src}/linear_0"), model.get(f"{src}/linear_0/bias")
        k_w, v_w = np.split(dequantized(model, f"{src}/linear_1"), 2)
        _, v_b = np.split(model.get(f"{src}/linear_1/bias"), 2)
        out = f"{src}/linear_2"
    else:  # linear_0 = q|k|v, linear_1 = out
        q_w, k_w, v_w = np.split(dequantized(model, f"{src}/linear_0"), 3)
        q_b, _, v_b = np.split(model.get(f"{src}/linear_0/bias"), 3)
        out = f"{src}/linear_1"
    yield f"{dst}.query.weight", q_w
    yield f"{dst}.query.bias", q_b
    yield f"{dst}.key.weight", k_w
    yield f"{dst}.value.weight", v_w
    yield f"{dst}.value.bias", v_b
    yield f"{dst}.out.weight", dequantized(model, out)
    yield f"{dst}.out.bias", model.get(f"{out}/bias")


def _mlp(model: Ct2Model, src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.mlp_ln.weight", model.get(f"{src}/ffn/layer_norm/gamma")
    yield f"{dst}.mlp_ln.bias", model.get(f"{src}/ffn/layer_norm/beta")
    for index, ct2 in (("0", "linear_0"), ("2", "linear_1")):
        yield f"{dst}.mlp.{index}.weight", dequantized(model, f"{src}/ffn/{ct2}")
        yield f"{dst}.mlp.{index}.bias", model.get(f"{src}/ffn/{ct2}/bias")


def whisper_tensors(model: Ct2Model) -> Iterator[tuple[str, np.ndarray]]:
    """OpenAI Whisper's state dict (the names whisper.cpp loads) from CTranslate2's variables."""
    yield "encoder.positional_embedding", model.get("encoder/position_encodings/encodings")
    for conv in ("conv1", "conv2"):
        yield f"encoder.{conv}.weight", model.get(f"encoder/{conv}/weight")
        yield f"encoder.{conv}.bias", model.get(f"encoder/{conv}/bias").reshape(-1, 1)
    for i in range(model.layers("encoder")):
        yield from _attention(model, f"encoder/layer_{i}/self_attention", f"encoder.blocks.{i}.attn", cross=False)
        yield from _mlp(model, f"encoder/layer_{i}", f"encoder.blocks.{i}")
    yield "encoder.ln_post.weight", model.get("encoder/layer_norm/gamma")
    yield "encoder.ln_post.bias", model.get("encoder/layer_norm/beta")
    yield "decoder.positional_embedding", model.get("decoder/position_encodings/encodings")
    yield "decoder.token_embedding.weight", model.get("decoder/embeddings/weight")
    for i in range(model.layers("decoder")):
        yield from _attention(model, f"decoder/layer_{i}/self_attention", f"decoder.blocks.{i}.attn", cross=False)
        yield from _attention(model, f"decoder/layer_{i}/attention", f"decoder.blocks.{i}.cross_attn", cross=True)
        yield from _mlp(model, f"decoder/layer_{i}", f"decoder.blocks.{i}")
    yield "decoder.ln.weight", model.get("decoder/layer_norm/gamma")
    yield "decoder.ln.bias", model.get("decoder/layer_norm/beta")


def hyper_parameters(model: Ct2Model, weights: str = "f16") -> list[int]:
    """n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head,
    n_text_layer, n_mels, ftype: the header whisper.cpp reads."""
    conv1 = model.get("encoder/conv1/weight")
    audio_ctx, audio_state = model.get("encoder/position_encodings/encodings").shape
    vocab, text_state = model.get("decoder/embeddings/weight").shape
    text_ctx = model.get("decoder/position_encodings/encodings").shape[0]
    return [vocab, audio_ctx, audio_state, int(model.get("encoder/num_heads")), model.layers("encoder"), text_ctx,
            text_state, int(model.get("decoder/num_heads")), model.layers("decoder"), conv1.shape[1],
            FTYPE_MOSTLY_Q8_0 if weights == "q8_0" else FTYPE_F16]


def quantize_q8_0(data: np.ndarray) -> bytes:
    """ggml's Q8_0 of a tensor (rows of a multiple of 32): per block of 32, d = max|x| / 127 and round(x / d)."""
    blocks = np.asarray(data, dtype=np.float32).reshape(-1, Q8_BLOCK)
    scale = np.abs(blocks).max(axis=1) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    packed = np.empty(len(blocks), dtype=Q8_DTYPE)
    packed["d"] = scale.astype(np.float16)
    packed["qs"] = np.clip(np.round(blocks * inverse[:, None]), -127, 127).astype(np.int8)
    return packed.tobytes()


def _write_tensor(out: BinaryIO, name: str, data: np.ndarray, weights: str = "f16") -> None:
    encoded = name.encode()
    if weights == "q8_0" and data.ndim == 2 and name not in KEEP_F32 and data.shape[-1] % Q8_BLOCK == 0:
        out.write(struct.pack("iii", data.ndim, len(encoded), TYPE_Q8_0))
        out.write(struct.pack(f"{data.ndim}i", *reversed(data.shape)))
        out.write(encoded)
        out.write(quantize_q8_0(data))
        return
    keep_f32 = data.ndim < 2 or name in KEEP_F32
    array = np.ascontiguousarray(data, dtype=np.float32 if keep_f32 else np.float16)
    out.write(struct.pack("iii", array.ndim, len(encoded), FTYPE_F32 if keep_f32 else FTYPE_F16))
    out.write(struct.pack(f"{array.ndim}i", *reversed(array.shape)))
    out.write(encoded)
    out.write(array.tobytes())


def write_ggml(ct2_folder: Path, out: BinaryIO, weights: str = "f16") -> None:
    """`weights`: f16 (as convert-pt-to-ggml.py writes) or q8_0 (2-D weights quantized as whisper.cpp's
    `quantize` does; conv kernels stay F16, positional embeddings and 1-D tensors F32)."""
    model = read_ct2(ct2_folder / "model.bin")
    params = hyper_parameters(model, weights)
    out.write(struct.pack("i", GGML_MAGIC))
    out.write(struct.pack(f"{len(params)}i", *params))
    filters = mel_filters(params[9])
    out.write(struct.pack("ii", *filters.shape))
    out.write(filters.tobytes())
    tokens = text_tokens(read_tokens(ct2_folder))
    out.write(struct.pack("i", len(tokens)))
    for token in tokens:
        out.write(struct.pack("i", len(token)))
        out.write(token)
    for name, data in whisper_tensors(model):
        _write_tensor(out, name, data, weights)


def ggml_model(ct2_folder: Path, name: str, models_dir: Path, weights: str = "f16") -> Path:
    """`ASR_MODELS_DIR/ggml-<name>[-q8_0].bin`, converted from the CTranslate2 folder on first use (atomic, race-safe).

    The file is rebuilt when the source model.bin is newer (a reinstalled package)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    target = models_dir / f"ggml-{safe}{'' if weights == 'f16' else '-' + weights}.bin"
    source = ct2_folder / "model.bin"
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        handle, work = tempfile.mkstemp(prefix=f".ggml-{safe}-", dir=models_dir)
    except OSError as exc:
        setting = "" if weights == "f16" else f" ASR_WHISPERCPP_WEIGHTS={weights}"
        raise ModelUnavailable(
            f"the whisper.cpp model {target.name} is not in ASR_MODELS_DIR {models_dir} and cannot be written there "
            f"({exc.strerror or exc}): run `ASR_ENGINE=whisper.cpp{setting} clipjet models` where that folder is "
            f"writable (the image does it at build), or point ASR_MODELS_DIR at a writable volume"
        ) from exc
    try:
        with os.fdopen(handle, "wb") as out:
            write_ggml(ct2_folder, out, weights)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(work, MODEL_FILE_MODE)  # mkstemp makes it 0600: other users (the service's) must read it
        os.replace(work, target)
    finally:
        if os.path.exists(work):
            os.unlink(work)
    return target
