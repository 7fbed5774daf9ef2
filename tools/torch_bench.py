#!/usr/bin/env python3
"""PyTorch twin of `coupled-grpo bench train-step` and `bench rollout`: the same Dream-shaped
bidirectional model on random tokens.

train-step: log-softmax cross-entropy over every position, backward and AdamW (0.9, 0.99, weight
decay 0.1), parameters in the chosen dtype.
rollout: forward-only passes over left-padded rows (odd rows carry seq/8 pads), the LM head over
the last `--cand` positions of each row, f32 softmax confidence and argmax, as one denoising step.
Prints the same lines as the Rust command.

    python3 tools/torch_bench.py --preset qwen2.5-0.5b --batch 4 --seq 512 --dtype bf16 --device cuda
    python3 tools/torch_bench.py --mode rollout --preset qwen2.5-0.5b --batch 8 --seq 512 --cand 128 --dtype bf16
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # must match ModelConfig::preset in src/model/config.rs
    "tiny": dict(vocab=512, d=64, ffn=176, layers=2, heads=4, kv=2, tied=False, theta=1e4),
    "small": dict(vocab=2048, d=256, ffn=688, layers=4, heads=8, kv=2, tied=False, theta=1e4),
    "qwen2.5-0.5b": dict(vocab=151936, d=896, ffn=4864, layers=24, heads=14, kv=2, tied=True, theta=1e6),
    "diffucoder-7b": dict(vocab=152064, d=3584, ffn=18944, layers=28, heads=28, kv=4, tied=False, theta=1e6),
}


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, kv = c["d"], c["heads"], c["kv"]
        self.h, self.kv, self.hd = h, kv, d // h
        self.input_layernorm = RMSNorm(d)
        self.q_proj = nn.Linear(d, h * self.hd, bias=True)
        self.k_proj = nn.Linear(d, kv * self.hd, bias=True)
        self.v_proj = nn.Linear(d, kv * self.hd, bias=True)
        self.o_proj = nn.Linear(h * self.hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = nn.Linear(d, c["ffn"], bias=False)
        self.up_proj = nn.Linear(d, c["ffn"], bias=False)
        self.down_proj = nn.Linear(c["ffn"], d, bias=False)

    def forward(self, x, cos, sin, mask=None):
        b, s, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, s, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(y).view(b, s, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, s, -1))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["d"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["d"])
        self.lm_head = None if c["tied"] else nn.Linear(c["d"], c["vocab"], bias=False)

    def hidden(self, ids, pad_mask=None):
        """pad_mask [b, s] with 1 = token, 0 = left pad (as DiffusionLm::forward_hidden)."""
        b, s = ids.shape
        hd = self.c["d"] // self.c["heads"]
        inv = 1.0 / (self.c["theta"] ** (torch.arange(0, hd, 2, device=ids.device).float() / hd))
        if pad_mask is None:
            pos = torch.arange(s, device=ids.device).float()[None].expand(b, s)
            attn = None
        else:
            pos = (pad_mask.cumsum(1) - 1).masked_fill(pad_mask == 0, 1).float()
            valid = pad_mask.bool()
            eye = torch.eye(s, dtype=torch.bool, device=ids.device)
            attn = ((valid[:, :, None] & valid[:, None, :]) | eye)[:, None]
        freqs = pos[..., None] * inv  # [b, s, hd/2]
        emb = torch.cat((freqs, freqs), -1)
        x = self.embed_tokens(ids)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        return self.norm(x)

    def head(self, x):
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return x @ w.t()

    def forward(self, ids):
        return self.head(self.hidden(ids))


def flops(c, batch, seq):
    d, f, v, hd = c["d"], c["ffn"], c["vocab"], c["d"] // c["heads"]
    kv = c["kv"] * hd
    per_token = c["layers"] * (2 * (2 * d * d + 2 * d * kv) + 4 * seq * d + 6 * d * f) + 2 * d * v
    return 3.0 * batch * seq * per_token


def forward_flops(c, batch, seq):
    return flops(c, batch, seq) / 3.0


def profiled(a, dev, sync, label, fn):
    """Runs fn once under torch.profiler and prints its top kernels (ops on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        out = fn()
        sync()
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(f"== torch profile, {label}: top {a.profile} by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=a.profile, max_name_column_width=90))
    return out


def rollout(a, c, model, dev, sync):
    rows, seq, cand = a.batch, a.seq, max(1, min(a.cand, a.seq))
    ids = torch.randint(0, c["vocab"], (rows, seq), device=dev)
    pad = seq // 8
    mask = torch.ones(rows, seq, dtype=torch.long, device=dev)
    mask[1::2, :pad] = 0
    def one_pass():
        """Confidence and token of each candidate position, as one denoising step."""
        h = model.hidden(ids, mask)[:, seq - cand:]
        logits = model.head(h).float().reshape(rows * cand, -1)
        return torch.softmax(logits, -1).max(-1).values, logits.argmax(-1)

    times, first = [], 0.0
    with torch.no_grad():
        for step in range(a.steps + 1):
            t0 = time.perf_counter()
            conf, tok = one_pass()
            sync()
            dt = time.perf_counter() - t0
            del conf, tok
            if step == 0:
                first = dt
            else:
                times.append(dt)
        if a.profile:
            profiled(a, dev, sync, "one rollout pass", one_pass)
    t = sorted(times)[len(times) // 2]
    head = 2.0 * c["d"] * c["vocab"]
    fl = forward_flops(c, rows, seq) - rows * seq * head + rows * cand * head
    print(f"rollout pass: rows {rows} x seq {seq}, {cand} candidate positions per row")
    print(f"first pass (warm-up, incl. compilation): {first:.2f} s")
    print(f"pass: {t*1e3:.2f} ms, forward passes/s: {1/t:.1f}")
    print(f"tokens/s: {rows*seq/t:.0f}")
    print(f"TFLOP/s: {fl/t/1e12:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="train-step", choices=["train-step", "rollout"])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--cand", type=int, default=128, help="rollout: candidate positions per row")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="after the timed steps, profile one more and print its top K kernels per phase")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    c = PRESETS[a.preset]
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = Model(c).to(dev, dtype)
    n = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {a.mode} bench: {a.preset} ({n} params), batch {a.batch} x seq {a.seq}, {a.dtype}, device {a.device} = {name} (torch {torch.__version__})")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if a.mode == "rollout":
        rollout(a, c, model, dev, sync)
        if dev.type == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated()/2**30:.2f} GiB allocated, {torch.cuda.max_memory_reserved()/2**30:.2f} GiB reserved")
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    ids = torch.randint(0, c["vocab"], (a.batch, a.seq), device=dev)

    def forward():
        """Cross-entropy of the model's own tokens over every position."""
        logits = model(ids).float()
        return -torch.log_softmax(logits, -1).gather(-1, ids[..., None]).mean()

    fwd, bwd, step_opt, first = [], [], [], 0.0
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        loss = forward()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if step == 0:
            first = t3 - t0
        else:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            step_opt.append(t3 - t2)
    if a.profile:
        loss = profiled(a, dev, sync, "train step forward + loss", forward)
        profiled(a, dev, sync, "train step backward", loss.backward)
        profiled(a, dev, sync, "train step AdamW", opt.step)
        opt.zero_grad(set_to_none=True)
    med = lambda v: sorted(v)[len(v) // 2]
    f, b, o = med(fwd), med(bwd), med(step_opt)
    s = f + b + o
    print(f"first step (warm-up, incl. compilation): {first:.2f} s")
    print(f"step: {s*1e3:.1f} ms (fwd {f*1e3:.1f} + bwd {b*1e3:.1f} + AdamW {o*1e3:.1f})")
    print(f"tokens/s: {a.batch*a.seq/s:.0f}")
    print(f"TFLOP/s: {flops(c, a.batch, a.seq)/s/1e12:.2f}")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated()/2**30:.2f} GiB allocated, {torch.cuda.max_memory_reserved()/2**30:.2f} GiB reserved")


if __name__ == "__main__":
    main()
