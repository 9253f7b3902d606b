"""The Opacus side of dp_overhead.py: the same cvae architectures in PyTorch, one DP-SGD step each with Opacus.

Run by dp_overhead.py with the interpreter of benchmarks/.venv-opacus (torch + opacus; never the project's venv).
Prints one JSON object on stdout: versions, and per model the median milliseconds of
- a non-private step (loss.backward + Adam) of the same torch model, for context;
- an Opacus DP-SGD step, grad_sample_mode="hooks" (Opacus's default: per-sample gradients via GradSampleModule
  hooks; layers without a hook, here ConvTranspose2d, fall back to functorch);
- an Opacus DP-SGD step, grad_sample_mode="ghost" (Opacus's ghost clipping: two backward passes), when the
  installed Opacus offers it.
A mode that fails is reported with its error instead of a time. No project code is imported here.

Each model mirrors libsgde/ml/architectures/cvae.py layer for layer (same widths, same loss per example:
reconstruction + beta * KL with the reparameterisation; Gaussian with fixed sigma on sigmoid means for tabular
columns, Bernoulli / BCE-with-logits on pixels). Every DP step is on a fixed batch of 256 (Poisson sampling off),
noise multiplier 1.0, max_grad_norm 1.0, loss_reduction "mean", Adam lr 1e-3, as SGDE's step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 256


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of these widths (widths[0] is the input) with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kl_standard_normal(mu, logvar):
    return 0.5 * torch.sum(torch.exp(logvar) + mu**2 - 1.0 - logvar, 1)


class TabularCVAE(nn.Module):
    """libsgde TabularCVAE with numeric columns only: Gaussian(sigmoid(h), numeric_sigma) per column."""

    def __init__(self, dim, classes, hidden, latent, beta, numeric_sigma):
        super().__init__()
        self.classes, self.latent, self.beta, self.sigma = classes, latent, beta, numeric_sigma
        self.encoder = mlp([dim + classes, *hidden, 2 * latent])
        self.decoder = mlp([latent + classes, *hidden[::-1], dim])

    def forward(self, x, labels):  # -> (decoder output, mu, logvar)
        y = F.one_hot(labels, self.classes).to(x.dtype)
        mu, logvar = torch.chunk(self.encoder(torch.cat([x, y], 1)), 2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(torch.cat([z, y], 1)), mu, logvar

    def example_losses(self, out, x):
        h, mu, logvar = out
        recon = torch.sum((torch.sigmoid(h) - x) ** 2, 1) / (2 * self.sigma**2)
        return recon + self.beta * kl_standard_normal(mu, logvar)


class ImageMLPCVAE(nn.Module):
    """libsgde ImageCVAE, network "mlp": flattened pixels + one-hot in, Bernoulli logits out."""

    def __init__(self, shape, classes, hidden, latent, beta):
        super().__init__()
        self.shape, self.classes, self.beta = shape, classes, beta
        size = math.prod(shape)
        self.encoder = mlp([size + classes, *hidden, 2 * latent])
        self.decoder = mlp([latent + classes, *hidden[::-1], size])

    def forward(self, x, labels):
        y = F.one_hot(labels, self.classes).to(x.dtype)
        mu, logvar = torch.chunk(self.encoder(torch.cat([x.flatten(1), y], 1)), 2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(torch.cat([z, y], 1)), mu, logvar

    def example_losses(self, out, x):
        logits, mu, logvar = out
        bce = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
        return bce + self.beta * kl_standard_normal(mu, logvar)


class ImageConvCVAE(nn.Module):
    """libsgde ImageCVAE, network "conv" (NCHW here, NHWC in flax; same shapes otherwise): the encoder's 3x3
    stride-2 convolutions see the label as extra constant channels; the decoder is Dense -> [C_last, H/4, W/4] ->
    3x3 stride-2 transposed convolutions -> a 3x3 convolution to logits, cropped to the image."""

    def __init__(self, shape, classes, channels, latent, beta):
        super().__init__()
        height, width, c_in = shape
        self.shape, self.classes, self.beta = shape, classes, beta
        enc, prev = [], c_in + classes
        for c in channels:
            enc += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.ReLU()]  # flax "SAME": 28 -> 14 -> 7
            prev = c
        scale = 2 ** len(channels)
        self.h0, self.w0 = math.ceil(height / scale), math.ceil(width / scale)
        self.enc_conv = nn.Sequential(*enc)
        self.enc_out = nn.Linear(prev * self.h0 * self.w0, 2 * latent)
        self.dec_in = nn.Linear(latent + classes, self.h0 * self.w0 * channels[-1])
        dec, prev = [], channels[-1]
        for c in channels[::-1]:  # flax ConvTranspose "SAME", stride 2: doubles the size
            dec += [nn.ConvTranspose2d(prev, c, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]
            prev = c
        self.dec_conv = nn.Sequential(*dec, nn.Conv2d(prev, c_in, 3, padding=1))
        self.c_last = channels[-1]

    def forward(self, x, labels):
        n, (height, width, _) = x.shape[0], self.shape
        y = F.one_hot(labels, self.classes).to(x.dtype)
        planes = y[:, :, None, None].expand(n, self.classes, height, width)
        h = self.enc_conv(torch.cat([x, planes], 1))
        mu, logvar = torch.chunk(self.enc_out(h.flatten(1)), 2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        h = F.relu(self.dec_in(torch.cat([z, y], 1))).view(n, self.c_last, self.h0, self.w0)
        return self.dec_conv(h)[:, :, :height, :width], mu, logvar

    def example_losses(self, out, x):
        logits, mu, logvar = out
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        return bce + self.beta * kl_standard_normal(mu, logvar)


class ExampleLoss(nn.Module):
    """A criterion for Opacus's ghost mode: per-example losses when reduction is "none" (as the ghost wrapper sets
    it), else their mean or sum."""

    def __init__(self, model, reduction="mean"):
        super().__init__()
        self.model_ref = [model]  # not a submodule: Opacus must not see its parameters twice
        self.reduction = reduction

    def forward(self, out, x):
        losses = self.model_ref[0].example_losses(out, x)
        if self.reduction == "none":
            return losses
        return losses.mean() if self.reduction == "mean" else losses.sum()


def build(name: str):
    """(model, x [256, ...], labels [256]) for one benchmark row; the config is libsgde's cvae default."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (BATCH,), generator=g)
    if name == "tabular":
        return TabularCVAE(64, 10, [256, 256], 16, 1.0, 0.1), torch.rand(BATCH, 64, generator=g), labels
    if name == "image-mlp":
        return ImageMLPCVAE((28, 28, 1), 10, [256, 256], 16, 1.0), torch.rand(BATCH, 1, 28, 28, generator=g), labels
    if name == "image-conv":
        return ImageConvCVAE((28, 28, 1), 10, [32, 64], 16, 1.0), torch.rand(BATCH, 1, 28, 28, generator=g), labels
    raise SystemExit(f"unknown model {name!r}")


