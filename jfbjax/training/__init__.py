"""Training of the deblurring models: state, jitted steps, checkpoints, the loop.

Import explicitly (``from jfbjax.training import train_and_evaluate``); the
core ``jfbjax`` package does not import this one (it needs Flax, Optax, Orbax).
"""

from jfbjax.training.checkpoints import BEST_METRIC, Checkpoints
from jfbjax.training.evaluation import predict, score, score_model
from jfbjax.training.loop import (
    NonFiniteLossError,
    ResultsExistError,
    train_and_evaluate,
    train_graphdef,
)
from jfbjax.training.parallel import DataParallel
from jfbjax.training.restore import Run, blur_from_config, load_run
from jfbjax.training.steps import CountingJit, batch_psnr, make_eval_step, make_train_step, mse_loss
from jfbjax.training.train_state import (
    TrainState,
    create_train_state,
    make_optimizer,
    make_schedule,
    merge_model,
)

__all__ = [
    "BEST_METRIC",
    "Checkpoints",
    "CountingJit",
    "DataParallel",
    "NonFiniteLossError",
    "ResultsExistError",
    "Run",
    "TrainState",
    "batch_psnr",
    "blur_from_config",
    "create_train_state",
    "load_run",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "merge_model",
    "mse_loss",
    "predict",
    "score",
    "score_model",
    "train_and_evaluate",
    "train_graphdef",
]
