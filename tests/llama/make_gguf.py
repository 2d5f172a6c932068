"""Write a tiny, valid, 1-layer llama GGUF model for tests.

The model is random (seeded) but shaped so that llama.cpp loads it in milliseconds and
greedy decoding streams printable ASCII:

* vocabulary: SentencePiece-style ("llama" tokenizer model): ``<unk>``, ``<s>``, ``</s>``,
  ``<|im_start|>``, ``<|im_end|>``, the 256 byte-fallback tokens ``<0x00>``..``<0xFF>``,
  every printable ASCII character (space written as ``▁``) and a few words;
* residual channel 0 is a constant "bias" channel and channel 1 a "stop trigger" that only
  the ``.`` token carries.  No layer writes either channel, so after the final RMS norm the
  output projection can (a) push every non-printable token (control, byte, unknown) far
  below the printable ones and (b) make ``<|im_end|>`` the greedy choice right after a
  ``.`` — and only then.  A generation therefore ends with ``finish_reason="stop"`` once
  the model emits a ``.``, or with ``"length"`` at ``max_tokens``;
* a ChatML ``tokenizer.chat_template``.

Weights are f32.  With temperature 0 the output depends only on the prompt.
"""

from __future__ import annotations

import string
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt

N_CTX = 512
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_LAYER = 1
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
SEED = 1234

SPACE = "\u2581"  # SentencePiece's visible space
WORDS = ("the", "and", "hello", "world", "stream")

BIAS_CH = 0
STOP_CH = 1
CHANNEL = 8.0  # value of the bias channel (and of the stop channel on ".")
QK_SCALE = 3.0  # sharper than uniform attention, so the output depends on the prompt
LETTER_BIAS = 0.5
DOT_BIAS = 1.0

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Array = npt.NDArray[np.float32]


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece vocabulary."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []

    def add(text: str, score: float, kind: gguf.TokenType) -> None:
        if text in tokens:
            return
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    add("<|im_start|>", 0.0, gguf.TokenType.CONTROL)
    add("<|im_end|>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    for ch in string.printable:
        if ch in "\t\n\r\x0b\x0c":
            continue  # covered by the byte tokens
        add(SPACE if ch == " " else ch, -1.0, gguf.TokenType.NORMAL)
    # Words, with every prefix so SentencePiece's pair merges can reach them.
    for word in WORDS:
        piece = SPACE + word
        for end in range(2, len(piece) + 1):
            add(piece[:end], float(end), gguf.TokenType.NORMAL)
    return tokens, scores, types


def _printable(kind: int) -> bool:
    return kind == int(gguf.TokenType.NORMAL)


def build_tensors(tokens: list[str], types: list[int], seed: int = SEED) -> dict[str, Array]:
    """Seeded random weights, shaped as numpy (out, in) like the HF->GGUF converter."""
    rng = np.random.default_rng(seed)
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    def rand(*shape: int, scale: float) -> Array:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # Embeddings: unit-scale content, a large constant bias channel, stop trigger on ".".
    embd = rand(n_vocab, N_EMBD, scale=1.0)
    embd[:, BIAS_CH] = CHANNEL
    embd[:, STOP_CH] = 0.0
    stop_trigger = tokens.index(".")
    embd[stop_trigger, STOP_CH] = CHANNEL

    def reads(out_dim: int, in_dim: int, scale: float) -> Array:
        w = rand(out_dim, in_dim, scale=scale / np.sqrt(in_dim))
        w[:, [BIAS_CH, STOP_CH]] = 0.0  # layers ignore the two reserved channels ...
        return w

    def writes(out_dim: int, in_dim: int, scale: float) -> Array:
        w = rand(out_dim, in_dim, scale=scale / np.sqrt(in_dim))
        w[[BIAS_CH, STOP_CH], :] = 0.0  # ... and never write them
        return w

    t: dict[str, Array] = {"token_embd.weight": embd}
    for i in range(N_LAYER):
        t[f"blk.{i}.attn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[f"blk.{i}.attn_q.weight"] = reads(N_HEAD * head_dim, N_EMBD, QK_SCALE)
        t[f"blk.{i}.attn_k.weight"] = reads(N_HEAD_KV * head_dim, N_EMBD, QK_SCALE)
        t[f"blk.{i}.attn_v.weight"] = reads(N_HEAD_KV * head_dim, N_EMBD, 1.0)
        t[f"blk.{i}.attn_output.weight"] = writes(N_EMBD, N_HEAD * head_dim, 1.0)
        t[f"blk.{i}.ffn_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
        t[f"blk.{i}.ffn_gate.weight"] = reads(N_FF, N_EMBD, 1.0)
        t[f"blk.{i}.ffn_up.weight"] = reads(N_FF, N_EMBD, 1.0)
        t[f"blk.{i}.ffn_down.weight"] = writes(N_EMBD, N_FF, 1.0)

    t["output_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)

    # Logits = out @ rmsnorm(x); the bias channel, normalised, is about 5 for every token.
    out = rand(n_vocab, N_EMBD, scale=1.0)
    out[:, STOP_CH] = 0.0
    end_turn = tokens.index("<|im_end|>")
    for tid, kind in enumerate(types):
        # Control, byte and unknown tokens are never chosen.
        out[tid, BIAS_CH] = 0.0 if _printable(kind) else -20.0
    # A mild preference for letters, spaces and words so the gibberish looks text-like,
    # and one for "." so that generations end after a few dozen tokens.
    for tid, tok in enumerate(tokens):
        if tok.isalpha() or tok == SPACE or (tok.startswith(SPACE) and len(tok) > 1):
            out[tid, BIAS_CH] = LETTER_BIAS
    out[stop_trigger, BIAS_CH] = DOT_BIAS
    # End of turn: only right after a "." (the stop channel is set only then).
    out[end_turn, :] = 0.0
    out[end_turn, BIAS_CH] = -20.0
    out[end_turn, STOP_CH] = 100.0
    t["output.weight"] = out
    return t


def write_tiny_model(path: Path, seed: int = SEED) -> None:
    """Write the tiny llama model to ``path`` (a ``.gguf`` file, about 370 KB)."""
    tokens, scores, types = build_vocab()
    tensors = build_tensors(tokens, types, seed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("sluice-tiny-test")
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(tokens.index("<unk>"))
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("</s>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    import sys

    write_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
