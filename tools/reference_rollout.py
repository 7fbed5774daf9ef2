#!/usr/bin/env python3
"""Reference rollout sampler: Dream's batched `diffusion_generate` (spec §3.2) in PyTorch.

An independent implementation used by `benches/rollout.rs` (speed) and `tests/rollout.rs`
(token parity at temperature 0). It loads an HF model directory written by
`coupled_grpo::model::save_pretrained` (config.json + model.safetensors, or a sharded index)
into a small hand-written Qwen2 module with the causal mask removed (Dream = Qwen2 blocks,
bidirectional), and runs the sampler exactly as Dream's `_sample` does:

  * completion right-filled with the mask token, `timesteps = linspace(1, eps, steps + 1)`;
  * full logits every step, then the logit shift `cat([logits[:, :1], logits[:, :-1]], 1)`;
  * `sample_tokens` (temperature -> top-p keeping the top-1 -> top-k -> softmax ->
    Categorical / argmax; confidence by alg), `floor(n_mask * (1 - s / t))` per-row top-k
    (or multinomial without replacement when alg_temp > 0), `origin` by independent coins;
  * left padding: 4-D mask `valid_i & valid_j` (a pad query sees itself, as the Rust model
    does, so no row is fully blocked) and position ids `cumsum(mask) - 1` with pads at 1.

One optional deviation, off by default: `--ban-mask-token` never samples `<|mask|>`, as the Rust
engine does (in Dream a sampled mask token leaves its position masked).

Input (JSON file): {"input_ids": [[...]], "attention_mask": [[...]], "mask_token_id": m}
(prompts already tokenized and left-padded). Output (JSON on stdout or --out):
{"completions": [[...]], "seconds": [...], "forward_passes": n, "torch": ver, "threads": t}.

    python3 tools/reference_rollout.py --model DIR --prompts prompts.json \
        --max-new-tokens 64 --steps 64 --temperature 0 --alg entropy --threads 2
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# Model: Qwen2 blocks, no causal mask (Dream / DiffuCoder)
# ----------------------------------------------------------------------------------------


def load_state_dict(model_dir):
    from safetensors.torch import load_file

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(os.path.join(model_dir, name)))
    return {k: v.float() for k, v in state.items()}


class DiffusionLm(torch.nn.Module):
    def __init__(self, model_dir):
        super().__init__()
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.c = c
        self.h = c["num_attention_heads"]
        self.kv = c.get("num_key_value_heads") or self.h
        self.d = c["hidden_size"]
        self.hd = self.d // self.h
        self.eps = c.get("rms_norm_eps", 1e-6)
        theta = c.get("rope_theta", 10000.0)
        if c.get("rope_parameters") and c["rope_parameters"].get("rope_theta"):
            theta = c["rope_parameters"]["rope_theta"]
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        self.w = load_state_dict(model_dir)
        self.n_layers = c["num_hidden_layers"]
        self.head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def norm(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * w

    @staticmethod
    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, ids, attn_bias, pos):
        """ids [b, L]; attn_bias None (full) or bool [b, 1, L, L]; pos [b, L] -> logits [b, L, V]."""
        w = self.w
        b, n = ids.shape
        x = F.embedding(ids, w["model.embed_tokens.weight"])
        freqs = pos[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None], emb.sin()[:, None]
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            hx = self.norm(x, w[p + "input_layernorm.weight"])
            q = F.linear(hx, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"])
            k = F.linear(hx, w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"])
            v = F.linear(hx, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"])
            q = q.view(b, n, self.h, self.hd).transpose(1, 2)
            k = k.view(b, n, self.kv, self.hd).transpose(1, 2)
            v = v.view(b, n, self.kv, self.hd).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            rep = self.h // self.kv
            if rep > 1:
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, is_causal=False)
            a = a.transpose(1, 2).reshape(b, n, self.d)
            x = x + F.linear(a, w[p + "self_attn.o_proj.weight"])
            hx = self.norm(x, w[p + "post_attention_layernorm.weight"])
            g = F.linear(hx, w[p + "mlp.gate_proj.weight"])
            u = F.linear(hx, w[p + "mlp.up_proj.weight"])
            x = x + F.linear(F.silu(g) * u, w[p + "mlp.down_proj.weight"])
        x = self.norm(x, w["model.norm.weight"])
        return F.linear(x, self.head)


# ----------------------------------------------------------------------------------------
# Dream's sampler (generation_utils.py, batched variant)
# ----------------------------------------------------------------------------------------


def top_p_logits(logits, top_p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    # Shift right so the first token above the threshold is kept (the top-1 always is).
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits, top_k):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            x0 = torch.distributions.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        log_probs = torch.log(probs + 1e-10)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


@torch.no_grad()
def diffusion_generate(model, input_ids, attention_mask, mask_token_id, max_new_tokens, steps,
                       temperature, top_p, top_k, alg, alg_temp, eps, ban_mask_token=False):
    x = F.pad(input_ids, (0, max_new_tokens), value=mask_token_id)
    forward_passes = 0
    if attention_mask is not None and torch.any(attention_mask == 0.0):
        attention_mask = F.pad(attention_mask, (0, x.shape[1] - attention_mask.shape[1]), value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        valid = attention_mask.bool()
        bias = valid[:, None, :, None] & valid[:, None, None, :]
        bias = bias | torch.eye(x.shape[1], dtype=torch.bool)[None, None]  # pads see themselves
    else:
        tok_idx = torch.arange(x.shape[1])[None].expand_as(x)
        bias = None
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = model(x, bias, tok_idx)
        forward_passes += 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        if ban_mask_token:
            # Not in Dream: the Rust engine never samples <|mask|> (it would stay masked).
            mask_logits[:, mask_token_id] = torch.finfo(mask_logits.dtype).min
        t = timesteps[i]
        s = timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_token_id
            transfer_index_t_s = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer_index_t_s] = sample_tokens(mask_logits[transfer_index_t_s], temperature=temperature,
                                                      top_p=top_p, top_k=top_k)
            x[mask_index] = x0.clone()
        else:
            if alg == "maskgit_plus":
                confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p, top_k=top_k)
            elif alg == "topk_margin":
                confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                               margin_confidence=True)
            elif alg == "entropy":
                confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k, neg_entropy=True)
            else:
                raise RuntimeError(f"Unknown alg: {alg}")
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number_transfer_tokens > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                else:
                    full_confidence = full_confidence / alg_temp
                    full_confidence = F.softmax(full_confidence, dim=-1)
                    transfer_index = torch.multinomial(full_confidence, num_samples=number_transfer_tokens)
                x_ = torch.zeros_like(x, dtype=torch.long) + mask_token_id
                x_[mask_index] = x0.clone()
                row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x[:, input_ids.shape[1]:], forward_passes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON: input_ids, attention_mask, mask_token_id")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--alg", default="entropy", choices=["origin", "maskgit_plus", "topk_margin", "entropy"])
    ap.add_argument("--alg-temp", type=float, default=0.0)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ban-mask-token", action="store_true",
                    help="never sample the mask token (the Rust engine's guard; Dream has none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs (after one warm-up when > 1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.prompts) as f:
        spec = json.load(f)
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    am = torch.tensor(spec["attention_mask"], dtype=torch.long)
    model = DiffusionLm(args.model)

    def run():
        return diffusion_generate(model, ids.clone(), am.clone(), spec["mask_token_id"], args.max_new_tokens,
                                  args.steps, args.temperature, args.top_p, args.top_k, args.alg, args.alg_temp,
                                  args.eps, args.ban_mask_token)

    if args.repeat > 1:
        run()  # warm-up
    seconds = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out, passes = run()
        seconds.append(time.perf_counter() - t0)
    result = {
        "completions": out.tolist(),
        "seconds": seconds,
        "forward_passes": passes,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
