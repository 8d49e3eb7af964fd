"""Configuration presets for the deblurring experiments (ml_collections).

``get_config(preset)`` returns a fresh :class:`ml_collections.ConfigDict`:

* ``smoke``: a few seconds of everything end to end (tiny images, a 3-layer
  DnCNN, 20 steps); used by the tests.
* ``cpu`` (the default of ``python -m experiments.deblur_celeba``): the
  built-in photos at 32x32, a 6x32 spectrally normalised DnCNN in DE-GRAD
  with a symmetric smoothed-TV term, the step preconditioned with the TV's
  lagged diffusivity, and a CG start (chosen by ``experiments.ablation`` on
  the validation images), 250 steps of batch 16, scored also as an x8
  self-ensemble; under 10 minutes on two CPU cores.
* ``paper``: the setting of arXiv 2402.02065 and its public code: CelebA at
  128x128, Gaussian blur 5x5 with std 5, noise std 1e-2 on [-1, 1], a 17x64
  DnCNN with spectral normalisation (as in the paper's code, without its
  batch norm), batch 32, Adam at 1e-4, Anderson (m=5, ridge 1e-4, tol 1e-3,
  50 iterations), 100 epochs of 8000 images. Meant for a GPU.

Every field, with its meaning:

``data``: ``source`` (auto|builtin|tfds|folder), ``data_dir`` (CelebA
location, or None), ``image_size``, ``n_train`` / ``n_val`` / ``n_test``
(None: the source's defaults), ``builtin_set`` (scenes|legacy|scenes_plus: the built-in
set's training and validation photos, ``jfbjax.data.builtin``).
``blur``: ``kernel_size``, ``sigma`` (pixels), ``boundary`` (zero|circular).
``noise_std``: standard deviation of the Gaussian noise on the [-1, 1] scale.
``model``: ``kind`` (degrad|feedforward), ``depth`` and ``features`` of the
DnCNN regulariser, ``spectral_norm``, ``eta_init`` (initial step size of the
DE-GRAD map), ``learn_eta`` (train eta or keep it fixed), ``clamp`` (clip
the map's output to [-1, 1]), ``dtype`` (compute dtype of the DnCNN's
convolutions: float32 | bfloat16, mixed precision with float32 accumulation;
the first convolution, the solver state and norms stay float32),
``family`` (degrad | deprox: the map, ``jfbjax.models.DEGRAD`` /
``DEProx``), ``start`` (adjoint | cg: ``x0 = A^T d`` or ``start_iters`` CG
iterations on ``(A^T A + start_weight I) x = A^T d``), ``precond`` (``mu > 0``:
DE-GRAD's step preconditioned by ``~(A^T A + mu I)^{-1}``, ``precond_iters``
Chebyshev iterations, or 0 for the exact inverse by the eigendecomposition of
the separable blur (about one ``A^T A``); same fixed points, better
conditioned map; 0: the paper's map), ``precond_tv`` (with ``precond`` and
``tv_weight``: the preconditioner also holds the smoothed TV's
lagged-diffusivity operator at the iterate, ``~(A^T A + mu I + w L_x)^{-1}`` by
``precond_iters`` Chebyshev steps; same fixed points, a better contracting map),
``tikhonov`` (``lam``: DE-GRAD's regulariser becomes ``lam x + R(x)``, so the
untrained model is the Tikhonov solution; 0: the paper's map), ``tv_weight`` /
``tv_eps`` (``w``, ``eps``: R becomes ``w grad TV_eps(x) + R(x)``, a smoothed
total-variation gradient plus the learned correction; 0: the paper's map), ``pretrain_steps``
(denoiser pretraining of R before the equilibrium training, 0: none;
``jfbjax.training.pretrain``), ``pretrain_sigma`` (its noise std on [-1, 1]),
``pretrain_scale`` (R is trained to predict this times the noise),
``pretrain_lr``, ``equivariance`` (1 | 2 | 4 | 8: R averaged over that
subgroup of flips/rotations, the half turn, the rotations or all eight, so the
map is exactly equivariant to it; ``equivariance`` DnCNN calls per step),
``tv_equivariance`` (the same for the smoothed-TV term alone, whose forward
differences are not equivariant; cheap), ``inject`` (the DnCNN also reads
the measurement ``d``, stacked with the iterate: ``R(x, d)``, DE-GRAD / DE-Prox),
``regulariser`` (dncnn | convex_ridge: the learned ``R``; ``convex_ridge`` is
``jfbjax.models.ConvexRidge``, the gradient of a convex field-of-experts energy,
monotone by construction, with ``ridge_features`` filters of side ``ridge_kernel``),
``padding`` (zero | reflect: what the DnCNN's convolutions see beyond the image).
``contraction``: penalties on ``dT/dx`` at the training fixed points
(``jfbjax.training.contraction``): ``jac_weight`` (Hutchinson estimate of
``||J||_F^2 / n``), ``spectral_weight`` and ``target`` (``max(||J||_2 -
target, 0)^2`` by ``power_iters`` power steps), ``samples`` (images of each
batch they use), ``eval_iters`` (power steps of the contraction factor
reported at every evaluation on the test images, and at the final one on
the validation images), ``align_images``, ``align_cycles``,
``align_restart``, ``align_tol`` and ``align_forward_tol`` (test images,
GMRES restart cycles, Krylov vectors per cycle and tolerance of the IFT
adjoint, and the tolerance the forward solve is redone to, of the final
cos(JFB, IFT) report, :func:`jfbjax.training.contraction.gradient_alignment_report`;
0 images skips it).
``solver``: forward fixed-point solver: ``name`` (anderson|picard), ``m``
(Anderson memory), ``beta`` (mixing / damping), ``ridge`` (Anderson
regularisation), ``tol`` (relative residual), ``max_iter``,
``train_max_iter`` (the cap in training steps only, never above ``max_iter``;
0: ``max_iter``. A batch's
solves run in one vmapped loop until its slowest sample stops, so a few
training crops that converge slowly set the cost of every step they are in;
evaluation always uses ``max_iter``).
``backward``: ``name`` (jfb|ift|neumann|unrolled), ``k`` (Neumann terms),
``tol`` / ``max_iter`` / ``adjoint_solver`` (IFT's adjoint solve).
``optim``: ``lr`` (peak), ``schedule`` (cosine|constant), ``warmup`` (linear
warm-up steps), ``grad_clip`` (global norm; 0 disables), ``weight_decay``
(decoupled, AdamW; 0 gives plain Adam), ``loss`` (mse | psnr | charbonnier:
the mean squared error; the same with each image weighted by the inverse of
its own MSE, whose gradient is that of the mean per-image PSNR,
``jfbjax.training.steps.psnr_weighted_mse``; or the Charbonnier smoothed L1,
``jfbjax.training.steps.charbonnier_loss``).
``steps``, ``batch_size`` (global, divisible by the device count), ``seed``,
``log_every`` (steps between ``metrics.jsonl`` records), ``eval_every``
(steps between validation/test evaluations), ``checkpoint_every`` (steps
between "latest" checkpoints), ``eval_batch_size``, ``num_figure_images``,
``self_ensemble`` (also score the trained model averaged over the 8
flips/rotations of its input, 8 solves an image, on val and test, reported
beside the plain model: ``jfbjax.models.SelfEnsemble``; report only),
``tikhonov.weights`` (the grid of the weight ``w`` of ``||A x - d||^2 + w
||x||^2`` tuned on the validation images, for both classical solutions of
that problem: exact CG and the FFT (Wiener) form; called ``wiener.weights``
before, a spelling still accepted), ``tv.weights``
``tv.iters`` and ``tv.tol`` (the same for total variation, run to a relative-change
tolerance or the iteration cap; an empty grid skips TV).
"""

