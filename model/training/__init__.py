"""Training the recognizer: torch, the teachers and the distilled student, ONNX and int8 export.

Nothing the stall runs imports this package (tests/model/test_runtime_imports.py):
the runtime (``model.recognizer``, ``model.preprocess``, ``model.gallery``,
``model.unknown``, ``model.refit``, ``model.evaluate``) needs numpy, OpenCV
and onnxruntime only.  Modules here import the ``train`` extra (torch, tqdm,
onnx, matplotlib) and may import the runtime modules, never the other way.
"""
