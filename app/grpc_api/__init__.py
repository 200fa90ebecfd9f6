"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), served in the
same process as HTTP and through the same data plane (app/dataplane.py)."""
