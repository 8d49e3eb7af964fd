"""The DE-GRAD map under the fixed-point solvers a user would otherwise pick.

Usage::

    python -m benchmarks.peers                 # writes benchmarks/results/peers_<machine>.{md,json}
    python -m benchmarks.peers --quick --out /tmp/bench   # tiny sizes (the tests)

One map for everyone: the DE-GRAD map ``T(x; d) = x - eta (A^T (A x - d) + R(x))``
of the cpu preset (6x32 DnCNN, spectral normalisation applied once, so the
parameters are the normalised kernels; 32x32 RGB, batch 4), after a few JFB
training steps, on a fixed blurred and noisy batch. Every solver solves each
sample on its own (``vmap`` in JAX; torchdeq solves the batch and stops when
every sample has converged) from ``x0 = A^T d`` to the relative residual
``||T(x) - x|| / ||T(x)|| <= tol``. Peers that test an absolute residual
(jaxopt, optimistix) get ``tol * min_i ||T(x*_i)||`` and the table prints the
relative residual each reached. torchdeq runs with ``--torch_threads`` (default
1: two OpenMP threads on the shared two-core machine ran its convolutions
~70x slower, busy-waiting against XLA's thread pool and the other jobs).

Peers (each skipped with a line saying so when not installed):

* jaxopt: ``AndersonAcceleration`` (history 5, its default ridge 1e-5) and
  ``FixedPointIteration``, both with ``implicit_diff=True`` and its default
  adjoint method, normal-equation CG, capped at the IFT budget (tol 1e-4, 50
  iterations): uncapped (jax's default cap is 10 x the dimension) one train
  step took minutes on this ill-conditioned adjoint;
* optimistix: ``fixed_point`` with ``FixedPointIteration`` (two-norm) and
  ``ImplicitAdjoint`` with GMRES (restart 20, the IFT tolerance). Its default
  ``AutoLinearSolver`` would form the dense Jacobian (an LU of a
  3072 x 3072 matrix per sample), which no user would pick at this size.
  ``ImplicitAdjoint`` differentiates in forward mode (an implicit JVP, then
  transposed), which JAX refuses through the ``custom_vjp`` convolutions of
  ``jfbjax.models.conv``; with plain ``lax`` convolutions lineax's GMRES
  raised "stagnation" at rtol 1e-4, 1e-3 and 1e-2 on this map's
  ill-conditioned adjoint. The row is reported as failed, with the error;
* torchdeq (PyTorch, CPU): ``get_deq(f_solver="anderson")`` with implicit
  differentiation (``ift=True``, Anderson adjoint) and with its one-step
  gradient (``grad=1``: backpropagation through one application of T at the
  fixed point, i.e. JFB), on the same architecture with the same weights
  (checked: the torch map agrees with the JAX map).

jfbjax: ``Anderson`` (m=5) and ``Picard`` forward; JFB and IFT (Anderson
adjoint, tol 1e-4, 50 iterations) backward.

Times are medians of ``--repeat`` calls (JAX: jitted and compiled first;
torch: eager, after one warm-up call). A train step is the forward solve, the
MSE loss, its gradient and an Adam update. Backward = train step - forward.
Ratios are peer / jfbjax measured in the same run: forward against the same
family (Anderson vs Anderson, fixed-point iteration vs Picard), train step
against the same gradient (implicit vs IFT, one-step vs JFB).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jfbjax
from benchmarks.common import exit_status, run_meta, write_result
from benchmarks.harness import Bench, images
from experiments.configs import get_config
from jfbjax.imaging.noise import degrade
from jfbjax.models import freeze_spectral_norm
from jfbjax.training.profiling import time_call


def _median_ms(fn, repeat: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` (:func:`jfbjax.training.profiling.time_call`)."""
    return 1e3 * time_call(fn, repeats=repeat, warmup=warmup)["median_s"]


