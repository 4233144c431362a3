# hyperloss: `make test` (environment, build, lint, all tests) and `make bench` (the benchmark on this device).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deps-installed
# The build's inputs for the rebuild check (CMakeLists.txt alone lists the sources; the Triton files are those the
# ahead-of-time kernels are generated from, CMakeLists.txt's DEPENDS of the generator).
EXT_SOURCES := $(shell find csrc -type f) CMakeLists.txt pyproject.toml hyperloss/_version.py tools/triton_aot.py \
  $(addprefix hyperloss/triton/,uniform.py inspect.py _runtime.py _prepare.py)
# The CUDA kernels are built where a GPU driver is present (override: make build HYPERLOSS_CUDA=ON); elsewhere they
# cannot run, and `make ctest` still compiles them (and checks them on a GPU).
HYPERLOSS_CUDA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),ON,OFF)
export HYPERLOSS_CUDA

.PHONY: test bench build lint pytest ctest aot-check package-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0 triton pytest pytest-xdist hypothesis pytest-benchmark scikit-build-core ninja \
	  build ruff matplotlib numpy jax jaxlib scikit-learn torchmetrics tqdm
	touch $@

# An editable install: Python from the checkout, the C libraries built by CMake (build/<wheel tag>, incremental).
# Without build isolation so that jax's headers are found and the JAX FFI handlers built.
build: $(STAMP) hyperloss/.build-stamp
hyperloss/.build-stamp: $(EXT_SOURCES) $(STAMP)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check hyperloss tests bench
	$(VENV)/bin/ruff format --check hyperloss tests bench

# The Triton kernels run on the CPU only under TRITON_INTERPRET=1, which must be set before Python starts (the
# second pass: the Triton modules, and the weighted-loss tests' "triton" cases).
# One pytest-xdist worker per core (PYTEST_WORKERS=0: none). The first pass keeps each module on one worker
# (loadscope; loadgroup's marks are lost with pytest 9.2, pytest-xdist issue #1386): a module-scoped fixture (the
# sm_90 compilations, the ahead-of-time generator's output) then runs once, not once per worker. Every worker keeps
# torch's default thread count (the thread-count tests compare it with one thread); passive OpenMP waits keep a
# worker's idle threads from spinning on the cores the other one needs (7x slower tests/test_uniform.py without).
PYTEST_WORKERS ?= logical
PYTEST_ENV := OMP_WAIT_POLICY=passive
pytest: build
	$(PYTEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope tests bench
	$(PYTEST_ENV) TRITON_INTERPRET=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) tests/test_triton.py tests/test_triton_lean.py \
	  tests/test_weights.py tests/test_weights_triton_hostile.py tests/test_align.py::test_float32_rows_at_extreme_scales \
	  tests/test_align.py::test_float32_loss_beyond_range_is_inf tests/test_uniform.py::test_an_outlier_does_not_move_the_center \
	  -k triton

# The C library: build (CUDA kernels too where nvcc is found, with the Triton kernels compiled ahead of time as
# every CUDA build has them by default), C++ tests, then install it and build a separate program against it with
# find_package(hyperloss). The ahead-of-time set is cut to what CI can afford (float16, D <= 64, one segment length:
# 26 kernels, ~1 min of CPU, against ~12 min for the default 287) and its C plans are replayed with the Triton
# interpreter (tests/test_aot_replay.py); `make aot-check` covers every width.
CTEST_AOT := -DHYPERLOSS_TRITON_AOT=AUTO -DHYPERLOSS_AOT_PYTHON=$(CURDIR)/$(PY) -DHYPERLOSS_AOT_DTYPES=fp16 \
  -DHYPERLOSS_AOT_D=64 -DHYPERLOSS_AOT_SEGMENT_COLS=1024
ctest: $(STAMP)
	cmake -S . -B build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release $(CTEST_AOT) \
	  -DHYPERLOSS_JAX_INCLUDE=$$($(PY) -c "import jax.ffi; print(jax.ffi.include_dir())" 2>/dev/null) > /dev/null
	cmake --build build-cmake
	cd build-cmake && ctest --output-on-failure
	if [ -x build-cmake/test_cuda ] && [ ! -x build-cmake/test_aot ]; then \
	  echo "a CUDA build without the ahead-of-time kernels: see CMake's warning"; exit 1; fi
	if [ -x build-cmake/test_aot ]; then \
	  TRITON_INTERPRET=1 HYPERLOSS_AOT_BUILD=build-cmake $(PY) -m pytest -q -p no:cacheprovider tests/test_aot_replay.py; fi
	cmake --install build-cmake --prefix build-cmake/prefix > /dev/null
	cmake -S csrc/tests/consumer -B build-cmake/consumer -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/build-cmake/prefix > /dev/null
	cmake --build build-cmake/consumer
	LD_LIBRARY_PATH=$(CURDIR)/build-cmake/prefix/lib:$(CURDIR)/build-cmake/prefix/lib64 build-cmake/consumer/consumer

# Not part of `make test` (the generator compiles 146 kernels: ~6 min of CPU, cold): the C library with the Triton
# kernels compiled ahead of time for float16 at every width (csrc/cuda/aot/README.md), its ctest, and its C plans
# replayed with the Triton interpreter on the CPU (tests/test_aot_replay.py, every case). Needs nvcc.
aot-check: $(STAMP)
	cmake -S . -B build-aot -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYPERLOSS_TRITON_AOT=ON \
	  -DHYPERLOSS_AOT_PYTHON=$(CURDIR)/$(PY) -DHYPERLOSS_AOT_DTYPES=fp16 > /dev/null
	cmake --build build-aot
	cd build-aot && ctest --output-on-failure -R "core|triton_aot"
	TRITON_INTERPRET=1 HYPERLOSS_AOT_BUILD=build-aot $(PY) -m pytest -q tests/test_aot_replay.py

# The sdist, the wheel built from it (both isolated, as pip builds them), the wheel installed into a fresh venv, a smoke test.
package-check: $(STAMP)
	PYTHON=$(PY) bash .ci/check_packaging.sh

test: build lint ctest pytest package-check

bench: build
	$(PY) -m hyperloss.bench

clean:
	rm -rf build build-cmake build-aot dist hyperloss/*.so hyperloss/.build-stamp *.egg-info
