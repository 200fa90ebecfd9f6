"""The published-model format that training writes and the service reads.

Both ``training`` and ``app`` import this package; it imports neither of them, and never
torch. It holds the ONNX contract (``model``), the OOD calibration (``ood``), the drift
reference (``drift``), the repository layout (``layout``), the ONNX Runtime session options
(``onnxrt``), atomic file writes (``files``) and the checks every value read from a model
file passes, with ``ContractError`` (``checks``).
"""
