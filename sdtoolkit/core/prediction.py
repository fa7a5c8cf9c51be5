"""Prediction-type conversions (ε, x0, v, flow velocity, TrigFlow F) for any schedule x_t = alpha_t x0 + sigma_t eps.

Part of the Denoiser: the trainers and 3D optimizers never call these directly, they ask the Denoiser for the
quantity they need. Every conversion goes through the pair (x0, eps), which determines x_t and all other
parametrisations:

- `epsilon`:       eps
- `sample`:        x0
- `v_prediction`:  v = alpha_t eps - sigma_t x0   (Salimans & Ho 2022, Sec. 4; diffusers' definition)
- `flow`:          u = dx_t/dt = alpha'_t x0 + sigma'_t eps   (rectified flow: u = eps - x0)
- `trigflow`:      F = u / sigma_d under TrigFlow (Lu & Song 2024, Eq. 6: x0 = cos t x_t - sigma_d sin t F)

All maps are affine in the prediction with weights that do not depend on it, so classifier-free guidance
combined in any one parametrisation equals the same guidance combined in any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow", "trigflow")
#: short aliases accepted wherever a prediction type is named
ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "velocity": "flow", "flow_prediction": "flow"}


def canonical_prediction_type(name: str) -> str:
    """Maps an alias (`eps`, `x0`, `v`, `velocity`) to its canonical name, or raises naming the valid choices."""
    name = ALIASES.get(name, name)
    if name not in PREDICTION_TYPES:
        valid = ", ".join(PREDICTION_TYPES + tuple(ALIASES))
        raise ValueError(f"prediction type {name!r} is not supported; choose one of {valid}")
    return name


@dataclass
class Coefficients:
    """alpha_t, sigma_t and their time derivatives, already broadcast against the sample (see `append_dims`)."""

    alpha_t: Tensor
    sigma_t: Tensor
    d_alpha_t: Tensor
    d_sigma_t: Tensor
    sigma_data: float = 1.0


def to_x0_eps(prediction: Tensor, x_t: Tensor, kind: str, c: Coefficients) -> tuple[Tensor, Tensor]:
    """Solves x_t = alpha_t x0 + sigma_t eps together with the prediction for (x0, eps)."""
    alpha_t, sigma_t = c.alpha_t, c.sigma_t
    if kind == "epsilon":
        eps = prediction
        x0 = (x_t - sigma_t * eps) / alpha_t
    elif kind == "sample":
        x0 = prediction
        eps = (x_t - alpha_t * x0) / sigma_t
    elif kind == "v_prediction":
        # v = alpha eps - sigma x0 and x_t = alpha x0 + sigma eps  =>  (alpha^2 + sigma^2) x0 = alpha x_t - sigma v
        norm = alpha_t**2 + sigma_t**2
        x0 = (alpha_t * x_t - sigma_t * prediction) / norm
        eps = (sigma_t * x_t + alpha_t * prediction) / norm
    elif kind in ("flow", "trigflow"):
        u = prediction * c.sigma_data if kind == "trigflow" else prediction
        # u = alpha' x0 + sigma' eps and x_t = alpha x0 + sigma eps; Cramer's rule, det = alpha sigma' - sigma alpha'
        det = alpha_t * c.d_sigma_t - sigma_t * c.d_alpha_t
        x0 = (c.d_sigma_t * x_t - sigma_t * u) / det
        eps = (alpha_t * u - c.d_alpha_t * x_t) / det
    else:
        raise ValueError(f"prediction type {kind!r} is not supported; choose one of {', '.join(PREDICTION_TYPES)}")
    return x0, eps


def from_x0_eps(x0: Tensor, eps: Tensor, kind: str, c: Coefficients) -> Tensor:
    """The prediction of type `kind` that corresponds to (x0, eps)."""
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return c.alpha_t * eps - c.sigma_t * x0
    if kind == "flow":
        return c.d_alpha_t * x0 + c.d_sigma_t * eps
    if kind == "trigflow":
        return (c.d_alpha_t * x0 + c.d_sigma_t * eps) / c.sigma_data
    raise ValueError(f"prediction type {kind!r} is not supported; choose one of {', '.join(PREDICTION_TYPES)}")


def convert(prediction: Tensor, x_t: Tensor, source: str, target: str, c: Coefficients) -> Tensor:
    """Converts a prediction of type `source` into type `target` at the same (x_t, t)."""
    source, target = canonical_prediction_type(source), canonical_prediction_type(target)
    if source == target:
        return prediction
    x0, eps = to_x0_eps(prediction, x_t, source, c)
    return from_x0_eps(x0, eps, target, c)