from __future__ import annotations

import ast
import warnings

import ml_collections
from ml_collections import config_dict

from jfbjax.training.records import RENAMED_FIELDS

__all__ = ["PRESETS", "apply_overrides", "compare_settings", "get_config"]

PRESETS = ("smoke", "cpu", "paper")


def _base() -> ml_collections.ConfigDict:
    """Fields shared by every preset, set to the paper's values where it has one."""
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.source = "auto"
    c.data.data_dir = config_dict.placeholder(str)
    c.data.image_size = 32
    c.data.n_train = config_dict.placeholder(int)
    c.data.n_val = config_dict.placeholder(int)
    c.data.n_test = config_dict.placeholder(int)
    c.data.builtin_set = "scenes"

    c.blur = ml_collections.ConfigDict()
    c.blur.kernel_size = 5
    c.blur.sigma = 5.0
    c.blur.boundary = "zero"
    c.noise_std = 1e-2

    c.model = ml_collections.ConfigDict()
    c.model.kind = "degrad"
    c.model.depth = 17
    c.model.features = 64
    c.model.spectral_norm = False
    c.model.eta_init = 1.0
    c.model.learn_eta = True
    c.model.clamp = False
    c.model.dtype = "float32"
    c.model.family = "degrad"
    c.model.start = "adjoint"
    c.model.start_iters = 60
    c.model.start_weight = 0.01
    c.model.precond = 0.0
    c.model.precond_iters = 10
    c.model.tikhonov = 0.0
    c.model.tv_weight = 0.0
    c.model.tv_eps = 0.1
    c.model.pretrain_steps = 0
    c.model.pretrain_sigma = 0.05
    c.model.pretrain_scale = 1.0
    c.model.pretrain_lr = 1e-3
    c.model.equivariance = 1
    c.model.tv_equivariance = 1
    c.model.inject = False
    c.model.precond_tv = False
    c.model.regulariser = "dncnn"
    c.model.ridge_features = 32
    c.model.ridge_kernel = 5
    c.model.padding = "zero"

    c.contraction = ml_collections.ConfigDict()
    c.contraction.jac_weight = 0.0
    c.contraction.spectral_weight = 0.0
    c.contraction.target = 0.9
    c.contraction.power_iters = 3
    c.contraction.samples = 4
    c.contraction.eval_iters = 20
    c.contraction.align_images = 8
    c.contraction.align_cycles = 20
    c.contraction.align_restart = 60
    c.contraction.align_tol = 1e-4
    c.contraction.align_forward_tol = 1e-5

    c.solver = ml_collections.ConfigDict()
    c.solver.name = "anderson"
    c.solver.m = 5
    c.solver.beta = 1.0
    c.solver.ridge = 1e-4
    c.solver.tol = 1e-3
    c.solver.max_iter = 50
    c.solver.train_max_iter = 0

    c.backward = ml_collections.ConfigDict()
    c.backward.name = "jfb"
    c.backward.k = 5
    c.backward.tol = 1e-4
    c.backward.max_iter = 50
    c.backward.adjoint_solver = "anderson"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"
    c.optim.warmup = 0
    c.optim.grad_clip = 1.0
    c.optim.weight_decay = 0.0
    c.optim.loss = "mse"

    c.steps = 1000
    c.batch_size = 32
    c.eval_batch_size = 64
    c.seed = 0
    c.log_every = 10
    c.eval_every = 200
    c.checkpoint_every = 200
    c.num_figure_images = 4
    c.self_ensemble = False

    c.tikhonov = ml_collections.ConfigDict()
    c.tikhonov.weights = tuple(10.0**e for e in (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5))
    c.tv = ml_collections.ConfigDict()
    c.tv.weights = tuple(10.0**e for e in (-3.5, -3.0, -2.75, -2.5, -2.25, -2.0, -1.5))
    c.tv.iters = 3000
    c.tv.tol = 1e-5
    return c