class Problem:
    """The map, its parameters and one batch."""

    def __init__(self, quick: bool, seed: int = 0, run_dir: str | None = None):
        config = get_config("cpu")
        if quick:
            config.model.depth, config.model.features = 3, 8
            self.batch, self.size, warm = 2, 16, 1
        else:
            self.batch, self.size, warm = 4, 32, 10
        self.config = config
        bench = Bench(
            config, self.batch, repeat=1, warm_steps=warm, image_size=self.size, run_dir=run_dir
        )
        graphdef = nnx.split(bench.model, nnx.Param, ...)[0]
        model = freeze_spectral_norm(nnx.merge(graphdef, bench.state.params, bench.state.rest))
        self.model = model
        self.gd, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.blur = bench.blur
        self.clean = jnp.asarray(images(self.batch, self.size, seed=7))
        self.d = degrade(jax.random.PRNGKey(seed), self.clean, self.blur, bench.noise_std)
        self.z0 = self.blur.adjoint(self.d)
        gd, rest = self.gd, self.rest

        def T(z, params, d):
            return nnx.merge(gd, params, rest).step(z, d)

        self.T = T

    def relres(self, z) -> np.ndarray:
        fz = jax.vmap(self.T, in_axes=(0, None, 0))(z, self.params, self.d)
        axes = tuple(range(1, z.ndim))
        return np.asarray(jnp.sqrt(jnp.sum((fz - z) ** 2, axes)) / jnp.sqrt(jnp.sum(fz**2, axes)))


# ---------------------------------------------------------------- JAX solvers


def jax_solvers(
    prob: Problem,
    tol: float,
    max_iter: int,
    abs_tol: float,
    ift_tol: float,
    ift_max_iter: int,
    skipped: list,
) -> dict:
    """name -> (solve(params, z0, d) -> (z, iterations), gradient family)."""
    T = prob.T

    def vm(one):
        return lambda params, z0, d: jax.vmap(lambda z0, d: one(params, z0, d))(z0, d)

    def jfb(solver, backward):
        def one(params, z0, d):
            z, info = jfbjax.fixed_point(T, z0, params, d, solver=solver, backward=backward)
            return z, info.iterations

        return vm(one)

    anderson = jfbjax.Anderson(m=5, tol=tol, max_iter=max_iter)
    picard = jfbjax.Picard(tol=tol, max_iter=max_iter)
    ift = jfbjax.IFT("anderson", tol=ift_tol, max_iter=ift_max_iter)
    out = {
        "jfbjax_anderson_jfb": (jfb(anderson, jfbjax.JFB()), "jfb", "anderson"),
        "jfbjax_anderson_ift": (jfb(anderson, ift), "ift", "anderson"),
        "jfbjax_picard_jfb": (jfb(picard, jfbjax.JFB()), "jfb", "fpi"),
        "jfbjax_picard_ift": (jfb(picard, ift), "ift", "fpi"),
    }
    try:
        import jaxopt
    except ImportError:
        skipped.append('jaxopt: not installed (pip install -e ".[peers]")')
    else:
        # jaxopt's default adjoint solve is normal CG with jax's default cap of 10 x the
        # dimension: on this ill-conditioned adjoint a single step took minutes. It gets
        # the IFT budget here: normal CG, tol ift_tol, ift_max_iter iterations.
        adjoint_solve = functools.partial(
            jaxopt.linear_solve.solve_normal_cg, tol=ift_tol, maxiter=ift_max_iter
        )

        def jaxopt_solver(cls, **kw):
            def one(params, z0, d):
                s = cls(
                    T,
                    tol=abs_tol,
                    maxiter=max_iter,
                    implicit_diff=True,
                    implicit_diff_solve=adjoint_solve,
                    **kw,
                )
                res = s.run(z0, params, d)
                return res.params, res.state.iter_num

            return vm(one)

        out["jaxopt_anderson"] = (
            jaxopt_solver(jaxopt.AndersonAcceleration, history_size=5),
            "ift",
            "anderson",
        )
        out["jaxopt_fpi"] = (jaxopt_solver(jaxopt.FixedPointIteration), "ift", "fpi")
    try:
        import lineax as lx
        import optimistix as optx
    except ImportError:
        skipped.append('optimistix: not installed (pip install -e ".[peers]")')
    else:

        def optx_one(params, z0, d):
            sol = optx.fixed_point(
                lambda y, a: T(y, *a),
                optx.FixedPointIteration(rtol=0.0, atol=abs_tol, norm=optx.two_norm),
                z0,
                (params, d),
                max_steps=max_iter,
                adjoint=optx.ImplicitAdjoint(
                    lx.GMRES(rtol=ift_tol, atol=0.0, restart=20, max_steps=20 * ift_max_iter)
                ),
                throw=False,
            )
            return sol.value, sol.stats["num_steps"]

        out["optimistix_fpi"] = (vm(optx_one), "ift", "fpi")
    return out


