#!/usr/bin/env python3
"""The PyTorch peer of `ddpm bench`: the same U-Net (Ho et al. 2020, as `ddpm`'s presets), the
same step (forward, L_simple MSE, backward, AdamW with eps 1e-8) or one forward pass, timed the
same way (median over --steps after --warmup). Prints one JSON line like `ddpm bench --json`.

    python3 bench/torch_peer.py --preset mnist --batch-size 64 --mode train --threads 2
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # in_ch, size, ch, mult, res blocks, attention resolutions, groups, dropout, params
    "mnist": (1, 28, 32, (1, 2, 2), 2, (7,), 8, 0.0, 1_623_169),
    "cifar10": (3, 32, 128, (1, 2, 2, 2), 2, (16,), 32, 0.1, 35_746_307),
    "tiny": (1, 8, 8, (1, 2), 1, (4,), 4, 0.0, None),
}


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attn(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=2)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=2)
        return x + self.proj(a @ v).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, in_ch, size, ch, mult, nres, attn, groups, dropout):
        super().__init__()
        emb = 4 * ch
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, skips, cur, res = nn.ModuleList(), [ch], ch, size
        for i, m in enumerate(mult):
            for _ in range(nres):
                self.down.append(nn.ModuleList([ResBlock(cur, ch * m, emb, groups, dropout),
                                                Attn(ch * m, groups) if res in attn else nn.Identity()]))
                cur = ch * m
                skips.append(cur)
            if i + 1 < len(mult):
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb, groups, dropout), Attn(cur, groups),
                                  ResBlock(cur, cur, emb, groups, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(nres + 1):
                self.up.append(nn.ModuleList([ResBlock(cur + skips.pop(), ch * m, emb, groups, dropout),
                                              Attn(ch * m, groups) if res in attn else nn.Identity()]))
                cur = ch * m
            if i > 0:
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
                res *= 2
        self.norm_out = nn.GroupNorm(groups, cur)
        self.conv_out = nn.Conv2d(cur, in_ch, 3, padding=1)

    def forward(self, x, t):
        e = self.temb(timestep_embedding(t, self.ch))
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            if isinstance(m, nn.Conv2d):
                h = m(h)
            else:
                h = m[1](m[0](h, e))
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, e)), e)
        for m in self.up:
            if isinstance(m, nn.Conv2d):
                h = m(F.interpolate(h, scale_factor=2, mode="nearest"))
            else:
                h = m[1](m[0](torch.cat([h, hs.pop()], 1), e))
        return self.conv_out(F.silu(self.norm_out(h)))


def profile_step(step, dev, path):
    """One step under torch.profiler: the per-operation table (device time first on a GPU) and
    the number of device events (kernels, copies and fills), into `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    sort = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    kernels = sum(e.count for e in prof.events() if str(e.device_type).endswith("CUDA"))
    with open(path, "w") as f:
        f.write(f"one step: {kernels} device events (kernels, copies, fills)\n")
        f.write(events.table(sort_by=sort, row_limit=40))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mnist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mode", default="train", choices=["train", "sample"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--profile", metavar="FILE",
                   help="after the timed steps, profile one more step per operation into FILE")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    in_ch, size, ch, mult, nres, attn, groups, dropout, params = PRESETS[a.preset]
    dev = torch.device("cuda" if a.device == "cuda" else "cpu")
    model = UNet(in_ch, size, ch, mult, nres, attn, groups, dropout).to(dev)
    n = sum(p.numel() for p in model.parameters())
    if params is not None:
        assert n == params, f"{a.preset}: {n} parameters, expected {params}"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.0)
    shape = (a.batch_size, in_ch, size, size)

    def step():
        x = torch.randn(shape, device=dev)
        t = torch.randint(0, 1000, (a.batch_size,), device=dev)
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            if a.mode == "train":
                loss = F.mse_loss(model(x, t), torch.randn(shape, device=dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                with torch.no_grad():
                    model(x, t)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = []
    for i in range(a.warmup + a.steps):
        secs = step()
        if i >= a.warmup:
            times.append(secs)
    if a.profile:
        profile_step(step, dev, a.profile)
    ms = statistics.median(times) * 1000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"preset": a.preset, "mode": a.mode, "batch_size": a.batch_size, "ms_per_step": ms,
                      "img_per_s": a.batch_size / (ms / 1000), "peak_rss_mb": rss, "peer": "pytorch " + torch.__version__}))


if __name__ == "__main__":
    main()