def measure(step, repeats: int, max_seconds: float, warmup: int) -> dict:
    """Median ms of `step()` over up to `repeats` runs (at least 3) after `warmup` unmeasured ones, stopping early
    once `max_seconds` of measuring is spent."""
    for _ in range(warmup):
        step()
    times, started = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < max_seconds):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "runs": len(times), "all_ms": [round(t, 3) for t in times]}


def nonprivate(name, repeats, max_seconds, warmup):
    model, x, labels = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model.example_losses(model(x, labels), x).mean().backward()
        opt.step()

    return measure(step, repeats, max_seconds, warmup)


def private(name, mode, repeats, max_seconds, warmup):
    from opacus import PrivacyEngine

    model, x, labels = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=BATCH)
    engine = PrivacyEngine()
    kwargs = dict(  # noqa: C408 - Opacus's keyword names, as its documentation writes them
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
        grad_sample_mode=mode,
        loss_reduction="mean",
    )
    if mode == "ghost":
        dp_model, dp_opt, criterion, _ = engine.make_private(criterion=ExampleLoss(model), **kwargs)

        def step():  # the batch is fixed: the data loader would only add its collation time
            dp_opt.zero_grad(set_to_none=True)
            criterion(dp_model(x, labels), x).backward()  # Opacus's two backward passes
            dp_opt.step()
    else:
        dp_model, dp_opt, _ = engine.make_private(**kwargs)

        def step():
            dp_opt.zero_grad(set_to_none=True)
            model.example_losses(dp_model(x, labels), x).mean().backward()
            dp_opt.step()  # clip the per-sample gradients, sum, add noise, Adam

    return measure(step, repeats, max_seconds, warmup)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tabular,image-mlp,image-conv")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import opacus

    out = {
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "models": {},
    }
    for name in args.models.split(","):
        row = {"params": sum(p.numel() for p in build(name)[0].parameters())}
        for key, fn in (
            ("nonprivate", lambda: nonprivate(name, args.repeats, args.max_seconds, args.warmup)),
            ("hooks", lambda: private(name, "hooks", args.repeats, args.max_seconds, args.warmup)),
            ("ghost", lambda: private(name, "ghost", args.repeats, args.max_seconds, args.warmup)),
        ):
            try:
                row[key] = fn()
            except Exception as e:  # noqa: BLE001 - reported, never replaced by a number
                row[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
            print(
                f"  opacus side: {name} {key}: "
                + (f"{row[key]['ms']:.2f} ms" if "ms" in row[key] else row[key]["error"]),
                file=sys.stderr,
            )
        out["models"][name] = row
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