def _smoke() -> ml_collections.ConfigDict:
    c = _base()
    c.data.source = "builtin"
    c.data.image_size = 16
    c.data.n_val = 4
    c.data.n_test = 4
    c.model.depth = 3
    c.model.features = 8
    c.model.eta_init = 1.0
    c.solver.max_iter = 15
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup = 2
    c.steps = 20
    c.batch_size = 4
    c.eval_batch_size = 4
    c.log_every = 5
    c.eval_every = 10
    c.checkpoint_every = 10
    c.num_figure_images = 2
    c.tv.weights = (1e-3, 1e-2)
    c.tv.iters = 200
    c.contraction.eval_iters = 10
    c.contraction.align_images = 2
    c.contraction.align_cycles = 3
    c.contraction.align_restart = 10
    c.self_ensemble = True
    return c


def _cpu() -> ml_collections.ConfigDict:
    c = _base()
    c.data.source = "auto"
    c.data.image_size = 32
    c.model.depth = 6
    c.model.features = 32
    # Spectral normalisation and a 50-iteration cap keep the solves converging
    # (measured: with 30 iterations and no normalisation the share of converged
    # solves fell to ~20% late in training and the test PSNR dropped by ~0.8 dB).
    c.model.spectral_norm = True
    # The map chosen by the ablation on the validation images
    # (python -m experiments.ablation, results/cpu_ablation, row tv_e02_lagged05):
    # a smoothed-TV term in R (the untrained model is a smoothed-TV deblurrer, the
    # DnCNN learns a correction), averaged with its half turn (forward and backward
    # differences: the term is then symmetric), a Tikhonov CG start, and the step
    # preconditioned by P(x) ~ (A^T A + 0.05 I + w L_x)^-1, L_x the TV's lagged
    # diffusivity at the iterate (5 Chebyshev steps around the exact (A^T A + 0.05
    # I)^-1): the same fixed points as the paper's map, whose stiff part (the TV in
    # flat regions) P(x) normalises, so a step of ~1.8 contracts (~12 Anderson
    # iterations) and the JFB gradient, -v^T eta P dR/dtheta, sees more of the
    # Jacobian than with P = (A^T A + 0.25 I)^-1.
    c.model.eta_init = 1.8
    c.model.tv_weight = 1e-3
    c.model.tv_eps = 0.02
    c.model.tv_equivariance = 2
    c.model.precond = 0.05
    c.model.precond_iters = 5
    c.model.precond_tv = True
    c.model.start = "cg"
    c.solver.max_iter = 50
    # Training solves stop after 30 iterations (row tv_e02_lagged05_tmi30): the
    # batch's solve runs until its slowest crop stops, and ~1.5% of training crops
    # took up to the 50 cap, setting the cost of most steps. Val PSNR unchanged
    # (34.94 against 34.93), 13% less time per step; evaluation still solves to 50.
    c.solver.train_max_iter = 30
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup = 20
    c.steps = 250
    c.batch_size = 16
    c.eval_batch_size = 40
    c.log_every = 10
    # One evaluation during training (each scores val and test and measures the
    # test images' contraction, ~35 s here) besides the final one.
    c.eval_every = 125
    c.checkpoint_every = 50
    # Also score the model averaged over the 8 flips/rotations of its input.
    c.self_ensemble = True
    return c


