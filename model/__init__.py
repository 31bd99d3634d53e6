"""The produce recognizer: the runtime the stall imports (recognizer, preprocessing, gallery,
unknown flag, refit, evaluation; numpy, OpenCV and onnxruntime) and, in ``model.training``,
training and ONNX export (torch), which the runtime never imports.

Exception tree::

    ModelError              root of everything this package raises
     +-- ModelFileError     the model file or its metadata is missing or corrupt
     +-- ImageError         an image that cannot be read (the message names the file)
     +-- GalleryError       an enrollment gallery that cannot be read or written
     +-- RoiError           a plate region outside 0..1 (model.preprocess; also a ValueError)
     +-- DatasetError       a training folder that cannot be read (model.data)
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of all model errors."""


class ModelFileError(ModelError):
    """The model file or its metadata is missing or corrupt."""


class ImageError(ModelError):
    """An image that cannot be decoded."""


class GalleryError(ModelError):
    """An enrollment gallery that cannot be read or written."""
