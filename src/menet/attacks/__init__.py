"""Attacks on models that take [0, 1] images."""

from menet.attacks.pgd import pgd_linf

__all__ = ["pgd_linf"]