def _paper() -> ml_collections.ConfigDict:
    c = _base()
    c.data.source = "auto"
    c.data.image_size = 128
    # The paper's split: images 1-8000 train (the last 256 of them held out
    # here for validation), 8001-10000 test; None = the source's defaults.
    c.model.depth = 17
    c.model.features = 64
    c.model.spectral_norm = True  # the paper's code normalises every convolution
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"
    c.batch_size = 32
    c.steps = 100 * 8000 // 32  # the paper's 100 epochs of 8000 images, in updates
    c.eval_batch_size = 64
    c.log_every = 50
    c.eval_every = 2500
    c.checkpoint_every = 1000
    c.num_figure_images = 6
    return c


_BUILDERS = {"smoke": _smoke, "cpu": _cpu, "paper": _paper}


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    """A fresh config for ``preset`` (one of :data:`PRESETS`)."""
    if preset not in _BUILDERS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    config = _BUILDERS[preset]()
    config.preset = preset
    return config


def _parse_value(text: str):
    """A Python literal (number, bool, None, tuple, quoted string) or else the raw string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """Sets ``key=value`` overrides (dotted keys, e.g. ``optim.lr=3e-4``) in place.

    Values are parsed as Python literals where possible (``3e-4``, ``true``,
    ``none``, ``(1e-3, 1e-2)``), else kept as strings. Unknown keys and values
    of the wrong type raise ``ValueError`` naming the key; a renamed field's
    old spelling (:data:`~jfbjax.training.records.RENAMED_FIELDS`) sets the
    new field, with a ``DeprecationWarning``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in RENAMED_FIELDS:
            warnings.warn(
                f"config field {key!r} is now called {RENAMED_FIELDS[key]!r}",
                DeprecationWarning,
                stacklevel=2,
            )
            key = RENAMED_FIELDS[key]
        parent = config
        *path, leaf = key.split(".")
        for part in path:
            if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
                raise ValueError(f"unknown config section {part!r} in override {item!r}")
            parent = parent[part]
        if leaf not in parent:
            raise ValueError(f"unknown config field {key!r}; known here: {sorted(parent.keys())}")
        if isinstance(parent[leaf], ml_collections.ConfigDict):
            raise ValueError(f"{key!r} is a section, not a field; set one of its fields")
        value = _parse_value(text)
        if isinstance(value, list):
            value = tuple(value)
        try:
            parent[leaf] = value
        except TypeError as e:
            raise ValueError(f"bad value for {key!r}: {e}") from None
    return config


