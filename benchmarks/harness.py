"""What the benchmark scripts share: the benchmarked model, its solvers and
backward modes, the images, and :class:`Bench` (one warmed model with its
jitted train step, forward, VJP and adjoint measurements).

``benchmarks.backward_cost``, ``benchmarks.peers`` and
``benchmarks.gpu_paper_scale`` build on it; timings and memory come from
:mod:`jfbjax.training.profiling` (``time_call``, ``compiled_memory``).
The benchmarked map is the paper's DE-GRAD (no preconditioner, TV term or
CG start), with the preset's DnCNN and Anderson settings, so that results
stay comparable with those committed under ``benchmarks/results``.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jfbjax
from jfbjax.builders import backward_from_config, build_model, solver_from_config
from jfbjax.imaging.noise import degrade
from jfbjax.models import DEGRAD, freeze_spectral_norm
from jfbjax.training import (
    DataParallel,
    TrainState,
    blur_from_config,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from jfbjax.training.profiling import compiled_memory, device_peak_bytes, time_call

__all__ = ["MODES", "Bench", "backward_mode", "build", "copy_tree", "fixed_solver", "images"]

#: The backward modes the benchmarks compare.
MODES = ("jfb", "ift_anderson", "ift_gmres", "neumann5", "unrolled")


def backward_mode(name: str, config) -> jfbjax.AbstractBackward | jfbjax.Unrolled:
    """The backward mode of a benchmark mode name (:data:`MODES`; ``neumann<k>``
    for any k), with the adjoint tolerance and cap of ``config.backward``
    (built by :func:`jfbjax.builders.backward_from_config`)."""
    section = config.backward.copy_and_resolve_references()
    if name in ("jfb", "unrolled"):
        section.name = name
    elif name in ("ift_anderson", "ift_gmres"):
        section.name, section.adjoint_solver = "ift", name[len("ift_") :]
    elif name.startswith("neumann") and name[len("neumann") :].isdigit():
        section.name, section.k = "neumann", int(name[len("neumann") :])
    else:
        raise ValueError(f"unknown mode {name!r}; choose from {MODES}")
    return backward_from_config(section)


def fixed_solver(config, iters: int) -> jfbjax.Anderson:
    """The preset's Anderson solver with ``tol=0``: exactly ``iters`` iterations."""
    section = config.solver.copy_and_resolve_references()
    section.name, section.tol, section.max_iter = "anderson", 0.0, int(iters)
    return solver_from_config(section)


def build(config, blur, dtype: str = "float32", seed: int = 0) -> DEGRAD:
    """The paper's DE-GRAD (no preconditioner, TV or Tikhonov term, start
    ``A^T d``) with the preset's DnCNN and Anderson settings, computed in
    ``dtype``, JFB backward (:func:`jfbjax.builders.build_model` with those
    overrides)."""
    c = config.copy_and_resolve_references()
    c.model.update(
        kind="degrad", family="degrad", start="adjoint", precond=0.0, precond_tv=False,
        tikhonov=0.0, tv_weight=0.0, dtype=dtype,
    )  # fmt: skip
    c.solver.name, c.backward.name = "anderson", "jfb"
    return build_model(c, blur, nnx.Rngs(seed))