def measure_jax(prob: Problem, solve, repeat: int) -> dict:
    clean = prob.clean
    tx = optax.adam(1e-4)

    fwd = jax.jit(solve)

    def loss(params, z0, d):
        z, _ = solve(params, z0, d)
        return jnp.mean((z - clean) ** 2)

    @jax.jit
    def step(params, opt_state, z0, d):
        value, grads = jax.value_and_grad(loss)(params, z0, d)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, grads

    args = (prob.params, prob.z0, prob.d)
    z, iters = jax.block_until_ready(fwd(*args))
    opt_state = tx.init(prob.params)
    grads = jax.block_until_ready(step(prob.params, opt_state, prob.z0, prob.d))[3]
    fwd_ms = _median_ms(lambda: jax.block_until_ready(fwd(*args)), repeat)
    step_ms = _median_ms(
        lambda: jax.block_until_ready(step(prob.params, opt_state, prob.z0, prob.d)), repeat
    )
    return {
        "fwd_ms": fwd_ms,
        "step_ms": step_ms,
        "bwd_ms": step_ms - fwd_ms,
        "iterations": float(np.mean(np.asarray(iters))),
        "relres_max": float(np.max(prob.relres(z))),
        "grads": grads,
    }


# ---------------------------------------------------------------- torchdeq


def torch_problem(prob: Problem):
    """The same map in PyTorch (NCHW) with the same weights; returns (T, params, tensors)."""
    import torch
    import torch.nn.functional as F

    model = prob.model
    convs = []
    for layer in model.regulariser.layers:
        k = np.asarray(layer.kernel[...])  # HWIO
        w = torch.nn.Parameter(torch.tensor(k.transpose(3, 2, 0, 1).copy()))
        b = torch.nn.Parameter(torch.tensor(np.asarray(layer.bias[...]).copy()))
        convs.append((w, b))
    eta = float(model.eta)
    blur = prob.blur
    s = blur.kernel_size
    lo, hi = (s - 1) // 2, s // 2
    c = int(prob.d.shape[-1])
    h = torch.tensor(blur.kernel.astype(np.float32))
    h_fwd = h[None, None].repeat(c, 1, 1, 1)
    h_adj = torch.flip(h, (0, 1))[None, None].repeat(c, 1, 1, 1)

    def A(x):
        return F.conv2d(F.pad(x, (lo, hi, lo, hi)), h_fwd, groups=c)

    def At(y):
        return F.conv2d(F.pad(y, (hi, lo, hi, lo)), h_adj, groups=c)

    def R(x):
        for i, (w, b) in enumerate(convs):
            x = F.conv2d(x, w, b, padding=1)
            if i < len(convs) - 1:
                x = torch.relu(x)
        return x

    def to_t(a):
        return torch.tensor(np.asarray(a).transpose(0, 3, 1, 2).copy())

    d, z0, clean = to_t(prob.d), to_t(prob.z0), to_t(prob.clean)

    def T(x):
        return x - eta * (At(A(x) - d) + R(x))

    params = [p for wb in convs for p in wb]
    return T, params, d, z0, clean


def _torchdeq_variant(deq, T, params, z0, clean, repeat: int) -> tuple[float, float, object, dict]:
    """Forward (inference, no graph) and train-step times of one torchdeq configuration."""
    import torch

    opt = torch.optim.Adam(params, lr=1e-4)
    solver_kwargs = {"m": 5}

    def forward():
        deq.eval()
        with torch.no_grad():
            z, info = deq(T, z0, solver_kwargs=solver_kwargs)
        deq.train()
        return z[-1], info

    def step():
        opt.zero_grad()
        z, _ = deq(T, z0, solver_kwargs=solver_kwargs)
        loss = torch.mean((z[-1] - clean) ** 2)
        loss.backward()
        opt.step()
        return loss

    snapshot = [p.detach().clone() for p in params]
    z, info = forward()
    fwd_ms = _median_ms(forward, repeat)
    step_ms = _median_ms(step, repeat)
    with torch.no_grad():  # undo the Adam updates of the timed steps
        for p, s in zip(params, snapshot, strict=True):
            p.copy_(s)
    return fwd_ms, step_ms, z, info


