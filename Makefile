# peftc: the two README commands are `make demo` and `make test`; both install what they need.
PYTHON ?= python3
export OPENBLAS_NUM_THREADS ?= 2

.PHONY: deps build demo test asan bench format-check clean

deps:
	PYTHON=$(PYTHON) bash scripts/install_deps.sh

# the extension against the scipy-openblas32 wheel's OpenBLAS; PEFTC_BLAS=system make build for the system's
build: deps
	$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-build-isolation -e .

demo: build
	$(PYTHON) -m peftc.demo

test: build
	$(PYTHON) -m pytest -q --doctest-modules peftc tests --nbmake notebooks

# AddressSanitizer + UndefinedBehaviorSanitizer build of the extension, then the suite under it.
# torch-backed parity tests are skipped there (torch's own allocator does not run under ASan); so are the
# install tests, which build copies of their own without the sanitizers.
asan: deps
	PEFTC_SANITIZE=1 $(PYTHON) setup.py -q build_ext --inplace --force
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PEFTC_NO_TORCH=1 $(PYTHON) -m pytest -q -p no:cacheprovider --ignore=tests/test_fresh_install.py tests; \
	  status=$$?; \
	  $(PYTHON) setup.py -q build_ext --inplace --force; exit $$status

bench: build
	$(PYTHON) benchmarks/bench_lora_layer.py

# The C sources against .clang-format (not run by CI: formatting differs between clang-format versions;
# the tree is formatted with Debian 12's clang-format 14).
CLANG_FORMAT ?= clang-format
format-check:
	@command -v $(CLANG_FORMAT) >/dev/null 2>&1 || \
	  { echo "format-check needs clang-format; on Debian/Ubuntu: apt-get install clang-format" >&2; exit 1; }
	$(CLANG_FORMAT) --dry-run --Werror csrc/*.c csrc/*.h csrc/python/*.c csrc/python/*.h

clean:
	rm -rf build peftc/*.so peftc/_distributor_init.py *.egg-info
