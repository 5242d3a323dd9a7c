"""menet: ME-Net (Yang, Zhang, Katabi and Xu, ICML 2019) in PyTorch."""

__version__ = "0.1.0"
