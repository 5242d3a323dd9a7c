"""How images become matrices: RGB channels side by side ("concat") or one per channel."""

from __future__ import annotations

from torch import Tensor

LAYOUTS = ("concat", "separate")


def check_layout(layout: str) -> None:
    """Raise ValueError for an unknown layout, listing the valid ones."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def images_to_matrices(images: Tensor, layout: str = "concat") -> Tensor:
    """(N, C, H, W) images -> matrices: "concat" (N, H, C*W), "separate" (N, C, H, W)."""
    check_layout(layout)
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if layout == "separate":
        return images
    n, c, h, w = images.shape
    return images.permute(0, 2, 1, 3).reshape(n, h, c * w)


def matrices_to_images(matrices: Tensor, shape: tuple[int, ...], layout: str = "concat") -> Tensor:
    """Inverse of :func:`images_to_matrices` for images of the given (N, C, H, W) shape."""
    check_layout(layout)
    if layout == "separate":
        return matrices.reshape(shape)
    n, c, h, w = shape
    return matrices.reshape(n, h, c, w).permute(0, 2, 1, 3).contiguous()


def matrix_mask_shape(image_shape: tuple[int, ...], layout: str = "concat") -> tuple[int, ...]:
    """Shape of one keep-mask per image: (N, H, C*W) for "concat", (N, 1, H, W) for "separate".

    A "separate" mask is shared by the channels of an image (broadcast over C).
    """
    check_layout(layout)
    n, c, h, w = image_shape
    return (n, h, c * w) if layout == "concat" else (n, 1, h, w)
