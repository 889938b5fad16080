"""The tensorrt backend: serialized TensorRT engines (ganserve.export.tensorrt builds them) run with the TensorRT
runtime on torch's CUDA stream."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ganserve.errors import BackendUnavailable, ExportError
from ganserve.export.artifacts import default_export_dir, is_current, is_export_dir, load_extras, read_manifest
from ganserve.export.onnx_export import DEFAULT_MAX_BATCH
from ganserve.export.tensorrt import (
    MAPPING_ENGINE,
    SYNTHESIS_ENGINE,
    engine_key,
    export_tensorrt,
    pack_noise,
    require_tensorrt,
)
from ganserve.imaging import to_uint8
from ganserve.inference.backend import Backend
from ganserve.inference.sampling import BatchInputs, batch_noise, batch_styles, batch_transform


class _Engine:
    """One deserialized engine run on torch tensors (TensorRT 10 name-based I/O) on torch's current stream."""

    def __init__(self, trt, path: Path):
        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} cannot load {path} (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        tensors = tuple(t.contiguous() for t in tensors)
        for name, t in zip(self.inputs, tensors):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        dtype = {self.trt.DataType.FLOAT: torch.float32, self.trt.DataType.HALF: torch.float16,
                 self.trt.DataType.UINT8: torch.uint8}[self.engine.get_tensor_dtype(self.output)]
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=dtype, device=tensors[0].device)
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(tensors[0].device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


class TensorRTBackend(Backend):
    """The engines of MODEL_DIR/tensorrt/KEY (built on first use, then cached), or of a given engine folder."""

    name = "tensorrt"

    def __init__(self, model_dir: Path, device: torch.device, precision: str = "fp16",
                 max_batch: int = DEFAULT_MAX_BATCH, build: bool = True):
        _, trt = require_tensorrt(device)
        model_dir = Path(model_dir)
        if is_export_dir(model_dir):
            folder = model_dir
        else:
            key = engine_key(device, trt.__version__, precision, max_batch)
            folder = default_export_dir(model_dir, "tensorrt", key=key)
            if not is_current(folder, model_dir, tensorrt_version=trt.__version__):
                if not build:
                    raise BackendUnavailable(f"no TensorRT engines of {model_dir} for this GPU yet (build them: "
                                             f"ganserve export --model {model_dir} --format tensorrt --fp16)")
                print(f"tensorrt: building engines for {model_dir} in {folder} (once per GPU and TensorRT version)",
                      file=sys.stderr)
                try:
                    export_tensorrt(model_dir, folder, max_batch, precision == "fp16", device,
                                    progress=lambda line: print(f"tensorrt: {line}", file=sys.stderr))
                except ExportError as e:
                    raise BackendUnavailable(str(e).splitlines()[0]) from None
        manifest = read_manifest(folder)
        if manifest.get("artifact") != "tensorrt":
            raise BackendUnavailable(f"{folder} holds a {manifest.get('artifact')} export, not TensorRT engines")
        if manifest.get("tensorrt_version") != trt.__version__:
            raise BackendUnavailable(f"{folder} was built with TensorRT {manifest.get('tensorrt_version')}, "
                                     f"this is {trt.__version__}: rebuild it with `ganserve export --format tensorrt`")
        super().__init__(folder, device)
        self.export_dir, self.manifest = folder, manifest
        self.precision = manifest["precision"]
        self.max_batch_size = int(manifest["max_batch"])
        self.w_avg, self.const_noise = load_extras(folder, device)
        self.noise_resolutions = [n.shape[-1] for n in self.const_noise]
        with torch.cuda.device(device):
            self.mapping = _Engine(trt, folder / MAPPING_ENGINE)
            self.synthesis = _Engine(trt, folder / SYNTHESIS_ENGINE)

    @torch.inference_mode()
    def styles(self, inputs: BatchInputs) -> torch.Tensor:
        return batch_styles(self.mapping, self.w_avg, inputs, self.device)

    @torch.inference_mode()
    def run(self, inputs: BatchInputs) -> torch.Tensor:
        ws = self.styles(inputs)
        if self.config.arch == "stylegan3":
            return to_uint8(self.synthesis(ws, batch_transform(inputs, self.device, explicit=True)))
        if not self.const_noise:
            return to_uint8(self.synthesis(ws))
        noise = batch_noise(inputs, self.const_noise, self.device)
        if noise is None:
            noise = [c.expand(len(ws), -1, -1, -1) for c in self.const_noise]
        return to_uint8(self.synthesis(ws, pack_noise(noise)))

    def describe(self) -> str:
        return f"{self.name} ({self.precision}, TensorRT {self.manifest.get('tensorrt_version')}) on {self.device}"
