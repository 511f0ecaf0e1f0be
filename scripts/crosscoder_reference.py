"""Independent PyTorch reference for NeuroDiff's Tier III.

  python scripts/crosscoder_reference.py generate OUT_DIR

Follows the anchors' code: science-of-finetuning/dictionary_learning `dictionary.py`
(`BatchTopKCrossCoder.encode`/`decode`, the "crosscoder" code normalisation sum_m ||d_j^m||) and
`trainers/crosscoder.py` (`BatchTopKCrossCoderTrainer`: the unsquared mean L2 loss, the auxiliary
top-k loss over dead latents, the threshold's running update, the geometric-median decoder bias,
global-norm clipping, Adam with linear warm-up); latent scaling as
science-of-finetuning/sparsity-artifacts-crosscoders `tools/latent_scaler/closed_form.py` and the
diffing toolkit's `latent_scaling/utils.py` fit it (see `latent_scaling` below). Where NeuroDiff
chooses otherwise on purpose (centring normalisation, the initial decoder norm, an SAE as the
crosscoder with M = 1: docs/crosscoder.md lists each with its reason), the reference implements
that choice, so its parity checks the arithmetic and the listed choices alone.

Writes three safetensors fixtures, float64 throughout (integer tensors int64, scalars as 0-d
tensors, configuration as string metadata), in plain PyTorch:

  OUT_DIR/train_cc.safetensors   4 steps of BatchTopK crosscoder training (M=2, d=8, F=32, B=64):
                                 data, normalisation, initial parameters, geometric median, the
                                 per-step loss terms, k, theta and dead counts, the clipped
                                 gradients of step 0 and the final parameters and state.
  OUT_DIR/train_sae.safetensors  the same for an SAE on differences (M=1; x = model 1 - model 0).
  OUT_DIR/scaling.safetensors    a fixed crosscoder dictionary and normalised data with the
                                 inference codes, reconstructions, latent-scaling betas (fitted
                                 one latent at a time from explicit targets, as the anchors'
                                 latent_scaling code does: see `latent_scaling` below), nu, the
                                 decoder-norm ratio delta, FVE, L0 and the dead fraction.

Gradients come from torch autograd; the optimiser is torch.optim.Adam with
torch.nn.utils.clip_grad_norm_ and a torch.optim.lr_scheduler.LambdaLR warm-up, so the reference
relies on PyTorch's own Adam, clipping and schedule rather than re-deriving them.
"""

import argparse
import math
import os

import torch
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)

D = 8
ENC_FIT_STEPS = 500
SCALING_TOKENS = 128  # 256 would put the three fixtures over 200 KB
F = 32
B = 64
STEPS = 4
CONFIG = {
    "k": 3,
    "k_max": 6,
    "k_anneal": 3,
    "lr": 0.01,
    "warmup": 2,
    "threshold_start": 1,
    "threshold_beta": 0.999,
    "dead_tokens": 100,
    "aux_alpha": 0.03125,
    "target_rms": 1.0,
    "steps": STEPS,
}
CONFIG_STRINGS = {
    "k": "3",
    "k_max": "6",
    "k_anneal": "3",
    "lr": "0.01",
    "warmup": "2",
    "threshold_start": "1",
    "threshold_beta": "0.999",
    "dead_tokens": "100",
    "aux_alpha": "0.03125",
    "target_rms": "1.0",
    "steps": "4",
}


# ---------------------------------------------------------------------------------------------
# Definitions (docs/crosscoder.md)
# ---------------------------------------------------------------------------------------------


def normalisation(x, target_rms):
    """x: (N, M, d) raw activations -> mean (M, d), scale (M)."""
    mean = x.mean(dim=0)
    var = x.var(dim=0, unbiased=False)  # population variance per coordinate
    scale = target_rms / torch.sqrt(var.sum(dim=-1) + 1e-8)
    return mean, scale


def normalise(x, mean, scale):
    return (x - mean) * scale[:, None]


def geometric_median(x, max_iter=100, tol=1e-5):
    """Weiszfeld per model. x: (B, M, d) -> (M, d)."""
    g = x.mean(dim=0)
    for _ in range(max_iter):
        prev = g
        dist = torch.linalg.vector_norm(x - g, dim=-1)  # (B, M)
        w = 1.0 / dist
        w = w / w.sum(dim=0, keepdim=True)  # normalised per model
        g = (w[:, :, None] * x).sum(dim=0)
        moved = torch.linalg.vector_norm(g - prev, dim=-1)  # (M,)
        if bool((moved < tol).all()):
            break
    return g