@functools.lru_cache(maxsize=8)
def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` clean ``size x size`` RGB images on [-1, 1], float32 (N, H, W, 3).

    Random crops of the built-in photographs (scikit-image, offline), the
    training images of the cpu preset; random blocky images where those are
    unavailable or too small. Natural images matter for the solves that stop
    at a tolerance: the trained regulariser keeps the map contracting on
    images like those it was trained on, less so on noise.
    """
    try:
        from jfbjax.data.builtin import load_builtin

        x = load_builtin(size, n_val=1, n_test=1).train_batch(0, n, seed)
        return np.asarray(x, np.float32)
    except Exception:  # no scikit-image data, or a size the photos cannot give
        rng = np.random.default_rng(seed)
        coarse = rng.uniform(-1, 1, (n, max(size // 4, 1), max(size // 4, 1), 3))
        x = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :size, :size]
        if x.shape[1] < size:
            x = np.resize(x, (n, size, size, 3))
        return (0.8 * x).astype(np.float32)


def copy_tree(tree):
    """A copy of every array of ``tree`` (a train step donates its state)."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


class Bench:
    """One model (warmed), its optimiser and the jitted pieces, for one preset."""

    def __init__(
        self,
        config,
        batch: int,
        dtype: str = "float32",
        repeat: int = 3,
        warm_steps: int = 5,
        image_size: int = 32,
        run_dir: str | None = None,
    ):
        self.config = config
        self.batch = batch
        self.repeat = repeat
        self.blur = blur_from_config(config)
        self.noise_std = float(config.noise_std)
        self.dp = DataParallel.create()
        self.tx = make_optimizer(config.optim, max(int(config.steps), 1))
        self.model = build(config, self.blur, dtype)
        if run_dir is not None:  # the parameters of a trained run (experiments.deblur_celeba)
            from jfbjax.training import load_run

            nnx.update(self.model, nnx.state(load_run(run_dir).model))
            warm_steps = 0
        graphdef, state = create_train_state(self.model, self.tx, jax.random.PRNGKey(0))
        self.state = self.dp.replicate(state)
        if warm_steps:  # Adam at 1e-3 with the preset's solver: R is no longer the zero map
            warm_tx = optax.adam(1e-3)
            step = make_train_step(graphdef, warm_tx, self.blur, self.noise_std, self.dp)
            warm = self.state._replace(opt_state=warm_tx.init(self.state.params))
            clean = self.dp.shard_batch(images(batch, image_size, seed=1))
            for _ in range(warm_steps):
                warm, _ = step(warm, clean)
            self.state = self.dp.replicate(
                TrainState(
                    step=jnp.zeros((), jnp.int32),
                    params=warm.params,
                    rest=warm.rest,
                    opt_state=self.tx.init(warm.params),
                    key=warm.key,
                )
            )

    def _graphdef(self, solver, backward):
        return nnx.split(self.model.with_solver(solver, backward), nnx.Param, ...)[0]

    def train_step(self, mode: str, iters: int, size: int, solver=None) -> dict:
        """Time and memory of one training step."""
        graphdef = self._graphdef(
            solver or fixed_solver(self.config, iters), backward_mode(mode, self.config)
        )
        step = make_train_step(graphdef, self.tx, self.blur, self.noise_std, self.dp)
        clean = self.dp.shard_batch(images(self.batch, size, seed=2))
        state = copy_tree(self.state)
        t0 = time.perf_counter()
        compiled = step.lower(state, clean).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled_memory(compiled)
        holder = {"state": state}
        metrics = {}

        def one():
            holder["state"], m = compiled(holder["state"], clean)
            metrics.update(m)
            return m

        t = time_call(one, repeats=self.repeat)
        return {
            "step_ms": 1e3 * t["median_s"],
            "step_min_ms": 1e3 * t["min_s"],
            "compile_s": compile_s,
            "step_peak_bytes": mem["peak_bytes"],
            "step_temp_bytes": mem["temp_bytes"],
            "device_peak_bytes": device_peak_bytes(),
            "finite": float(metrics["finite"]),
            "mean_iterations": float(metrics["iterations"]),
        }

    def _params(self):
        return self.state.params, self.state.rest

    def _d(self, size: int) -> jax.Array:
        clean = jnp.asarray(images(self.batch, size, seed=2))
        return degrade(jax.random.PRNGKey(3), clean, self.blur, self.noise_std), clean

    def forward_and_vjp(self, iters: int, size: int) -> dict:
        """The forward solve alone and one VJP of T (batched and per sample)."""
        graphdef = self._graphdef(fixed_solver(self.config, iters), jfbjax.JFB())
        params, rest = self._params()
        d, clean = self._d(size)
        d = self.dp.shard_batch(np.asarray(d))
        fwd = make_eval_step(graphdef, self.dp).lower(params, rest, d).compile()
        fwd_mem = compiled_memory(fwd)
        t_fwd = time_call(fwd, params, rest, d, repeats=self.repeat)
        x_star, _ = fwd(params, rest, d)
        u = 2.0 * (x_star - clean) / x_star.size  # dl/dx* of the MSE loss

        def t_of(params, x, d):
            model = freeze_spectral_norm(nnx.merge(graphdef, params, rest))
            return model.step(x, d)

        @jax.jit
        def vjp_batch(params, x, d, u):
            return jax.vjp(lambda p: t_of(p, x, d), params)[1](u)[0]

        @jax.jit
        def vjp_vmap(params, x, d, u):
            model = freeze_spectral_norm(nnx.merge(graphdef, params, rest))
            gd, frozen, fr_rest = nnx.split(model, nnx.Param, ...)

            def one(x, d, u):
                step = lambda p: nnx.merge(gd, p, fr_rest).step(x, d)
                return jax.vjp(step, frozen)[1](u)[0]

            per_sample = jax.vmap(one)(x, d, u)
            return jax.tree.map(lambda g: jnp.sum(g, axis=0), per_sample)

        t_vb = time_call(vjp_batch, params, x_star, d, u, repeats=self.repeat)
        t_vv = time_call(vjp_vmap, params, x_star, d, u, repeats=self.repeat)
        return {
            "fwd_ms": 1e3 * t_fwd["median_s"],
            "fwd_peak_bytes": fwd_mem["peak_bytes"],
            "vjp_ms": 1e3 * t_vb["median_s"],
            "vjp_vmap_ms": 1e3 * t_vv["median_s"],
        }

    def adjoint_iterations(self, iters: int, size: int, solver=None) -> float | None:
        """Mean iterations of IFT's Anderson adjoint solve at this point (a host callback)."""
        found = []
        mode = backward_mode("ift_anderson", self.config)
        solver = solver or fixed_solver(self.config, iters)
        params, rest = self._params()
        graphdef = self._graphdef(solver, mode)
        d, clean = self._d(size)

        def loss(params):
            model = freeze_spectral_norm(nnx.merge(graphdef, params, rest))
            gd, p, r = nnx.split(model, nnx.Param, ...)

            def T(x, p, d):
                return nnx.merge(gd, p, r).step(x, d)

            def one(x0, d):
                return jfbjax.fixed_point(
                    T,
                    x0,
                    p,
                    d,
                    solver=solver,
                    backward=mode,
                    backward_callback=lambda info: found.append(info),
                )[0]

            x = jax.vmap(one)(model.start(d), d)
            return jnp.mean((x - clean) ** 2)

        jax.block_until_ready(jax.jit(jax.grad(loss))(params))
        if not found:
            return None
        return float(np.mean([np.mean(np.asarray(i.iterations)) for i in found]))
