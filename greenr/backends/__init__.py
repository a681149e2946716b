"""Inference backends behind one interface (torch, onnxruntime, openvino); torch-free to import."""
