"""The fast path: a preallocated (static) KV cache and CUDA-graph-captured decode steps, in gpt-fast's style.

`StaticDecoder` runs a Llama-family model (Llama, Qwen2, Mistral without a sliding window) with its own forward
pass over the model's own modules (embedding, norms, projections, MLPs), so every weight and every layer
computation is transformers' own; only attention and the KV cache are ours:

- The cache is one preallocated tensor per layer, `[batch, kv_heads, max_len, head_dim]`. A token at position
  p writes its keys and values at index p; queries see the positions <= their own (a mask), so whatever a
  longer earlier generation left beyond the current position is invisible, and prefix reuse is free: the
  next request starts writing at the reuse position.
- Decode attention groups the query heads that share a KV head as extra query rows, so grouped-query models
  read the cache once instead of repeating it per query head.
- On CUDA, one decoder layer is compiled (`torch.compile`, compiled once and reused for every layer), and two
  steps are captured as CUDA graphs: one token (decoding), and `CHUNK` tokens (a short prompt tail after
  prefix reuse, padded; speculative verification). A replay launches a whole forward pass at once.
  Longer prompts prefill eagerly with fused attention (SDPA).
- On the CPU the same code attends only over the filled part of the cache. Eagerly, each step is about 1,500
  small ops; `compile_steps` compiles the whole forward pass of short steps (one token; up to `CHUNK` tokens) with
  dynamic lengths, so inductor fuses each layer's norms, rotary and attention math around the matrix products
  (not used by default: compiling costs more than it saves, BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

MODEL_TYPES = ("llama", "qwen2", "mistral")  # the same decoder layer: pre-norm, rotary attention, gated MLP
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # position tables that do not depend on the sequence length
CHUNK = 16  # tokens per captured multi-token step


def unsupported(model: PreTrainedModel) -> str | None:
    """Why `StaticDecoder` cannot run `model`, or None if it can."""
    config = model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} (supported: {', '.join(MODEL_TYPES)})"
    inner = getattr(model, "model", None)
    rope = getattr(inner, "rotary_emb", None)
    if rope is None or getattr(rope, "rope_type", "default") not in ROPE_TYPES:
        return f"rotary embedding type {getattr(rope, 'rope_type', None)!r}"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window attention layers"
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if sliding and config.model_type == "mistral":
        return "sliding-window attention"
    return None


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, exactly as transformers' `apply_rotary_pos_emb`."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Attention of q `[B, H, T, D]` over k, v `[B, KV, S, D]`; mask `[T, S]` (True = visible) or None (all visible)."""
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    if T > CHUNK:  # a long prompt: fused attention (flash / memory-efficient), keys repeated per query head
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if k.shape[2] == T:  # nothing cached before it: plain causal attention (flash attention on CUDA)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    # Decoding: the `groups` query heads of a KV head become groups * T query rows of that head (no cache copy).
    q = q.reshape(B, k.shape[1], groups * T, D)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # as transformers' eager attention
    if mask is not None:
        scores = scores.masked_fill(~mask.repeat(groups, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).view(B, H, T, D)


def layer_forward(
    layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, kv_len: int, head_dim: int,
) -> torch.Tensor:
    """One decoder layer on x `[B, T, hidden]` at `positions`, writing its keys and values into the cache.

    `layer` is a Llama-style transformers decoder layer (`self_attn` with q/k/v/o projections, `mlp`, two norms).
    """
    attn = layer.self_attn
    B, T, _ = x.shape
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(B, T, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(B, T, -1, head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, T, -1, head_dim).transpose(1, 2)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    k_cache[:, :, positions] = k
    v_cache[:, :, positions] = v
    o = attend(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], mask, attn.scaling)
    x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


class StaticDecoder:
    """A model's forward pass over a static KV cache of `max_len` positions, with captured CUDA graphs."""

    def __init__(self, model: PreTrainedModel, max_len: int, batch: int = 1):
        config, inner = model.config, model.model
        self.model = model
        self.layers = list(inner.layers)
        self.embed, self.norm, self.lm_head = inner.embed_tokens, inner.norm, model.lm_head
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.max_len = max_len
        self.batch = batch
        weight = self.embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        shape = (batch, config.num_key_value_heads, max_len, self.head_dim)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.arange = torch.arange(max_len, device=self.device)
        cos, sin = inner.rotary_emb(weight[:1], self.arange[None])  # transformers' own tables, every position at once
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]
        self.compiled_layer = layer_forward  # compiled by `capture`, for the captured steps only (fixed shapes)
        # T -> graph, tokens in, logits out
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.start = torch.zeros(1, dtype=torch.long, device=self.device)  # first position of a captured step
        self.pad_prefill = False  # feed short prompt tails as one padded CHUNK-token step (turned on by `capture`)
        # `forward` compiled for steps of up to CHUNK tokens (set by `compile_steps`)
        self.compiled_forward: Callable[..., torch.Tensor] | None = None

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int, masked: bool = True, last_only: bool = False,
        compiled: bool = False,
    ) -> torch.Tensor:
        """Float logits `[B, T, V]` (`[B, 1, V]` if `last_only`) of `tokens` `[B, T]` at `positions` `[T]`.

        Attention covers cache positions < `kv_len`, masked to positions <= each query's own (`masked=False`:
        one token at position kv_len - 1, which sees them all).
        """
        x = self.embed(tokens)
        cos, sin = self.cos[positions][None, None], self.sin[positions][None, None]
        mask = self.arange[None, :kv_len] <= positions[:, None] if masked else None
        layer_fn = self.compiled_layer if compiled else layer_forward
        for layer, k, v in zip(self.layers, self.k, self.v):
            x = layer_fn(layer, x, cos, sin, k, v, positions, mask, kv_len, self.head_dim)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()

    def run(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Logits `[B, T, V]` of `tokens` `[B, T]` at positions start...: a graph replay where one is captured."""
        T = tokens.shape[1]
        if start + T > self.max_len:
            raise ValueError(f"positions {start}..{start + T - 1} are past the static cache ({self.max_len})")
        if T in self.graphs:
            graph, tokens_in, logits = self.graphs[T]
            self.start.fill_(start)
            tokens_in.copy_(tokens)
            graph.replay()
            return logits
        forward = self.compiled_forward if self.compiled_forward is not None and T <= CHUNK else self.forward
        return forward(tokens, self.arange[start : start + T], kv_len=start + T, masked=T > 1)

    def prefill(self, ids: list[int], start: int) -> torch.Tensor:
        """Feed prompt tokens at positions start...; float logits `[B, V]` after the last one.

        Every row gets the same prompt: a batch without captured or compiled steps computes one row and copies
        its keys and values to the others."""
        n = len(ids)
        if self.batch > 1 and not self.graphs and self.compiled_forward is None:
            return self._prefill_once(ids, start)
        # padded: pads' keys lie past the tail, unseen
        if self.pad_prefill and n <= CHUNK and start + CHUNK <= self.max_len:
            tokens = torch.tensor([ids + [ids[-1]] * (CHUNK - n)] * self.batch, device=self.device)
            return self.run(tokens, start)[:, n - 1]
        tokens = torch.tensor([ids] * self.batch, device=self.device)
        # the compiled step (every position's logits: one graph less)
        if self.compiled_forward is not None and n <= CHUNK:
            return self.run(tokens, start)[:, -1]
        positions = self.arange[start : start + n]
        return self.forward(tokens, positions, kv_len=start + n, masked=n > 1, last_only=True)[:, -1]

    def _prefill_once(self, ids: list[int], start: int) -> torch.Tensor:
        """`prefill` of a batch whose rows hold the same tokens before `start`: row 0 computed, then copied."""
        n, caches = len(ids), (self.k, self.v)
        self.k, self.v = [k[:1] for k in self.k], [v[:1] for v in self.v]  # views of row 0
        try:
            tokens, positions = torch.tensor([ids], device=self.device), self.arange[start : start + n]
            logits = self.forward(tokens, positions, kv_len=start + n, masked=n > 1, last_only=True)[:, -1]
        finally:
            self.k, self.v = caches
        for cache in (*self.k, *self.v):
            cache[1:, :, start : start + n] = cache[:1, :, start : start + n]
        return logits.expand(self.batch, -1)

    def capture(self, sizes: tuple[int, ...] = (1, CHUNK), compile: bool = True) -> None:
        """CUDA only: compile the decoder layer and capture a graph per step size (positions start..start+T-1)."""
        if compile:  # one decoder layer, compiled once and reused by every layer (same code, same shapes)
            # shapes x dtypes x engines
            torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
            self.compiled_layer = torch.compile(layer_forward, fullgraph=True, dynamic=False)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        for T in sizes:
            tokens = torch.zeros(self.batch, T, dtype=torch.long, device=self.device)
            positions = self.start + self.arange[:T]
            with torch.cuda.stream(stream):  # warm-up runs outside the graph compile and autotune
                for _ in range(3):
                    self.forward(tokens, positions, kv_len=self.max_len, compiled=True)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits = self.forward(tokens, self.start + self.arange[:T], kv_len=self.max_len, compiled=True)
            self.graphs[T] = (graph, tokens, logits)
        torch.cuda.synchronize()
        self.pad_prefill = CHUNK in self.graphs

    def compile_steps(self) -> None:
        """Compile `forward` for steps of up to CHUNK tokens (dynamic lengths and positions), and use it from now on.

        Two graphs: one token (unmasked) and 2..CHUNK tokens (masked). Made for the CPU, where there are no graphs
        to capture; inductor's on-disk cache makes every compile after the first much faster. Compiling writes the
        cache at positions 5..9: call it before the cache holds anything.
        """
        forward = torch.compile(self.forward, dynamic=True, fullgraph=True)
        for T, start in ((1, 5), (3, 7)):  # lengths other than 0 and 1, and unequal, so none is specialised
            tokens = torch.zeros(self.batch, T, dtype=torch.long, device=self.device)
            forward(tokens, self.arange[start : start + T], kv_len=start + T, masked=T > 1)
        self.compiled_forward = forward
