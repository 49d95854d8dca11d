"""What the penultimate layer does with a trigger: Cheng et al.'s l_inf activation bias and a vine-copula entropy.

Both compare the representation the model's last dense layer reads (its input, h) on clean inputs with the same
inputs stamped with a reversed trigger. If the trigger is a real backdoor, stamping pushes h onto the few units
that carry the backdoor feature:

* activation bias (Cheng et al., "Defending against Backdoor Attack on Deep Neural Networks"): per input,
  b(x) = ||h||_inf / ||h||_2, in [1/sqrt(d), 1]; the statistic is log(mean b on stamped / mean b on clean).
* latent entropy (the seed's D-vine copula fingerprint): h is reduced to a few principal components (fitted on the
  clean inputs), a vine copula (pyvinecopulib) with kernel-density margins is fitted to each set, and the
  statistic is the entropy difference H(stamped) - H(clean), entropy estimated as minus the mean log-density.
"""

import numpy as np
import torch
from torch import Tensor, nn

#: Bivariate families of the vine: one-parameter ones and independence, which keep a fit of a few hundred points
#: in 8 dimensions near a second on one core (all parametric families took about 9 s).
_VINE_FAMILIES = ("indep", "gaussian", "clayton", "gumbel", "frank")


def last_dense(model: nn.Module) -> nn.Linear:
    """The model's last dense layer in its graph order (its input is the penultimate representation)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise LookupError("the model has no dense layer, so there is no penultimate representation to read")
    return layers[-1]


@torch.no_grad()
def penultimate(model: nn.Module, forward, x: Tensor, batch_size: int = 256) -> Tensor:
    """The input of ``last_dense(model)`` for each row of ``x`` (``forward`` runs the model on a batch)."""
    captured: list[Tensor] = []
    handle = last_dense(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].flatten(1)))
    try:
        for start in range(0, len(x), batch_size):
            forward(x[start:start + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured).double().cpu()


def activation_bias(h: Tensor) -> Tensor:
    """||h||_inf / ||h||_2 per row; 0 for an all-zero row."""
    return h.abs().amax(1) / (h.norm(dim=1) + 1e-12)


def bias_shift(clean: Tensor, stamped: Tensor) -> float:
    """log of the mean activation bias on stamped inputs over that on clean inputs."""
    return float(torch.log((activation_bias(stamped).mean() + 1e-12) / (activation_bias(clean).mean() + 1e-12)))


def principal_axes(clean: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``dims`` principal directions of ``clean`` (rows are samples)."""
    mean = clean.mean(0)
    _, _, vt = np.linalg.svd(clean - mean, full_matrices=False)
    return mean, vt[:dims].T


def vine_entropy(z: np.ndarray, seed: int = 0) -> float:
    """Entropy estimate (nats) of the rows of ``z``: minus the mean log-density of a vine distribution fitted to z."""
    import pyvinecopulib as pv  # imported here: only scans with clean data and a reversed trigger need it

    # Ties (ReLU zeros) would make the kernel margins degenerate: a negligible seeded jitter breaks them.
    z = z + np.random.default_rng(seed).normal(scale=1e-6 * (z.std() + 1e-12), size=z.shape)
    families = [getattr(pv.BicopFamily, name) for name in _VINE_FAMILIES]
    controls = pv.FitControlsVinecop(family_set=families, trunc_lvl=3, num_threads=1)
    margins = [pv.Kde1d() for _ in range(z.shape[1])]
    for margin, column in zip(margins, z.T, strict=True):
        margin.fit(np.ascontiguousarray(column))
    u = np.column_stack([m.cdf(np.ascontiguousarray(c)) for m, c in zip(margins, z.T, strict=True)])
    u = np.clip(u, 1e-9, 1 - 1e-9)
    vine = pv.Vinecop.from_data(u, controls=controls)
    log_density = np.log(vine.pdf(u) + 1e-300)
    for margin, column in zip(margins, z.T, strict=True):
        log_density += np.log(margin.pdf(np.ascontiguousarray(column)) + 1e-300)
    return float(-log_density.mean())


def entropy_shift(clean: Tensor, stamped: Tensor, dims: int = 8, seed: int = 0) -> tuple[float, float, float]:
    """H(stamped) - H(clean) of the penultimate representations reduced to ``dims`` principal components,
    and the two entropies; components are fitted on the clean rows and scaled by their clean spread."""
    c, s = clean.numpy(), stamped.numpy()
    dims = max(1, min(dims, c.shape[1], len(c) - 2))
    mean, axes = principal_axes(c, dims)
    zc, zs = (c - mean) @ axes, (s - mean) @ axes
    scale = zc.std(0) + 1e-9
    clean_h, stamped_h = vine_entropy(zc / scale, seed), vine_entropy(zs / scale, seed)
    return stamped_h - clean_h, clean_h, stamped_h