def compare_settings(preset: str) -> ml_collections.ConfigDict:
    """What the comparison adds to a preset's training config.

    ``seeds``: seeds of every learned method. ``unrolled_k``: iterations of
    the unrolled DE-GRAD (tol 0: exactly K, in training and at test time).
    ``neumann_k``: the Neumann orders trained. ``denoiser_noise``: noise
    levels (on [-1, 1]) of the PnP denoisers. ``pnp_steps``: PnP gradient
    steps tried on val. ``pnp_max_iter``: iteration cap of the PnP solve
    (the preset's solver otherwise). ``tv_weights`` / ``tv_iters`` /
    ``tv_tol``: TV weight grid, iteration cap and relative-change tolerance.
    ``eval_every``: evaluations during training (PSNR-vs-time curves).
    ``timing_repeats``: timed calls per measurement (median reported).
    ``init_scale``: the pretrained-R run (``jfb_pretrained``) multiplies the
    feed-forward deblurrer's ``R`` by it before training
    (:meth:`~jfbjax.models.DnCNN.scale_output`). With a preconditioner
    ``P <= 1 / mu`` and the step ``eta``, DE-GRAD moves by up to ``eta / mu``
    times ``R``'s output (36 for the ``cpu`` preset), and the feed-forward ``R``,
    a whole correction ``A^T d - x``, then diverges at the first step. 0 (the
    default): ``mu / eta_init`` of the run's own model config (``--set``
    overrides included), which makes the first move at most the feed-forward
    correction (1 without a preconditioner: the paper's transfer).
    """
    s = ml_collections.ConfigDict()
    s.seeds = (0, 1)
    s.unrolled_k = 10
    s.neumann_k = (2, 5)
    s.denoiser_noise = (0.02, 0.05, 0.1)
    s.pnp_steps = (0.5, 1.0, 1.5, 1.9)
    s.pnp_max_iter = 100
    s.tv_weights = tuple(10.0**e for e in (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0))
    s.tv_iters = 3000
    s.tv_tol = 1e-5
    s.eval_every = 50
    s.timing_repeats = 5
    s.init_scale = 0.0
    if preset == "smoke":
        s.seeds = (0, 1)
        s.unrolled_k = 4
        s.neumann_k = (2,)
        s.denoiser_noise = (0.05,)
        s.pnp_steps = (1.0, 1.9)
        s.pnp_max_iter = 15
        s.tv_weights = (1e-3, 1e-2)
        s.tv_iters = 200
        s.eval_every = 10
        s.timing_repeats = 2
    elif preset == "paper":
        s.eval_every = 2500
    return s
