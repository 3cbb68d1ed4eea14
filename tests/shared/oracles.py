"""Exact denoisers for Gaussian data, the closed-form oracle every sampler and bound is checked against."""
import torch

from shared.diffusion.broadcast import append_dims


class GaussianOracle:
    """E[x_0 | x_t] for x_0 ~ N(mean, std² I): mean + α s² / (α² s² + σ²) · (x_t − α mean).

    With ``space`` set (zero-centre-of-mass data) the position channels have zero mean and the
    formula acts in the subspace: the projection of x_t replaces x_t.
    """

    def __init__(self, schedule, mean=0.0, std=1.0, space=None):
        self.schedule, self.mean, self.std, self.space = schedule, mean, std, space
        self.calls = 0

    def __call__(self, x_t, t, cond=None):
        self.calls += 1
        alpha, sigma = (append_dims(c.to(x_t), x_t.ndim) for c in self.schedule.alpha_sigma(t))
        mean = torch.as_tensor(self.mean, dtype=x_t.dtype)
        if self.space is not None:
            x_t = self.space.project(x_t)
            mean = self.space.project(mean.expand_as(x_t))
        gain = alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2)
        return mean + gain * (x_t - alpha * mean)
