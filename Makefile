# `make run` and `make test` work on a fresh machine with nothing but Python: they create .venv,
# install torch (the CPU build by default), this package with its C++ extension, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; override for a CUDA machine, e.g. TORCH_SPEC="torch>=2.4".
TORCH_SPEC ?= torch==2.13.0
CSRC := $(wildcard csrc/*.cpp csrc/*.h)
# verl's estimators (tests/test_integration_verl.py) without its GPU stack: verl itself with
# --no-deps, plus what `verl.trainer.ppo.core_algos` imports at module level
VERL_SPEC ?= verl>=0.9,<0.10
VERL_IMPORTS := ray tensordict omegaconf codetiming orjson
# every later install keeps the torch installed first (an unpinned one would be a CUDA build)
PIN := $(VENV)/torch-pin.txt

.PHONY: run test pytest ctest wheel-check aot bench gpu-check clean

$(VENV)/.ready: pyproject.toml setup.py $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip 23.2 cannot do an editable install of a torch extension without build isolation
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel ninja
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(PIN)
	$(PY) -m pip install -q -c $(PIN) --no-build-isolation -e ".[dev]"
	$(PY) -m pip install -q -c $(PIN) --no-deps "$(VERL_SPEC)"
	$(PY) -m pip install -q -c $(PIN) $(VERL_IMPORTS)
	$(PY) -c "import icrm_kernels._C" && echo "C++ extension built"
	$(PY) -c "import verl.trainer.ppo.core_algos" && echo "verl estimators importable"
	touch $@

run: $(VENV)/.ready
	$(PY) -m icrm_kernels run

test: pytest ctest wheel-check

# ICRM_REQUIRE_INTEGRATIONS=1: a missing integration library fails the run instead of skipping tests
pytest: $(VENV)/.ready
	ICRM_REQUIRE_INTEGRATIONS=1 $(PY) -m pytest -q tests

# The same csrc built with CMake against libtorch, and its C++ tests.
ctest: $(VENV)/.ready
	cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

# the wheel a user would install: built here, installed into a fresh venv with the CPU build of
# torch and without triton (not a dependency), then the self-check on its C++ kernels
WHEEL_VENV := build/wheel-venv
wheel-check: $(VENV)/.ready
	rm -rf build/wheel $(WHEEL_VENV)
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w build/wheel .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(cat $(PIN))" numpy
	$(WHEEL_VENV)/bin/python -m pip install -q -c $(PIN) build/wheel/icrm_kernels-*.whl
	cd build && ../$(WHEEL_VENV)/bin/python -c "import importlib.util as u; assert u.find_spec('triton') is None, 'triton was installed'; import icrm_kernels._C"
	cd build && ../$(WHEEL_VENV)/bin/icrm-kernels selfcheck --device cpu

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
