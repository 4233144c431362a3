#!/usr/bin/env bash
# Builds an sdist and a wheel from this checkout and installs each into a fresh venv the way users do: the default,
# isolated `pip install` (CPU torch preinstalled, as users have it). Then a smoke test outside the checkout: the
# `cpu` backend is there and one loss matches the paper's formula (and, for the wheel installed with its `jax`
# extra, hyperloss.jax gives it too). Also checks that the isolated build fetched no
# torch of its own. Run by `make test` (CI); about 3-5 minutes on 2 cores.
#
# The CUDA kernels are left out here (HYPERLOSS_CUDA=OFF): compiling them for sm_90 takes minutes, `make ctest`
# compiles them already, and this machine has no GPU to run them.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKOUT=$PWD
PYTHON=${PYTHON:-python3}
TORCH=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT  # the venvs' background pip, if the build failed
export HYPERLOSS_CUDA=OFF PIP_DISABLE_PIP_VERSION_CHECK=1

# The two fresh venvs get their torch while the build runs, not after it.
fresh_venv() {
    "$PYTHON" -m venv "$WORK/venv-$1"
    "$WORK/venv-$1/bin/pip" install --quiet "$TORCH" numpy > "$WORK/venv-$1.log" 2>&1
}
echo "== fresh venvs for the sdist and the wheel, $TORCH (in the background)"
declare -A venv_job
for kind in sdist wheel; do
    fresh_venv "$kind" &
    venv_job[$kind]=$!
done

echo "== building the sdist and the wheel (python -m build, isolated)"
"$PYTHON" -m build --sdist --wheel --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
ls "$WORK/dist"
echo "   built in ${SECONDS}s"
for kind in sdist wheel; do
    wait "${venv_job[$kind]}" || { grep -v "^WARNING: Location" "$WORK/venv-$kind.log" | tail -40; exit 1; }
done

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
for kind in sdist wheel; do
    artifact=$(ls "$WORK"/dist/*.tar.gz)
    [ "$kind" = wheel ] && artifact="$(ls "$WORK"/dist/*.whl)[jax]"  # the jax extra: hyperloss.jax must work too
    echo "== $kind: pip install $(basename "$artifact") into its fresh venv (${SECONDS}s)"
    before=$("$WORK/venv-$kind/bin/python" -c "import torch; print(torch.__version__)")
    "$WORK/venv-$kind/bin/pip" install -v "$artifact" > "$WORK/install-$kind.log" 2>&1 \
        || { grep -v "^WARNING: Location" "$WORK/install-$kind.log" | tail -40; exit 1; }
    if grep -Ei "(Collecting|Downloading) torch" "$WORK/install-$kind.log"; then
        echo "FAIL: installing the $kind fetched a torch"; exit 1
    fi
    after=$("$WORK/venv-$kind/bin/python" -c "import torch; print(torch.__version__)")
    [ "$before" = "$after" ] || { echo "FAIL: torch changed from $before to $after"; exit 1; }
    (cd "$WORK" && CHECKOUT="$CHECKOUT" "$WORK/venv-$kind/bin/python" -c "$smoke")
done
echo "packaging check passed (${SECONDS}s)"
