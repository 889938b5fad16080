"""The onnxruntime backend: the exported mapping and synthesis graphs in ONNX Runtime sessions, CPU or CUDA provider.

Owns finding (or making) the ONNX export of a model, session options and providers, and CUDA I/O binding.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ganserve.devices import Device, cpu_cores
from ganserve.errors import BackendUnavailable, ExportError
from ganserve.export.artifacts import (
    EXPORTER_VERSION,
    MAPPING_FILE,
    SYNTHESIS_FILE,
    default_export_dir,
    is_current,
    is_export_dir,
    load_extras,
    read_manifest,
)
from ganserve.imaging import to_uint8
from ganserve.inference.backend import Backend
from ganserve.inference.sampling import BatchInputs, batch_noise, batch_styles, batch_transform

if TYPE_CHECKING:
    import torch

Array = np.ndarray  # on the CPU the sessions take and give numpy arrays, and no torch is imported


def find_onnx_export(model: Path, build: bool = True, progress=None, cached: bool = False) -> Path:
    """The ONNX folder for `model`: the folder itself if it is one, else a current export of the model's weights
    (MODEL/onnx, or the one in the per-user cache). When there is none: with build=False BackendUnavailable; else
    exported, next to the model, or with `cached` into the per-user cache (once per weights and exporter version;
    processes starting together export it once, the others wait for it)."""
    if is_export_dir(model):
        manifest = read_manifest(model)
        if manifest.get("artifact") != "onnx":
            raise BackendUnavailable(f"{model} holds a {manifest.get('artifact')} export, not an ONNX one")
        return model
    beside, in_cache = default_export_dir(model, "onnx"), default_export_dir(model, "onnx", cached=True)
    for candidate in dict.fromkeys((beside, in_cache)):
        if _current(candidate, model):
            return candidate
    if not build:
        raise BackendUnavailable(f"no current ONNX export of {model} (make one: ganserve export --model {model})")
    out = in_cache if cached else beside
    say = progress or (lambda line: print(f"onnxruntime: {line}", file=sys.stderr))
    try:
        with _export_lock(out):
            if _current(out, model):  # another process made it while this one waited
                return out
            say(f"exporting {model} to ONNX once, into {out}" + (" (the per-user cache)" if cached else ""))
            from ganserve.export.onnx_export import export_onnx

            export_onnx(model, out, progress=say)
    except OSError as e:
        raise BackendUnavailable(f"cannot write the ONNX export {out} ({e.strerror or e}); "
                                 "run `ganserve export --out DIR` and use DIR") from None
    except ExportError as e:
        raise BackendUnavailable(str(e).splitlines()[0]) from None
    return out


def _current(export_dir: Path, model: Path) -> bool:
    return is_current(export_dir, model, output="uint8", exporter_version=EXPORTER_VERSION)


@contextlib.contextmanager
def _export_lock(out: Path):
    """An exclusive lock beside `out` while it is being made (POSIX advisory locks; elsewhere none)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as f:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime sessions over the exported graphs; truncation and mixing run between them, in numpy on the CPU
    (no torch is imported: a process starts about a second sooner) and in torch on CUDA, with the same bits.

    `model_dir` is a model directory (its MODEL_DIR/onnx export is used, made if needed unless build=False) or an
    export folder. CPU sessions use every graph optimisation and one intra-op thread unless `threads` says more:
    with more threads than images in a batch, ONNX Runtime splits a convolution's output among them and the pieces
    round differently from whole images, so an image would depend on its batch. Parallelism on the CPU comes from
    processes instead (ganserve serve runs a worker per core).
    """

    name = "onnxruntime"

    def __init__(self, model_dir: Path, device: Device | torch.device | str, threads: int | None = None,
                 optimization: str = "all", build: bool = True, cached: bool = False):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
        self.ort = ort
        device = Device(device)
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDA provider here "
                                     "(install onnxruntime-gpu, or use --device cpu)")
        self.export_dir = find_onnx_export(Path(model_dir), build, cached=cached)
        super().__init__(self.export_dir, device)
        self.manifest = read_manifest(self.export_dir)
        self.max_batch_size = int(self.manifest["max_batch"])
        self.precision = self.manifest.get("precision", "fp32")
        if self.precision == "fp16" and device.type == "cpu":
            raise BackendUnavailable("this ONNX export is fp16, which is meant for GPU providers; export fp32 for CPU")
        self.float_output = self.manifest.get("output") == "float"
        self.noise_names: list[str] = list(self.manifest.get("noise_inputs", []))
        self.transform_name: str | None = self.manifest.get("transform_input")  # StyleGAN3's rotate/translate
        self.on_host = device.type == "cpu"
        self.w_avg, self.const_noise = load_extras(self.export_dir, None if self.on_host else device)
        self.noise_resolutions = [n.shape[-1] for n in self.const_noise]

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        opts.graph_optimization_level = levels[optimization]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or (1 if device.type == "cpu" else cpu_cores())
        opts.inter_op_num_threads = 1
        self.threads = opts.intra_op_num_threads
        if device.type == "cuda":
            import torch

            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
            cuda = {"device_id": self.device_id,
                    "user_compute_stream": str(torch.cuda.current_stream(self.device_id).cuda_stream)}
            providers: list = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.mapping = ort.InferenceSession(str(self.export_dir / MAPPING_FILE), opts, providers=providers)
            self.synthesis = ort.InferenceSession(str(self.export_dir / SYNTHESIS_FILE), opts, providers=providers)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendUnavailable(f"onnxruntime cannot load {self.export_dir}: {first}") from None
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self.synthesis.get_providers()[0] != wanted:
            running = self.synthesis.get_providers()
            raise BackendUnavailable(f"onnxruntime could not start {wanted} (it runs {running}); "
                                     "check the CUDA/cuDNN libraries that onnxruntime-gpu needs")
        self._const_cache: dict[int, list[Array | torch.Tensor]] = {}

    # -- graphs ----------------------------------------------------------------------------------------------
    def _run_mapping(self, z: Array | torch.Tensor, c: Array | torch.Tensor | None = None) -> Array | torch.Tensor:
        feeds = {"z": z} if c is None else {"z": z, "c": c}  # c: the one-hot classes of a conditional model
        if self.on_host:
            return self.mapping.run(None, feeds)[0]
        import torch

        return self._bind(self.mapping, feeds, "ws", (len(z), self.config.num_ws, self.config.w_dim), torch.float32)

    def _const(self, n: int) -> list[Array | torch.Tensor]:
        """The constant noise buffers repeated to n rows (kept per batch size: batch sizes are few)."""
        if n not in self._const_cache:
            if len(self._const_cache) > 16:
                self._const_cache.clear()
            self._const_cache[n] = [
                np.ascontiguousarray(np.broadcast_to(c, (n, *c.shape[1:]))) if self.on_host
                else c.expand(n, -1, -1, -1).contiguous() for c in self.const_noise
            ]
        return self._const_cache[n]

    def synthesize(self, ws: Array | torch.Tensor, noise: list | None = None,
                   transform: Array | torch.Tensor | None = None) -> Array | torch.Tensor:
        """The synthesis graph's own output: [N, H, W, C] uint8, or [N, C, H, W] float32 for an "float" export.
        On the CPU numpy arrays, or torch tensors for torch tensors; on CUDA torch tensors.

        `noise`: per-layer [N, 1, r, r] maps, or None for the constant buffers. `transform` (StyleGAN3): [N, 3, 3]
        input transforms, or None for none.
        """
        n, r, c = len(ws), self.config.resolution, self.config.img_channels
        feeds = {"ws": ws}
        if self.noise_names:
            feeds.update(zip(self.noise_names, noise if noise is not None else self._const(n)))
        if self.transform_name:
            if transform is None:  # the identity rows
                transform = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
                transform = transform if self.on_host else ws.new_tensor(transform)
            feeds[self.transform_name] = transform
        if self.on_host:
            if isinstance(ws, np.ndarray):
                return self.synthesis.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})[0]
            import torch

            arrays = {k: v if isinstance(v, np.ndarray) else v.contiguous().numpy() for k, v in feeds.items()}
            return torch.from_numpy(self.synthesis.run(None, arrays)[0])
        import torch

        shape, dtype = ((n, r, r, c), torch.uint8) if not self.float_output else ((n, c, r, r), torch.float32)
        return self._bind(self.synthesis, feeds, "images", shape, dtype)

    def _bind(self, session, feeds: dict[str, torch.Tensor], output: str, shape: tuple, dtype: torch.dtype):
        """Run a session on CUDA tensors in place: inputs and output are bound to torch memory (no host copies)."""
        import torch

        binding = session.io_binding()
        feeds = {k: v.contiguous() for k, v in feeds.items()}
        for name, t in feeds.items():
            binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(t.shape), t.data_ptr())
        out = torch.empty(shape, dtype=dtype, device=self.device)
        np_dtype = np.uint8 if dtype == torch.uint8 else np.float32
        binding.bind_output(output, "cuda", self.device_id, np_dtype, shape, out.data_ptr())
        torch.cuda.current_stream(self.device_id).synchronize()  # inputs written before ORT reads them
        session.run_with_iobinding(binding)
        return out

    def _images(self, inputs: BatchInputs) -> Array | torch.Tensor:
        device = None if self.on_host else self.device
        images = self.synthesize(batch_styles(self._run_mapping, self.w_avg, inputs, device),
                                 batch_noise(inputs, self.const_noise, device), batch_transform(inputs, device))
        return to_uint8(images) if self.float_output else images

    # -- Backend -------------------------------------------------------------------------------------------------
    def styles_host(self, inputs: BatchInputs) -> np.ndarray:
        if self.on_host:
            return batch_styles(self._run_mapping, self.w_avg, inputs, None)
        return super().styles_host(inputs)

    def run_host(self, inputs: BatchInputs) -> np.ndarray:
        return self._images(inputs) if self.on_host else super().run_host(inputs)

    def styles(self, inputs: BatchInputs) -> torch.Tensor:
        """ws [N, num_ws, w_dim] of a batch: the mapping graph, then truncation and mixing as everywhere else."""
        import torch

        if self.on_host:
            return torch.from_numpy(self.styles_host(inputs))
        with torch.inference_mode():
            return batch_styles(self._run_mapping, self.w_avg, inputs, self.device)

    def run(self, inputs: BatchInputs) -> torch.Tensor:
        import torch

        if self.on_host:
            return torch.from_numpy(self.run_host(inputs))
        with torch.inference_mode():
            return self._images(inputs)

    def describe(self) -> str:
        provider = self.synthesis.get_providers()[0].replace("ExecutionProvider", "")
        extra = f", {self.threads} threads" if self.device.type == "cpu" else ""
        return f"{self.name} {self.ort.__version__} ({provider}{extra}, {self.precision}) on {self.device}"