def measure_torchdeq(
    prob: Problem,
    tol: float,
    max_iter: int,
    ift_tol: float,
    ift_max_iter: int,
    repeat: int,
    threads: int = 1,
) -> dict:
    import torch
    from torchdeq import get_deq

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    T, params, _, z0, clean = torch_problem(prob)
    # the torch map is the JAX map
    with torch.no_grad():
        t_out = T(z0).numpy().transpose(0, 2, 3, 1)
    j_out = np.asarray(jax.vmap(prob.T, in_axes=(0, None, 0))(prob.z0, prob.params, prob.d))
    map_err = float(np.max(np.abs(t_out - j_out)) / np.max(np.abs(j_out)))

    common = dict(f_solver="anderson", f_max_iter=max_iter, f_tol=tol, f_stop_mode="rel")
    variants = {
        "torchdeq_anderson_ift": dict(
            ift=True, b_solver="anderson", b_max_iter=ift_max_iter, b_tol=ift_tol, b_stop_mode="rel"
        ),
        "torchdeq_anderson_onestep": dict(ift=False, grad=1),
    }
    out = {}
    for name, kw in variants.items():
        deq = get_deq(**common, **kw)
        fwd_ms, step_ms, z, info = _torchdeq_variant(deq, T, params, z0, clean, repeat)
        zj = jnp.asarray(z.detach().numpy().transpose(0, 2, 3, 1))
        out[name] = {
            "fwd_ms": fwd_ms,
            "step_ms": step_ms,
            "bwd_ms": step_ms - fwd_ms,
            "iterations": float(torch.mean(info["nstep"].float())),
            "relres_max": float(np.max(prob.relres(zj))),
            "grad": "ift" if kw.get("ift") else "jfb",
            "family": "anderson",
        }
    return {
        "rows": out,
        "map_rel_err": map_err,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- main


PEER_FAMILIES = {  # peer package -> the (family, gradient) pairs of its rows
    "jaxopt": (("anderson", "ift"), ("anderson", "jfb"), ("fpi", "ift"), ("fpi", "jfb")),
    "optimistix": (("fpi", "ift"), ("fpi", "jfb")),
    "torchdeq": (("anderson", "ift"), ("anderson", "jfb")),
}

REFERENCE = {  # (family, gradient) -> the jfbjax row a peer is compared with
    ("anderson", "ift"): "jfbjax_anderson_ift",
    ("anderson", "jfb"): "jfbjax_anderson_jfb",
    ("fpi", "ift"): "jfbjax_picard_ift",
    ("fpi", "jfb"): "jfbjax_picard_jfb",
}


def to_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Peers on the DE-GRAD map ({meta['machine']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Device: {meta['device']}; jax {meta['jax']}"
        + (
            f"; torch {meta['torch']} ({meta['torch_threads']} threads)"
            if meta.get("torch")
            else ""
        )
        + f". Map: DE-GRAD, DnCNN {meta['depth']}x{meta['features']}, {meta['size']}x"
        f"{meta['size']} RGB, batch {meta['batch']}; relative tol {meta['tol']} (absolute "
        f"{meta['abs_tol']:.3g} for jaxopt/optimistix), max_iter {meta['max_iter']}; "
        f"IFT tol {meta['ift_tol']}, {meta['ift_max_iter']} iterations; median of "
        f"{meta['repeat']}; wall {meta['wall_s']:.0f} s.",
        "",
        "| solver | gradient | iterations | max rel. residual | forward ms | backward ms "
        "| train step ms | forward / jfbjax | train step / jfbjax | compared with |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        ref = r.get("reference", "")
        lines.append(
            f"| {name} | {r['grad']} | {r['iterations']:.3g} | {r['relres_max']:.2e} "
            f"| {r['fwd_ms']:.4g} | {r['bwd_ms']:.4g} | {r['step_ms']:.4g} "
            f"| {r.get('fwd_ratio', float('nan')):.2f} | {r.get('step_ratio', float('nan')):.2f} "
            f"| {ref} |"
        )
    if result.get("cos_to_jfbjax_ift"):
        lines += [
            "",
            "Gradient alignment with jfbjax IFT (cosine): "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["cos_to_jfbjax_ift"].items())
            + ".",
        ]
    if result.get("torch_map_rel_err") is not None:
        lines += [
            "",
            f"torch map vs JAX map, max relative difference at x0: "
            f"{result['torch_map_rel_err']:.1e}.",
        ]
    for s in result["skipped"]:
        lines += ["", f"Skipped: {s}."]
    for name, msg in result.get("failed", {}).items():
        lines += ["", f"Failed: {name} raised `{msg}`."]
    lines.append("")
    return "\n".join(lines)


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--max_iter", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--no_torch", action="store_true", help="skip torchdeq")
    parser.add_argument("--torch_threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--only",
        default=None,
        help="peers to run, by name prefix (e.g. jaxopt_anderson,torchdeq); "
        "the jfbjax rows always run",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="a cpu-preset run folder: use its trained model (else a few "
        "warm-up JFB steps from the initialisation)",
    )
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    repeat = args.repeat or (1 if args.quick else 5)
    prob = Problem(args.quick, run_dir=args.run)
    ift_tol = float(prob.config.backward.tol)
    ift_max_iter = int(prob.config.backward.max_iter)
    skipped: list[str] = []

    # absolute tolerance for the peers that test ||T(x) - x||
    z_ref, _ = jax.jit(
        jax.vmap(
            lambda z0, d: jfbjax.fixed_point(
                prob.T,
                z0,
                prob.params,
                d,
                solver=jfbjax.Anderson(tol=args.tol / 10, max_iter=4 * args.max_iter),
            )
        )
    )(prob.z0, prob.d)
    f_ref = jax.vmap(prob.T, in_axes=(0, None, 0))(z_ref, prob.params, prob.d)
    # the smallest ||T(x*)|| of the batch: every sample reaches at least the relative tol
    abs_tol = args.tol * float(
        np.min(np.sqrt(np.sum(np.asarray(f_ref).reshape(prob.batch, -1) ** 2, axis=1)))
    )

    rows, grads, failed = {}, {}, {}
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else []
    for name, (solve, grad, family) in jax_solvers(
        prob, args.tol, args.max_iter, abs_tol, ift_tol, ift_max_iter, skipped
    ).items():
        if only and not any(name.startswith(o) for o in only):
            # with --only, jfbjax runs the rows its selected peers are compared with
            needed = {"jfbjax_anderson_ift"} | {
                REFERENCE[(fam, g)]
                for o in only
                for fam, g in PEER_FAMILIES.get(o.split("_")[0], ())
            }
            if name not in needed:
                continue
        print(f"  {name}", flush=True)
        try:
            r = measure_jax(prob, solve, repeat)
        except Exception as e:  # a peer that raises at run time is reported, not fatal
            if name.startswith("jfbjax"):
                raise
            lines = [ln.strip() for ln in str(e).splitlines() if "Error" in ln]
            failed[name] = (lines[-1] if lines else str(e).splitlines()[0])[:300]
            print(f"  {name} failed: {failed[name]}", flush=True)
            continue
        grads[name] = r.pop("grads")
        rows[name] = {**r, "grad": grad, "family": family}
    meta_torch = {}
    torch_err = None
    if args.no_torch or (only and not any(o.startswith("torchdeq") for o in only)):
        skipped.append("torchdeq: not selected")
    else:
        try:
            import torch  # noqa: F401
            import torchdeq  # noqa: F401
        except ImportError as e:
            skipped.append(f'torchdeq: not installed ({e.name}; pip install -e ".[peers-torch]")')
        else:
            print("  torchdeq", flush=True)
            t = measure_torchdeq(
                prob, args.tol, args.max_iter, ift_tol, ift_max_iter, repeat, args.torch_threads
            )
            rows.update(t["rows"])
            torch_err = t["map_rel_err"]
            meta_torch = {"torch": t["torch"], "torch_threads": t["threads"]}
    for name, r in rows.items():
        if name.startswith("jfbjax"):
            continue
        ref = REFERENCE[(r["family"], r["grad"])]
        fwd_ref = "jfbjax_anderson_jfb" if r["family"] == "anderson" else "jfbjax_picard_jfb"
        r["reference"] = ref
        r["fwd_ratio"] = r["fwd_ms"] / rows[fwd_ref]["fwd_ms"]
        r["step_ratio"] = r["step_ms"] / rows[ref]["step_ms"]
        r["bwd_ratio"] = r["bwd_ms"] / rows[ref]["bwd_ms"] if rows[ref]["bwd_ms"] > 0 else None
    cos = {
        k: float(jfbjax.gradient_alignment(g, grads["jfbjax_anderson_ift"]))
        for k, g in grads.items()
        if k != "jfbjax_anderson_ift"
    }
    meta = run_meta(
        "benchmarks.peers",
        argv,
        start,
        depth=int(prob.config.model.depth),
        features=int(prob.config.model.features),
        size=prob.size,
        batch=prob.batch,
        tol=args.tol,
        abs_tol=abs_tol,
        max_iter=args.max_iter,
        ift_tol=ift_tol,
        ift_max_iter=ift_max_iter,
        repeat=repeat,
    )
    machine = meta["machine"]
    result = {
        "meta": {**meta, **meta_torch},
        "rows": rows,
        "cos_to_jfbjax_ift": cos,
        "torch_map_rel_err": torch_err,
        "skipped": skipped,
        "failed": failed,
    }
    stem = f"peers_{machine}" + ("_quick" if args.quick else "")
    write_result(args.out, stem, result, to_markdown(result))
    print(f"wrote {Path(args.out) / stem}.md and .json")
    return result


#: The command line: runs :func:`run` and returns the exit status (0).
main = exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
