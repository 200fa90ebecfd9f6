#!/usr/bin/env bash
# Make one virtual environment per peer server, with the versions pinned below.
#
#   bash benchmarks/peers/setup_venvs.sh DIR [PEER ...]
#
# DIR gets one folder per peer (DIR/floor, DIR/kserve, DIR/mlserver, DIR/litserve,
# DIR/bentoml); without PEER names all five are made. A venv that already exists is
# reinstalled to the pins. Each venv's `pip freeze` is written to DIR/<peer>/freeze.txt and
# pip's output to DIR/<peer>/setup.log. Python: $PYTHON, else python3 (3.11 was used for the
# published figures). The driver, bench_peers.py, runs from the project's own .venv and
# needs none of these to print its --help.
#
# The pins are the versions behind the published peer figures in BENCHMARKS.md, so that new
# runs stay comparable: the peer itself, the web stack it resolved to then (FastAPI,
# Starlette, uvicorn, uvloop, httptools, orjson, where the peer uses them), ONNX Runtime
# 1.31.1 (the project's onnxruntime-gpu version, here the CPU wheel) and numpy 2.4.6.
set -euo pipefail

root=${1:?usage: setup_venvs.sh DIR [floor|kserve|mlserver|litserve|bentoml ...]}
shift
python=${PYTHON:-python3}
common=("onnxruntime==1.31.1" "numpy==2.4.6")

pins() {  # the packages of one peer, besides the common ones
  case $1 in
    floor)    echo "starlette==1.10.0 uvicorn[standard]==0.54.0 uvloop==0.23.0 httptools==0.9.0" ;;
    kserve)   echo "kserve==0.21.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0" \
                   "uvloop==0.23.0 httptools==0.9.0 orjson==3.13.0" ;;
    # MLServer 1.7.1's inference worker process cannot start its event loop with
    # uvloop >= 0.22 ("There is no current event loop"): uvloop stays at 0.21.
    mlserver) echo "mlserver==1.7.1 fastapi==0.115.14 starlette==0.46.2 uvicorn==0.54.0" \
                   "uvloop==0.21.0 orjson==3.13.0" ;;
    litserve) echo "litserve==0.2.19 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0" \
                   "uvloop==0.23.0 httptools==0.9.0" ;;
    bentoml)  echo "bentoml==1.4.40 starlette==1.10.0 uvicorn==0.54.0" ;;
    *) echo "unknown peer: $1 (floor, kserve, mlserver, litserve, bentoml)" >&2; return 1 ;;
  esac
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(floor kserve mlserver litserve bentoml)
for peer in "${peers[@]}"; do pins "$peer" >/dev/null; done  # refuse unknown names up front

mkdir -p "$root"
failed=()
for peer in "${peers[@]}"; do
  venv="$root/$peer"
  read -r -a pkgs <<<"$(pins "$peer")"
  echo "== $peer: ${pkgs[*]} ${common[*]}"
  if "$python" -m venv "$venv" \
      && "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
           >"$venv/setup.log" 2>&1 \
      && "$venv/bin/python" -m pip install --disable-pip-version-check "${pkgs[@]}" "${common[@]}" \
           >>"$venv/setup.log" 2>&1; then
    "$venv/bin/python" -m pip freeze --disable-pip-version-check >"$venv/freeze.txt"
    echo "   ok: $venv ($(grep -ciE '^[a-z0-9]' "$venv/freeze.txt") packages, see freeze.txt)"
  else
    echo "   FAILED: see $venv/setup.log" >&2
    failed+=("$peer")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "venvs ready under $root"