def encode_pre(x, W_enc, b_enc):
    """x: (B, M, d) -> pre (B, F) = sum_m x_m W_enc[m] + b_enc."""
    return torch.einsum("bmd,mdf->bf", x, W_enc) + b_enc


def code_norm(W_dec):
    """c_j = sum_m ||W_dec[m, j, :]||."""
    return torch.linalg.vector_norm(W_dec, dim=-1).sum(dim=0)


def decode(f, W_dec, b_dec):
    """f: (B, F) -> x_hat (B, M, d)."""
    return torch.einsum("bf,mfd->bmd", f, W_dec) + b_dec


def batch_topk(post, scaled, k):
    """Keep the k*B largest entries of scaled over the flattened batch; f = post there."""
    nb = post.shape[0]
    flat = scaled.reshape(-1)
    idx = torch.topk(flat.detach(), k * nb).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[idx] = True
    mask = mask.reshape(post.shape)
    return torch.where(mask, post, torch.zeros_like(post))


def k_at(t, cfg):
    k, k_max, k_anneal = cfg["k"], cfg["k_max"], cfg["k_anneal"]
    if t < k_anneal:
        return max(1, round(k_max - (k_max - k) * t / k_anneal))
    return k


def lr_lambda_factory(warmup):
    def lr_lambda(t):
        if warmup > 0 and t < warmup:
            return t / warmup
        return 1.0

    return lr_lambda


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train(x_raw, init, cfg):
    """x_raw: (steps, B, M, d). init: dict of initial tensors. Returns a dict of outputs."""
    steps, nb, M, d = x_raw.shape
    out = {}
    mean, scale = normalisation(x_raw.reshape(steps * nb, M, d), cfg["target_rms"])
    out["norm.mean"] = mean
    out["norm.scale"] = scale
    x_all = normalise(x_raw, mean, scale)  # (steps, B, M, d)

    W_enc = torch.nn.Parameter(init["W_enc"].clone())
    b_enc = torch.nn.Parameter(init["b_enc"].clone())
    W_dec = torch.nn.Parameter(init["W_dec"].clone())
    b_dec = torch.nn.Parameter(init["b_dec"].clone())
    params = [W_enc, b_enc, W_dec, b_dec]
    since = init["since"].clone()
    theta = float(init["theta"])

    opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda_factory(cfg["warmup"]))

    for t in range(steps):
        x = x_all[t]
        # 1. geometric median into b_dec at t = 0
        if t == 0:
            gm = geometric_median(x)
            out["geomedian"] = gm.clone()
            with torch.no_grad():
                b_dec.copy_(gm)
        # 2. k annealing
        k = k_at(t, cfg)
        # 3. encode with BatchTopK
        pre = encode_pre(x, W_enc, b_enc)
        post = torch.relu(pre)
        c = code_norm(W_dec)
        scaled = post * c
        f = batch_topk(post, scaled, k)
        fired = f.detach().sum(dim=0) > 0
        # 4. threshold
        if t > cfg["threshold_start"]:
            fc = (f.detach() * c.detach()).reshape(-1)
            pos = fc[fc > 0]
            m = float(pos.min()) if pos.numel() > 0 else 0.0
            if theta < 0:
                theta = m
            else:
                b = cfg["threshold_beta"]
                theta = b * theta + (1 - b) * m
        # 5. error
        x_hat = decode(f, W_dec, b_dec)
        e = x - x_hat
        # 6. dead counters (before the aux loss)
        since = since + nb
        since[fired] = 0
        dead = since >= cfg["dead_tokens"]
        n_dead = int(dead.sum())
        # 7. loss
        l2 = torch.linalg.vector_norm(e, dim=-1).mean()
        if n_dead > 0:
            k_aux = min(d // 2, n_dead)
            masked = torch.where(
                dead[None, :], scaled.detach(), torch.full_like(scaled, -math.inf)
            )
            # per row: the k_aux dead latents with the largest (detached) scaled scores
            idx = torch.topk(masked, k_aux, dim=1).indices  # (B, k_aux)
            sel = torch.zeros_like(post, dtype=torch.bool)
            sel.scatter_(1, idx, True)
            f_aux = torch.where(sel, post, torch.zeros_like(post))  # values keep their gradient
            r = e.detach().reshape(nb, M * d)
            x_aux = torch.einsum("bf,mfd->bmd", f_aux, W_dec).reshape(nb, M * d)
            num = (torch.linalg.vector_norm(r - x_aux, dim=-1) ** 2).mean()
            den = (torch.linalg.vector_norm(r - r.mean(dim=0), dim=-1) ** 2).mean()
            aux = num / den
            if torch.isnan(aux):
                aux = torch.zeros((), dtype=torch.float64)
        else:
            aux = torch.zeros((), dtype=torch.float64)
        loss = l2 + cfg["aux_alpha"] * aux
        out[f"step{t}.loss"] = loss.detach().clone()
        out[f"step{t}.l2"] = l2.detach().clone()
        out[f"step{t}.aux"] = aux.detach().clone()
        out[f"step{t}.k"] = torch.tensor(k, dtype=torch.int64)
        out[f"step{t}.n_dead"] = torch.tensor(n_dead, dtype=torch.int64)
        # 8. backward, clip, Adam, schedule
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if t == 0:
            for name, p in zip(["W_enc", "b_enc", "W_dec", "b_dec"], params):
                out[f"grad0.{name}"] = p.grad.detach().clone()
        opt.step()
        sched.step()
        out[f"step{t}.theta"] = torch.tensor(theta, dtype=torch.float64)

    out["final.W_enc"] = W_enc.detach().clone()
    out["final.b_enc"] = b_enc.detach().clone()
    out["final.W_dec"] = W_dec.detach().clone()
    out["final.b_dec"] = b_dec.detach().clone()
    out["final.since"] = since.clone()
    out["final.theta"] = torch.tensor(theta, dtype=torch.float64)
    return out


# ---------------------------------------------------------------------------------------------
# Data and initialisation
# ---------------------------------------------------------------------------------------------


def unit_rows(a):
    return a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)


