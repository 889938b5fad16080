# Shortcuts for commands in README.md and the docs it links (ci: .ci/run, which the README names).
.PHONY: test ci serve figures bench-backends bench-serve

test:  # the test command
	pip install torch==2.13.0 && pip install -e '.[dev]' && ruff check . && python -m pytest

ci:  # what CI runs: Chromium for the browser test when it can be installed, then the test command
	.ci/run

serve:  # the bundled StyleGAN on http://127.0.0.1:8000
	ganserve serve

figures:  # the README's pictures of the bundled models
	python docs/make_figures.py --model stylegan-emoji64 --out docs/images --swd docs/images/stylegan-emoji64-swd.json
	python docs/make_figures.py --model progan-emoji64 --out docs/images --swd docs/images/progan-emoji64-swd.json

bench-backends:
	python benchmarks/backends.py --model stylegan-emoji64 --backends torch,onnxruntime,compile,tensorrt --batch-sizes 1,8,32,64

bench-serve:
	python benchmarks/serve_bench.py --backend torch --workers 2 --duration 12 --name serve_cpu_bundled
