"""Contraction of a trained DE-GRAD map at its fixed points, as a function of the step eta.

Usage::

    python -m benchmarks.contraction_vs_eta --run results/cpu_ablation/runs/tv_pc1_e05_spec/seed0
    # -> benchmarks/results/contraction_vs_eta_<machine>.{md,json}

DE-GRAD's fixed points do not depend on ``eta`` (``x = T(x)`` iff ``A^T(A x
- d) + R(x) = 0``, preconditioned or not), so the step is a free knob on
the contraction of ``T`` at an equilibrium that stays where it is:
``dT/dx = I - eta M`` with ``M = P (A^T A + dR/dx)``. If ``M``'s spectrum
lies in ``[s_min, s_max]`` with ``s_min > 0`` (and ``M`` were symmetric),
the best step is ``2 / (s_min + s_max)`` and gives the factor
``(k - 1) / (k + 1)``, ``k = s_max / s_min``: no step contracts better. This
script measures it. It solves the run's validation (or test) images once,
tightly (Anderson to ``--tol``), then estimates ``||dT/dx||_2`` at every
fixed point by ``--iters`` power-iteration steps for each ``eta`` in
``--etas`` (and the trained one), and fits ``s_min`` and ``s_max`` from the
two ends: ``||J|| ~ 1 - eta s_min`` for small ``eta`` and ``eta s_max - 1``
for large. Settings are chosen on validation images; ``--split test`` is
for the record.

``--direction_iters K`` also says *what* the least-contracted direction is
at the trained step: ``K`` power steps on ``J^T J`` give each image's top
right singular vector ``w`` (unit norm) and ``sigma = ||J w||``, and the
script reports ``<w, J w> / sigma`` (near +1: ``w`` is nearly an
eigenvector of ``J`` with eigenvalue ``+sigma``, so an iterate displaced
along ``w`` moves further the same way, ``M = P (A^T A + dR/dx)`` has
eigenvalue ``(1 - sigma) / eta`` there, negative when ``sigma > 1``; near
-1: the step overshoots), the share of ``w``'s energy at spatial
frequencies above 0.25 cycles per pixel (where a blur transmits least),
and its share in the 2-pixel border. ``--model NAME`` measures a shipped
model (:mod:`jfbjax.pretrained`) instead of a run folder.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, markdown_table, run_meta, write_result
from jfbjax.data import load_data_from_config
from jfbjax.diagnostics import _linear_maps
from jfbjax.models import DEGRAD, DEProx
from jfbjax.models.dncnn import freeze_spectral_norm
from jfbjax.training.contraction import contraction_factors
from jfbjax.training.records import evaluation_images
from jfbjax.training.restore import load_run

__all__ = ["curvature_parts", "main", "measure", "run", "top_direction"]


def _with_eta(model, eta: float):
    """A copy of ``model`` (spectral norms frozen) whose step is ``eta``."""
    graphdef, state = nnx.split(freeze_spectral_norm(model))
    other = nnx.merge(graphdef, state)
    other.raw_eta[...] = jnp.asarray(np.log(np.expm1(eta)), other.raw_eta[...].dtype)
    return other


def _inner(shape) -> jax.Array:
    """(H, W, 1) mask of the pixels more than 2 from the border of an (H, W, C) image."""
    return jnp.zeros(shape[:2], bool).at[2:-2, 2:-2].set(True)[..., None]


def top_direction(step, x: jax.Array, d: jax.Array, iters: int, key: jax.Array) -> dict:
    """What the least-contracted direction of ``x -> step(x, d)`` at ``x`` (one image,
    (H, W, C)) is: ``iters`` power steps on ``J^T J`` give the top right singular
    vector ``w`` (returned as ``w``) and scalars ``sigma`` (``||J w||``), ``alignment``
    (``<w, J w> / sigma``, in [-1, 1]), ``high_freq`` (share of ``w``'s energy at
    radial frequencies above 0.25 cycles per pixel) and ``border`` (share in the
    outer 2 pixels)."""
    jvp, vjp = _linear_maps(step, x, (d,))
    unit = lambda w: w / jnp.linalg.norm(w)
    w = unit(jax.random.normal(key, x.shape, x.dtype))
    w = jax.lax.fori_loop(0, iters, lambda _, w: unit(vjp(jvp(w))), w)
    jw = jvp(w)
    sigma = jnp.linalg.norm(jw)
    power = jnp.abs(jnp.fft.fft2(w, axes=(0, 1))) ** 2
    fy, fx = jnp.fft.fftfreq(x.shape[0]), jnp.fft.fftfreq(x.shape[1])
    high = (fy[:, None] ** 2 + fx[None, :] ** 2 > 0.25**2)[..., None]
    return {
        "w": w,
        "sigma": sigma,
        "alignment": jnp.vdot(w, jw) / sigma,
        "high_freq": jnp.sum(jnp.where(high, power, 0.0)) / jnp.sum(power),
        "border": jnp.sum(jnp.where(_inner(x.shape), 0.0, w**2)),
    }


def _splits(model) -> bool:
    """Whether :func:`curvature_parts` applies: a DE-GRAD map (not DE-Prox, whose
    step is not a preconditioned gradient step) with ``equivariance`` 1 and no clamp."""
    return (
        isinstance(model, DEGRAD)
        and not isinstance(model, DEProx)
        and model.equivariance == 1
        and not model.clamp
    )


def curvature_parts(model, x: jax.Array, d: jax.Array, w: jax.Array) -> dict:
    r"""Where the contraction along ``w`` comes from, at a fixed point ``x`` of a
    DE-GRAD ``model`` (one image, (H, W, C); ``equivariance`` 1, no clamp).

    At a fixed point the gradient term vanishes, so the derivative of ``P(x)``
    drops out and :math:`J w = w - \eta P (A^T A + H_{tv} + t I + J_R) w`: the
    blur's data term, the smoothed TV's Hessian, the Tikhonov term and the
    learned ``R``'s Jacobian (the DnCNN or the convex ridge), the terms of
    :meth:`~jfbjax.models.DEGRAD.regulariser_terms`. Returns ``c_data``,
    ``c_tv``, ``c_tik``, ``c_R`` (0 for a term the model does not have), each
    :math:`\eta \langle w, P H_k w \rangle` (so :math:`\langle w, J w \rangle =
    \|w\|^2 - \sum_k c_k`; positive parts contract along ``w``, negative ones
    expand), and ``border_<part>``, the share of each sum from the outer 2 pixels.
    """
    if not _splits(model):
        raise ValueError("curvature_parts needs a DEGRAD map with equivariance 1 and no clamp")
    dr = d if model.inject else None
    present = jax.eval_shape(lambda z: model.regulariser_terms(z, dr), x)  # names only
    parts = {"data": lambda z: model.blur.adjoint(model.blur.apply(z) - d)}
    for name in ("tv", "tik", "R"):
        if name in present:
            parts[name] = lambda z, name=name: model.regulariser_terms(z, dr)[name]
    inner = _inner(x.shape)
    eta = model.eta.astype(x.dtype)
    out = {f"{k}_{n}": jnp.zeros((), x.dtype) for n in ("tv", "tik") for k in ("c", "border")}
    for name, f in parts.items():
        hw = _linear_maps(lambda z, _, f=f: f(z), x, (None,))[0](w)  # H_k w, by VJPs
        e = w * (eta * model.precondition(x, hw))
        out[f"c_{name}"] = jnp.sum(e)
        out[f"border_{name}"] = jnp.sum(jnp.where(inner, 0.0, e))
    return out


def measure(
    run,
    split: str,
    n: int,
    etas,
    tol: float,
    max_iter: int,
    iters: int,
    radius_iters: int = 0,
    direction_iters: int = 0,
) -> dict:
    """Fixed points of ``n`` images of ``split`` and ``||dT/dx||_2`` there for each eta;
    with ``radius_iters > 0`` also the spectral radius of ``dT/dx`` at the trained eta
    (:func:`jfbjax.spectral_radius_estimate`), with ``direction_iters > 0`` each
    image's least-contracted direction there (:func:`top_direction`)."""
    data = load_data_from_config(run.config)
    d_val, d_test = evaluation_images(run.config, data, run.blur)
    d = jnp.asarray((d_val if split == "val" else d_test)[:n])
    if len(d) == 0:
        raise ValueError(f"the run has no {split} images")
    model = run.model.with_solver(jfbjax.Anderson(tol=tol, max_iter=max_iter))
    x_star, info = model(d)
    trained = float(model.eta)
    rows = []
    for eta in sorted({trained, *map(float, etas)}):
        step = _with_eta(model, eta).step
        c = jax.jit(lambda x, d, step=step: contraction_factors(step, x, d, iters))(x_star, d)
        c = np.asarray(c)
        rows.append({"eta": eta, "trained": eta == trained, "mean": float(c.mean()),
                     "max": float(c.max()), "per_image": c.tolist()})  # fmt: skip
    radius = None
    if radius_iters > 0:
        step = model.step
        keys = jax.random.split(jax.random.PRNGKey(1), len(d))
        one = lambda x, di, k: jfbjax.spectral_radius_estimate(
            step, x, di, iters=radius_iters, key=k
        )
        r = np.asarray(jax.jit(jax.vmap(one))(x_star, d, keys))
        norm = next(row for row in rows if row["trained"])
        radius = {"iters": radius_iters, "mean": float(r.mean()), "max": float(r.max()),
                  "at_worst_norm": float(r[int(np.argmax(norm["per_image"]))])}  # fmt: skip
    direction = None
    if direction_iters > 0:
        step = model.step
        keys = jax.random.split(jax.random.PRNGKey(2), len(d))
        parts = _splits(model)

        def one(x, di, k):
            out = top_direction(step, x, di, direction_iters, k)
            w = out.pop("w")
            return {**out, **(curvature_parts(model, x, di, w) if parts else {})}

        per = jax.device_get(jax.jit(jax.vmap(one))(x_star, d, keys))
        h, w = d.shape[1:3]
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
        direction = {
            "iters": direction_iters,
            "per_image": {k: np.asarray(v).tolist() for k, v in per.items()},
            # the same shares for white noise and for a vector spread evenly over pixels
            "white_high_freq": float(np.mean(fy**2 + fx**2 > 0.25**2)),
            "uniform_border": 1.0 - (h - 4) * (w - 4) / (h * w),
        }
    small, large = rows[0], rows[-1]
    s_min = (1.0 - small["max"]) / small["eta"]  # the least-contracted direction at small eta
    s_max = (large["max"] + 1.0) / large["eta"]  # the most over-stepped one at large eta
    bound = None
    if s_min > 0 and s_max > s_min:
        k = s_max / s_min
        bound = {"s_min": s_min, "s_max": s_max, "best_eta": 2.0 / (s_min + s_max),
                 "best_factor": (k - 1.0) / (k + 1.0)}  # fmt: skip
    return {
        "rows": rows,
        "fit": bound,
        "radius": radius,
        "direction": direction,
        "n": len(d),
        "fwd_iterations": float(np.mean(info.iterations)),
        "fwd_converged": float(np.mean(np.asarray(info.status) == int(jfbjax.CONVERGED))),
    }


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Contraction of T at the fixed points vs the step eta: `{meta['run']}`",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']} ({meta['device']}); jax {meta['jax']}  ",
        f"{result['n']} {meta['split']} images, solved once by Anderson to tol {meta['tol']:g} "
        f"({result['fwd_iterations']:.1f} iterations on average, "
        f"{100 * result['fwd_converged']:.0f}% converged); ‖dT/dx‖₂ by {meta['iters']} "
        "power-iteration steps per image. The fixed points do not depend on eta.",
        "",
    ]
    lines += markdown_table(
        ["eta", "contraction mean", "contraction max"],
        [
            (
                f"{r['eta']:.3f}" + (" (trained)" if r["trained"] else ""),
                f"{r['mean']:.4f}",
                f"{r['max']:.4f}",
            )
            for r in result["rows"]
        ],
    )
    fit = result["fit"]
    lines.append("")
    if fit is None:
        lines.append("No bound fitted: the smallest eta does not contract the slowest direction.")
    else:
        lines.append(
            f"Fit from the two ends: s_min ≈ {fit['s_min']:.4f}, s_max ≈ {fit['s_max']:.3f} "
            f"(ratio {fit['s_max'] / fit['s_min']:.0f}), so the best step is about "
            f"{fit['best_eta']:.3f} and no eta contracts better than about "
            f"{fit['best_factor']:.4f} at the worst image (symmetric approximation)."
        )
    radius = result.get("radius")
    if radius is not None:
        lines += [
            "",
            f"Spectral radius of dT/dx at the trained eta ({radius['iters']} power steps on "
            f"J itself, `jfbjax.spectral_radius_estimate`): mean {radius['mean']:.4f}, max "
            f"{radius['max']:.4f}; {radius['at_worst_norm']:.4f} at the image with the "
            "largest ‖dT/dx‖₂. The radius is the local linear rate of the iteration; it is "
            "at most the norm.",
        ]
    direction = result.get("direction")
    if direction is not None:
        per = direction["per_image"]
        order = np.argsort(per["sigma"])[::-1][:5]
        lines += [
            "",
            f"The least-contracted direction w at the trained eta ({direction['iters']} power "
            "steps on JᵀJ), at the 5 images with the largest ‖J w‖: ⟨w, J w⟩ / ‖J w‖ near +1 "
            "means J ≈ +‖J w‖ along w (P(AᵀA + ∂R/∂x) has eigenvalue (1 − ‖J w‖)/eta there, "
            "negative above 1), near −1 an overshooting step; high freq: share of w's energy "
            "above 0.25 cycles/pixel (white noise: "
            f"{direction['white_high_freq']:.2f}); border: share in the outer 2 pixels (a "
            f"vector spread evenly: {direction['uniform_border']:.2f}).",
            "",
        ]
        names = [n for n in ("data", "tv", "tik", "R") if f"c_{n}" in per]
        if names:
            lines += [
                "",
                "Where ⟨w, J w⟩ = 1 − Σ c comes from (DE-GRAD at its fixed point: J w = w − "
                "eta P (AᵀA + H_tv + t I + J_R) w, J_R the learned R's Jacobian, c = eta "
                "⟨w, P H w⟩ per term; positive contracts along w, negative expands; in "
                "brackets the part from the outer 2 "
                "pixels).",
                "",
            ]
        lines += markdown_table(
            ["image", "‖J w‖", "⟨w, J w⟩ / ‖J w‖", "high freq", "border"]
            + [f"c {n}" for n in names],
            [
                (str(int(i)), f"{per['sigma'][i]:.4f}", f"{per['alignment'][i]:+.3f}",
                 f"{per['high_freq'][i]:.2f}", f"{per['border'][i]:.2f}",
                 *(f"{per['c_' + n][i]:+.4f} ({per['border_' + n][i]:+.4f})" for n in names))
                for i in order
            ],
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def run(argv=None) -> dict:
    """Runs the measurement of ``argv`` (the flags below); returns ``{"meta", "rows", ...}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a trained DE-GRAD run folder")
    which.add_argument("--model", help="a shipped model (jfbjax.pretrained), e.g. "
                       "deblur-builtin-32")  # fmt: skip
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--n", type=int, default=40, help="images (at most the split's)")
    p.add_argument("--etas", type=float, nargs="+", default=[0.5, 0.8, 1.1, 1.2, 1.4])
    p.add_argument("--tol", type=float, default=1e-5, help="forward tolerance")
    p.add_argument("--max_iter", type=int, default=300)
    p.add_argument("--iters", type=int, default=40, help="power-iteration steps")
    p.add_argument("--radius_iters", type=int, default=0,
                   help="also the spectral radius at the trained eta by this many power "
                   "steps on dT/dx (0: not measured)")  # fmt: skip
    p.add_argument("--direction_iters", type=int, default=0,
                   help="also each image's least-contracted direction at the trained eta "
                   "by this many power steps on J^T J (0: not measured)")  # fmt: skip
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.n < 1 or min(args.etas) <= 0:
        p.error("--n must be >= 1 and every --etas value > 0")
    start = time.perf_counter()
    if args.run is not None:
        trained = load_run(args.run, which="latest")
    else:
        from jfbjax import pretrained

        trained = pretrained.load(args.model)
    result = measure(trained, args.split, args.n, args.etas, args.tol, args.max_iter, args.iters,
                     args.radius_iters, args.direction_iters)  # fmt: skip
    result["meta"] = run_meta(
        "benchmarks.contraction_vs_eta", argv, start, run=args.run or args.model, split=args.split,
        tol=args.tol, iters=args.iters,
    )  # fmt: skip
    stem = f"contraction_vs_eta_{result['meta']['machine']}"
    result["paths"] = write_result(args.out, stem, result, to_markdown(result))
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