def make_cc_data(gen):
    """Raw activations (steps, B, 2, d): sparse nonnegative features, 8 shared, 4 ft-only."""
    n_shared, n_ft = 8, 4
    n = STEPS * B
    shared0 = unit_rows(torch.randn(n_shared, D, generator=gen))
    # the fine-tune's copies of the shared directions are rotated a little
    shared1 = unit_rows(shared0 + 0.3 * torch.randn(n_shared, D, generator=gen))
    ft_only = unit_rows(torch.randn(n_ft, D, generator=gen))
    p = 0.2
    on_s = torch.rand(n, n_shared, generator=gen) < p
    on_f = torch.rand(n, n_ft, generator=gen) < p
    a_s = on_s * (0.5 + torch.rand(n, n_shared, generator=gen)) * 2.0
    a_f = on_f * (0.5 + torch.rand(n, n_ft, generator=gen)) * 2.0
    off0 = 0.7 * torch.randn(D, generator=gen)
    off1 = off0 + 0.3 * torch.randn(D, generator=gen)
    x0 = a_s @ shared0 + off0 + 0.05 * torch.randn(n, D, generator=gen)
    x1 = a_s @ shared1 + a_f @ ft_only + off1 + 0.05 * torch.randn(n, D, generator=gen)
    return torch.stack([x0, x1], dim=1).reshape(STEPS, B, 2, D)


