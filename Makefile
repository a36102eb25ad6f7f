# `make run` and `make test` work on a fresh machine with nothing but Python: they create .venv,
# install torch (the CPU build by default), this package with its C++ extension, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; override for a CUDA machine, e.g. TORCH_SPEC="torch>=2.4".
TORCH_SPEC ?= torch==2.13.0
CSRC := $(wildcard csrc/*.cpp csrc/*.h)

.PHONY: run test pytest ctest aot bench gpu-check clean

$(VENV)/.ready: pyproject.toml setup.py $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip 23.2 cannot do an editable install of a torch extension without build isolation
	$(PY) -m pip install -q --upgrade pip "setuptools>=64" wheel ninja
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	$(PY) -c "import icrm_kernels._C" && echo "C++ extension built"
	touch $@

run: $(VENV)/.ready
	$(PY) -m icrm_kernels run

test: pytest ctest

pytest: $(VENV)/.ready
	$(PY) -m pytest -q tests

# The same csrc built with CMake against libtorch, and its C++ tests.
ctest: $(VENV)/.ready
	cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

aot: $(VENV)/.ready
	$(PY) -m icrm_kernels aot

bench: $(VENV)/.ready
	$(PY) -m icrm_kernels bench

# On a machine with an NVIDIA GPU and no internet (torch and triton already installed):
#   make gpu-check OUT=/some/folder
gpu-check:
	bash bench/gpu_check.sh "$(OUT)"

clean:
	rm -rf build dist *.egg-info icrm_kernels/_C*.so $(VENV)
