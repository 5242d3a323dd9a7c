"""menet: ME-Net (Yang, Zhang, Katabi and Xu, ICML 2019) in PyTorch.

The main entry points are re-exported here: the defense (``MatrixEstimation``, ``MENet``),
training (``fit``) and ``load_model`` to rebuild a trained, defended model from its run folder.
"""

from menet.defense import MatrixEstimation, MENet
from menet.training import fit, load_model

__all__ = ["MENet", "MatrixEstimation", "fit", "load_model"]
__version__ = "0.1.0"
