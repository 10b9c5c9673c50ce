#!/usr/bin/env bash
# Installs splatkern the ways a user would, each into a throwaway venv, and prints PASS/FAIL per path:
#   1   pip install .                        (default build isolation: must build against the installed torch)
#   1n  pip install . without torch          (must stop at once with one clear message)
#   2   pip install --no-build-isolation .   and   -e .   (in path 1's venv and tree, as a developer would)
#   3   pip wheel --no-build-isolation .     then that wheel in a fresh venv with the same torch; and the
#       sdist's contents (sources and headers, no build record)
#   4   the wheel without extras: --help, doctor, check work; train names the extra and exits 2
#   5   the same wheel beside another torch minor version: imports, runs the reference, says why
# Each venv starts from a template venv with torch installed by pip (made once, then reused): a new venv
# gets the template's packages as hard links, which pip sees as installed, without copying gigabytes.
# Environment: PYTHON (python3), TORCH_VERSION (2.14.1), OTHER_TORCH_VERSION (2.13.0, empty to skip path 5),
# INSTALL_PATHS_DIR (/tmp/splatkern-install-paths), and the build's own: SPLATKERN_CUDA defaults to 0 here,
# since compiling the CUDA kernels is .ci/setup's check and takes most of a build's time; set it to
# "auto" to build them on every path too.
set -uo pipefail
export SPLATKERN_CUDA="${SPLATKERN_CUDA:-0}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH="${TORCH_VERSION:-2.14.1}"
OTHER_TORCH="${OTHER_TORCH_VERSION-2.13.0}"
ROOT="${INSTALL_PATHS_DIR:-/tmp/splatkern-install-paths}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
mkdir -p "$ROOT"
LOG="$ROOT/logs"
rm -rf "$LOG" "$ROOT/wheels" "$ROOT/venvs" "$ROOT/src"
mkdir -p "$LOG" "$ROOT/wheels" "$ROOT/venvs" "$ROOT/src"
START=$SECONDS
RESULTS=()

say() { printf '%s\n' "$*"; }

# template VERSION: a venv with torch==VERSION from pip, and ninja + wheel for --no-build-isolation builds
template() {
  local dir="$ROOT/template-$1"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    local t=$SECONDS
    "$PY" -m venv "$dir" && "$dir/bin/python" -m pip install -q "torch==$1" ninja wheel "setuptools>=64" numpy \
      >"$LOG/template-$1.log" 2>&1 || { say "cannot make the torch $1 template: see $LOG/template-$1.log"; return 1; }
    touch "$dir/.complete"
    say "(template venv with torch $1 installed by pip in $((SECONDS - t)) s)"
  fi
}

# fresh_venv NAME [TORCH_VERSION]: a new venv; with a version, holding the template's packages (pip included)
fresh_venv() {
  local venv="$ROOT/venvs/$1"
  if [ -z "${2:-}" ]; then "$PY" -m venv "$venv"; return; fi
  "$PY" -m venv --without-pip "$venv" || return 1
  local site; site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  cp -al "$ROOT/template-$2/lib/$(basename "$(dirname "$site")")/site-packages/." "$site/"
}

pip() { local venv="$1"; shift; "$venv/bin/python" -m pip "$@"; }

# source_copy NAME: the working tree as git sees it (tracked and untracked, not ignored), without build outputs
source_copy() {
  local dst="$ROOT/src/$1"
  mkdir -p "$dst"
  (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) |
    tar -xf - -C "$dst"
}

