"""The runtime: the model repository (folder scan, loading, versions), ONNX Runtime sessions
and dynamic batching. Nothing here knows HTTP."""