def make_init(gen, M):
    bound = 1.0 / math.sqrt(D)
    W_enc = (torch.rand(M, D, F, generator=gen) * 2 - 1) * bound  # kaiming-uniform-like
    W_dec = W_enc.transpose(1, 2).contiguous()
    W_dec = 0.5 * unit_rows(W_dec)  # decoder rows of norm 0.5
    W_enc = W_dec.transpose(1, 2).contiguous()
    b_enc = 0.1 * torch.randn(F, generator=gen)
    b_dec = torch.zeros(M, D)
    since = torch.zeros(F, dtype=torch.int64)
    dead0 = torch.randperm(F, generator=gen)[: F // 3]
    since[dead0] = 1000
    # the latents that start dead get a lower bias so that some stay dead and the aux loss runs
    b_enc[dead0] -= 0.5
    return {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": W_dec,
        "b_dec": b_dec,
        "since": since,
        "theta": torch.tensor(-1.0),
    }


# ---------------------------------------------------------------------------------------------
# Latent scaling
# ---------------------------------------------------------------------------------------------


def latent_scaling(x, f, x_hat, W_dec, ft=1):
    """Latent scaling as the anchors compute it, one latent at a time. Returns beta_r, beta_eps (M, F).

    Follows science-of-finetuning/sparsity-artifacts-crosscoders `tools/latent_scaler/closed_form.py`
    (`closed_form_scalars`: beta_j = sum_t f_j(t) <d_j, y_t> / (||d_j||^2 sum_t f_j(t)^2), with d_j
    the fine-tune's ("chat") decoder row for every target) and the targets of
    science-of-finetuning/diffing-toolkit `src/diffing/utils/dictionary/latent_scaling/utils.py`:
      load_{base,ft}_reconstruction: the full reconstruction x_hat[:, m], latent j's own part
                                     and the decoder bias included (unchanged);
      load_{base,ft}_error:          x[:, m] - (x_hat[:, m] - f_j W_dec[m, j]), latent j's part
                                     (with model m's own decoder row) put back into the error.
    nu = beta_base / beta_ft (`add_possible_cols` in diffing-toolkit latent_scaling/beta_analysis.py).
    """
    M = W_dec.shape[0]
    nf = f.shape[1]
    beta_r = torch.full((M, nf), math.nan)
    beta_eps = torch.full((M, nf), math.nan)
    for j in range(nf):
        fj = f[:, j]  # (N,)
        denom_f = (fj**2).sum()
        if float(denom_f) == 0.0:
            continue
        d_j = W_dec[ft, j]
        for m in range(M):
            y_r = x_hat[:, m]
            y_eps = x[:, m] - (x_hat[:, m] - fj[:, None] * W_dec[m, j][None, :])
            dd = (d_j @ d_j) * denom_f
            beta_r[m, j] = (d_j @ (fj[:, None] * y_r).sum(dim=0)) / dd
            beta_eps[m, j] = (d_j @ (fj[:, None] * y_eps).sum(dim=0)) / dd
    return beta_r, beta_eps


def decoder_norm_ratio(W_dec):
    nb = torch.linalg.vector_norm(W_dec[0], dim=-1)
    nft = torch.linalg.vector_norm(W_dec[1], dim=-1)
    return ((nb - nft) / torch.maximum(nb, nft) + 1) / 2


def make_scaling(gen):
    N = SCALING_TOKENS
    n_ft_only = 6  # latents 0..5 are fine-tune-only
    n_presence = 3  # latents 0..2 also appear in the base model's data
    u = unit_rows(torch.randn(F, D, generator=gen))  # fine-tune decoder directions
    v = unit_rows(u + 0.2 * torch.randn(F, D, generator=gen))  # base decoder directions
    on = torch.rand(N, F, generator=gen) < 0.08
    a = on * (0.5 + torch.rand(N, F, generator=gen))
    gamma = torch.zeros(F)
    gamma[:n_presence] = torch.tensor([0.9, 0.6, 0.3])
    base_coef = torch.ones(F)
    base_coef[:n_ft_only] = 0.0
    x_base = (a * base_coef) @ v + (a * gamma) @ u + 0.05 * torch.randn(N, D, generator=gen)
    x_ft = a @ u + 0.05 * torch.randn(N, D, generator=gen)
    x_raw = torch.stack([x_base, x_ft], dim=1) + 0.5 * torch.randn(2, D, generator=gen)
    mean, scale = normalisation(x_raw, 1.0)
    x = normalise(x_raw, mean, scale)

    W_dec = torch.stack([v * scale[0], u * scale[1]], dim=0).clone()  # (2, F, d)
    W_dec[0, :n_ft_only] *= 0.02
    # best bias given the true codes
    b_dec = (x - torch.einsum("nf,mfd->nmd", a, W_dec)).mean(dim=0)
    # encoder: start from the decoder's directions, then fit ReLU(pre) to the true codes
    sq = (W_dec**2).sum(dim=(0, 2))  # (F,)
    W_enc = (W_dec / sq[None, :, None]).transpose(1, 2).contiguous()  # (2, d, F)
    b_enc = -0.05 * torch.rand(F, generator=gen) - torch.einsum("md,mdf->f", b_dec, W_enc)
    W_enc = W_enc.clone().requires_grad_(True)
    b_enc = b_enc.clone().requires_grad_(True)
    fit = torch.optim.Adam([W_enc, b_enc], lr=0.01)
    for _ in range(ENC_FIT_STEPS):
        fit.zero_grad()
        err = torch.relu(encode_pre(x, W_enc, b_enc)) - a
        (err**2).sum(dim=1).mean().backward()
        fit.step()
    W_enc = W_enc.detach()
    b_enc = b_enc.detach()
    b_enc[F - 1] = -10.0  # one latent never fires: its betas and nus are NaN
    c = code_norm(W_dec)
    post = torch.relu(encode_pre(x, W_enc, b_enc))
    scaled = post * c
    theta = float(torch.quantile(scaled.reshape(-1), 0.88))

    f = post * (scaled > theta)
    x_hat = decode(f, W_dec, b_dec)
    beta_r, beta_eps = latent_scaling(x, f, x_hat, W_dec, ft=1)
    nu_r = beta_r[0] / beta_r[1]
    nu_eps = beta_eps[0] / beta_eps[1]
    delta = decoder_norm_ratio(W_dec)
    err = ((x - x_hat) ** 2).sum(dim=(0, 2))
    tot = ((x - x.mean(dim=0)) ** 2).sum(dim=(0, 2))
    fve = 1 - err / tot
    l0 = (f != 0).sum(dim=1).to(torch.float64).mean()
    dead_fraction = ((f != 0).sum(dim=0) == 0).to(torch.float64).mean()
    tensors = {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": W_dec,
        "b_dec": b_dec,
        "theta": torch.tensor(theta),
        "x": x,
        "f": f,
        "x_hat": x_hat,
        "beta_r": beta_r,
        "beta_eps": beta_eps,
        "nu_r": nu_r,
        "nu_eps": nu_eps,
        "delta": delta,
        "fve": fve,
        "l0": l0,
        "dead_fraction": dead_fraction,
    }
    meta = {
        "ft_only_latents": ",".join(str(j) for j in range(n_ft_only)),
        "base_presence_latents": ",".join(str(j) for j in range(n_presence)),
        "never_firing_latents": str(F - 1),
    }
    return tensors, meta


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def save(path, tensors, meta):
    clean = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if t.is_floating_point():
            t = t.to(torch.float64)
        else:
            t = t.to(torch.int64)
        clean[name] = t
    save_file(clean, path, metadata=meta)


def run_training(x_raw, init):
    out = train(x_raw, init, CONFIG)
    tensors = {"x": x_raw}
    tensors.update({f"init.{k}": v for k, v in init.items()})
    tensors.update(out)
    return tensors


def generate(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    x_cc = make_cc_data(gen)
    init_cc = make_init(gen, 2)
    cc = run_training(x_cc, init_cc)
    save(os.path.join(out_dir, "train_cc.safetensors"), cc, dict(CONFIG_STRINGS))

    x_sae = (x_cc[:, :, 1] - x_cc[:, :, 0])[:, :, None, :].contiguous()
    init_sae = make_init(gen, 1)
    sae = run_training(x_sae, init_sae)
    save(os.path.join(out_dir, "train_sae.safetensors"), sae, dict(CONFIG_STRINGS))

    sc, meta = make_scaling(gen)
    save(os.path.join(out_dir, "scaling.safetensors"), sc, meta)

    for name, res in [("crosscoder", cc), ("sae", sae)]:
        print(f"{name}:")
        for t in range(STEPS):
            print(
                f"  step {t}: k={int(res[f'step{t}.k'])} loss={float(res[f'step{t}.loss']):.6f}"
                f" l2={float(res[f'step{t}.l2']):.6f} aux={float(res[f'step{t}.aux']):.6f}"
                f" n_dead={int(res[f'step{t}.n_dead'])} theta={float(res[f'step{t}.theta']):.6f}"
            )
        print(f"  final dead (since >= {CONFIG['dead_tokens']}):"
              f" {int((res['final.since'] >= CONFIG['dead_tokens']).sum())}")
    print("scaling:")
    print(f"  theta={float(sc['theta']):.6f} l0={float(sc['l0']):.4f}"
          f" dead_fraction={float(sc['dead_fraction']):.4f} fve={sc['fve'].tolist()}")
    ft_only = (sc["delta"] < 0.1).nonzero().flatten().tolist()
    print(f"  ft-only latents (delta < 0.1): {ft_only}")
    for j in ft_only:
        print(f"    latent {j}: delta={float(sc['delta'][j]):.4f}"
              f" nu_eps={float(sc['nu_eps'][j]):.4f} nu_r={float(sc['nu_r'][j]):.4f}")
    print(f"  NaN beta latents: {torch.isnan(sc['beta_r'][0]).nonzero().flatten().tolist()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the three fixtures into OUT_DIR")
    g.add_argument("out_dir")
    args = parser.parse_args()
    if args.cmd == "generate":
        generate(args.out_dir)


if __name__ == "__main__":
    main()
