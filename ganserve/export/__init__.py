"""Graph export and artifacts: ONNX graphs (onnx_export.py), TensorRT engines (tensorrt.py), and the artifact folders
with their manifests (artifacts.py). Running them is ganserve.inference's job."""
