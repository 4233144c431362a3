#!/usr/bin/env bash
# Builds an sdist from this checkout, then the wheel from that sdist (`python -m build`: both isolated, as pip builds
# an sdist for users, so the sdist is complete and builds on its own), and installs the wheel with its `jax` extra
# into a fresh venv the way users do (CPU torch preinstalled, as users have it). Then a smoke test outside the
# checkout: the `cpu` backend is there, one loss matches the paper's formula, and hyperloss.jax gives it too. Also
# checks that neither the isolated build nor the install fetched a torch of its own. Run by `make test` (CI); about
# 2-3 minutes on 2 cores.
#
# The CUDA kernels are left out here (HYPERLOSS_CUDA=OFF): compiling them for sm_90 takes minutes, `make ctest`
# compiles them already, and this machine has no GPU to run them.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$PWD
PYTHON=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT  # the venv's background pip, if the build failed
export HYPERLOSS_CUDA=OFF PIP_DISABLE_PIP_VERSION_CHECK=1

# The fresh venv gets its torch while the build runs, not after it.
echo "== a fresh venv for the wheel, $TORCH (in the background)"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet "$TORCH" numpy > "$WORK/venv.log" 2>&1 &
venv_job=$!

echo "== building the sdist, then the wheel from it (python -m build, isolated)"
# -v: pip's own output in the isolated environments reaches the log (what the torch check below reads).
"$PYTHON" -m build -v --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
ls "$WORK/dist"
grep -q "Building wheel from sdist" "$WORK/build.log" || { echo "FAIL: the wheel was not built from the sdist"; exit 1; }
if grep -Ei "(Collecting|Downloading) torch|^ *- torch" "$WORK/build.log"; then
    echo "FAIL: the isolated build fetched a torch"; exit 1
fi
echo "   built in ${SECONDS}s"
wait "$venv_job" || { grep -v "^WARNING: Location" "$WORK/venv.log" | tail -40; exit 1; }

smoke='
import os, sys, torch, hyperloss
from hyperloss import reference
assert not hyperloss.__file__.startswith(os.environ["CHECKOUT"]), hyperloss.__file__
rows = {b.name: b for b in hyperloss.backends()}
assert rows["cpu"].available, rows["cpu"].reason
x = torch.nn.functional.normalize(torch.randn(300, 16, dtype=torch.float64), dim=1)
got, want = hyperloss.uniform_loss(x, 2.0, backend="cpu").item(), reference.paper_uniform_loss(x, 2.0).item()
assert abs(got - want) <= 1e-12 * abs(want), (got, want)
print("smoke test passed:", hyperloss.__version__, "torch", torch.__version__, "cpu isa", hyperloss.backends.native.cpu_isa())
try:
    import jax
except ImportError:
    sys.exit(0)
import hyperloss.jax as hj
jax_value = float(hj.uniform_loss(jax.numpy.asarray(x.float().numpy()), 2.0))
assert abs(jax_value - want) <= 1e-5 * abs(want), (jax_value, want)
print("hyperloss.jax works, through", hj.KERNEL_PATH)
'
artifact="$(ls "$WORK"/dist/*.whl)[jax]"  # the jax extra: hyperloss.jax must work too
echo "== pip install $(basename "$artifact") into the fresh venv (${SECONDS}s)"
before=$("$WORK/venv/bin/python" -c "import torch; print(torch.__version__)")
"$WORK/venv/bin/pip" install -v "$artifact" > "$WORK/install.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$WORK/install.log" | tail -40; exit 1; }
if grep -Ei "(Collecting|Downloading) torch" "$WORK/install.log"; then
    echo "FAIL: installing the wheel fetched a torch"; exit 1
fi
after=$("$WORK/venv/bin/python" -c "import torch; print(torch.__version__)")
[ "$before" = "$after" ] || { echo "FAIL: torch changed from $before to $after"; exit 1; }
(cd "$WORK" && CHECKOUT="$CHECKOUT" "$WORK/venv/bin/python" -c "$smoke")
echo "packaging check passed (${SECONDS}s)"
