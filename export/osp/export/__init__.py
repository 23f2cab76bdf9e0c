"""osp.export: ONNX, TensorRT and torch.compile exports of osp models, and the runtime engines."""
