"""Clean images for the deblurring experiments.

All sources hand out float32 numpy arrays of layout (N, H, W, 3) in [-1, 1]
through one :class:`DeblurData` record; :func:`load_data` picks the source.

* ``builtin``: photographs bundled with scikit-image (offline, no download).
* ``tfds``: CelebA through tensorflow-datasets (optional ``jfbjax[celeba]``
  extra; TensorFlow is imported only when this source is used).
* ``folder``: an ``img_align_celeba`` folder with the paper's split.
"""

from jfbjax.data.common import ArrayBatcher, DeblurData
from jfbjax.data.loader import (
    BUILTIN_NOTICE,
    SOURCES,
    detect_celeba,
    load_data,
    load_data_from_config,
)

__all__ = [
    "BUILTIN_NOTICE",
    "SOURCES",
    "ArrayBatcher",
    "DeblurData",
    "detect_celeba",
    "load_data",
    "load_data_from_config",
]