# smoke VENV: import, available_backends, one forward+backward on CPU against the reference
smoke() {
  (cd "$ROOT" && "$1/bin/python" - <<'PY'
import torch
import splatkern
from splatkern import _extension

assert "cpu" in splatkern.available_backends("cpu"), (splatkern.available_backends("cpu"), _extension.LOAD_ERROR)
info = _extension.BUILD_INFO
assert info.TORCH_VERSION == torch.__version__, (info.TORCH_VERSION, torch.__version__)
gen = torch.Generator().manual_seed(0)
means = torch.rand(2, 6, 2, generator=gen, dtype=torch.float64) * 10
sigmas = torch.rand(2, 6, generator=gen, dtype=torch.float64) + 0.5
amps = torch.rand(2, 6, generator=gen, dtype=torch.float64) + 0.1
weights = torch.rand(2, 9, 11, generator=gen, dtype=torch.float64)
results = {}
for backend in ("cpu", "reference"):
    inputs = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
    image = splatkern.splat_render(*inputs, height=9, width=11, backend=backend)
    (image * weights).sum().backward()
    results[backend] = (image.detach(), *(t.grad for t in inputs))
for got, want in zip(results["cpu"], results["reference"]):
    torch.testing.assert_close(got, want)
print(f"smoke: {splatkern.__file__}: torch {torch.__version__}, built for {info.TORCH_VERSION}, "
      f"backends {splatkern.available_backends('cpu')}, cpu forward+backward match the reference")
PY
  )
}

# record NAME STATUS: remember a path's result
record() { RESULTS+=("$2 $1"); say "$2 $1 ($((SECONDS - START)) s so far)"; }

# run_path FUNCTION DESCRIPTION: runs a path, its output in $LOG/FUNCTION.log
run_path() {
  local t=$SECONDS
  if "$1" >"$LOG/$1.log" 2>&1; then record "$2 [$((SECONDS - t)) s]" PASS; else
    record "$2 [$((SECONDS - t)) s] (log: $LOG/$1.log)" FAIL; tail -n 15 "$LOG/$1.log" | sed 's/^/    /'; fi
}

