"""Errors the trainer raises; each is an AutoRetouchError so the CLI translates them once."""

from __future__ import annotations

from plugin_server.errors import AutoRetouchError


class DataError(AutoRetouchError):
    """The data folder has no usable pairs, an unknown layout, or a split that is empty."""

    code = "bad_data"


class VggWeightsError(AutoRetouchError):
    """Perceptual loss is on but the VGG-19 weights file is missing or is not VGG-19."""

    code = "bad_vgg_weights"


class ResumeError(AutoRetouchError):
    """--resume found no checkpoint, or one trained with different hyperparameters."""

    code = "bad_resume"