path1_isolated() {
  fresh_venv dev "$TORCH" && source_copy dev || return 1
  local venv="$ROOT/venvs/dev"
  (cd "$ROOT/src/dev" && pip "$venv" install -v .) >"$LOG/p1-pip.log" 2>&1 ||
    { tail -n 30 "$LOG/p1-pip.log"; return 1; }
  smoke "$venv" || return 1
  # The compiler saw the target venv's torch headers, not those of a torch in the isolated build env.
  grep -l -- "-I$venv/lib/python[0-9.]*/site-packages/torch/include" "$ROOT"/src/dev/build/*/build.ninja ||
    { echo "the build did not use $venv's torch headers"; return 1; }
  if grep -iE "(collecting|downloading|installing).*torch" "$LOG/p1-pip.log"; then
    echo "pip fetched a torch for the build"; return 1
  fi
  echo "no torch fetched into the build environment"
}

path1_without_torch() {
  fresh_venv p1n && source_copy p1n || return 1
  local t=$SECONDS out
  out="$(cd "$ROOT/src/p1n" && pip "$ROOT/venvs/p1n" install . 2>&1)" && { echo "installed without torch?"; return 1; }
  echo "$out" | tail -n 12
  echo "stopped after $((SECONDS - t)) s"
  echo "$out" | grep -q "splatkern needs torch installed before it is built" || return 1
  echo "$out" | grep -q "pip install --no-build-isolation" || return 1
}

path2_no_isolation_and_editable() {
  local venv="$ROOT/venvs/dev"
  pip "$venv" uninstall -q -y splatkern || return 1
  (cd "$ROOT/src/dev" && pip "$venv" install -q --no-build-isolation .) || return 1
  smoke "$venv" | grep "venvs/dev/lib/" || return 1
  pip "$venv" uninstall -q -y splatkern || return 1
  (cd "$ROOT/src/dev" && pip "$venv" install -q --no-build-isolation -e .) || return 1
  smoke "$venv" | grep "src/dev/splatkern" || return 1
}

path3_wheel() {
  local venv="$ROOT/venvs/dev" wheel sdist listing
  (cd "$ROOT/src/dev" && pip "$venv" wheel -q --no-build-isolation --no-deps -w "$ROOT/wheels" .) || return 1
  wheel="$(ls "$ROOT"/wheels/splatkern-*.whl)" && echo "wheel: $wheel" || return 1
  "$venv/bin/python" -m zipfile -l "$wheel" | grep -E "_C.*\.so|_build_info.py" || return 1
  (cd "$ROOT/src/dev" && "$venv/bin/python" setup.py -q sdist -d "$ROOT/wheels" 2>/dev/null) || return 1
  sdist="$(ls "$ROOT"/wheels/splatkern-*.tar.gz)" && echo "sdist: $sdist" || return 1
  listing="$(tar -tzf "$sdist")" || return 1
  grep -q "csrc/splat_cuda_kernels.cuh" <<<"$listing" && grep -q "splatkern/facts.py" <<<"$listing" &&
    ! grep -E "_build_info.py|\.so$" <<<"$listing" ||
    { echo "the sdist lacks a source or holds a build output"; return 1; }
  fresh_venv p3 "$TORCH" || return 1
  pip "$ROOT/venvs/p3" install -q "$wheel" || return 1
  smoke "$ROOT/venvs/p3" | grep "venvs/p3/lib/" || return 1
}

path4_base_install() {
  local bin="$ROOT/venvs/p3/bin" out
  for extra in tqdm sklearn torchvision PIL matplotlib; do
    "$bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$extra') is not None)" ||
      { echo "$extra is installed: not a base install"; return 1; }
  done
  (cd "$ROOT" && "$bin/splatkern" --help) | grep "doctor" >/dev/null || return 1
  (cd "$ROOT" && "$bin/splatkern" doctor) | tee /dev/stderr | grep "splatkern check" >/dev/null || return 1
  (cd "$ROOT" && "$bin/splatkern" check --quick) || return 1
  out="$(cd "$ROOT" && "$bin/splatkern" train --epochs 1 2>&1)"; local code=$?
  echo "splatkern train -> exit $code: $out"
  [ "$code" = 2 ] && echo "$out" | grep -q "pip install 'splatkern\[train\]'" && ! echo "$out" | grep -q Traceback
}

path5_other_torch() {
  local venv="$ROOT/venvs/p5" out
  fresh_venv p5 "$OTHER_TORCH" || return 1
  pip "$venv" install -q --no-deps "$(ls "$ROOT"/wheels/splatkern-*.whl)" || return 1
  out="$(cd "$ROOT" && "$venv/bin/python" -W always - 2>&1 <<'PY'
import torch
import splatkern
from splatkern import _extension

print("torch", torch.__version__, "backends", splatkern.available_backends("cpu"))
assert splatkern.available_backends("cpu") == ["reference"]
assert _extension.BUILD_INFO.TORCH_VERSION in _extension.LOAD_ERROR and torch.__version__ in _extension.LOAD_ERROR
means = torch.rand(1, 4, 2, requires_grad=True)
image = splatkern.splat_render(means * 8, torch.ones(1, 4), height=8, width=8)
image.sum().backward()
assert means.grad is not None
try:
    splatkern.splat_render(means, torch.ones(1, 4), height=8, width=8, backend="cpu")
except ValueError as error:
    print("backend='cpu':", error)
PY
)" || { echo "$out"; return 1; }
  echo "$out"
  echo "$out" | grep -q "falls back to 'reference'" || return 1
  out="$(cd "$ROOT" && "$venv/bin/splatkern" doctor)" || return 1
  echo "$out"
  echo "$out" | grep -q "was built for torch $TORCH" || return 1
}

template "$TORCH" || exit 1
[ -z "$OTHER_TORCH" ] || template "$OTHER_TORCH" || exit 1
run_path path1_isolated "1 pip install . (build isolation)"
run_path path1_without_torch "1n pip install . without torch"
run_path path2_no_isolation_and_editable "2 pip install --no-build-isolation . and -e ."
run_path path3_wheel "3 pip wheel --no-build-isolation . into a fresh venv"
run_path path4_base_install "4 base install without extras"
[ -z "$OTHER_TORCH" ] || run_path path5_other_torch "5 torch $TORCH wheel beside torch $OTHER_TORCH"
say "--- install paths, $((SECONDS - START)) s in all (logs in $LOG)"
printf '%s\n' "${RESULTS[@]}"
! printf '%s\n' "${RESULTS[@]}" | grep -q '^FAIL'
