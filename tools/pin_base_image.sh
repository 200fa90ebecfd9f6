#!/usr/bin/env bash
# Pins the Dockerfile's base image (ARG CUDA_IMAGE) to the digest its tag names now:
#   tools/pin_base_image.sh [Dockerfile]      # needs `docker buildx` and the registry
# Rerun it to move to a newer build of the same tag; the tag stays beside the digest.
set -euo pipefail
dockerfile=${1:-"$(dirname "$0")/../Dockerfile"}
ref=$(sed -n 's/^ARG CUDA_IMAGE=//p' "$dockerfile")
[[ -n $ref ]] || { echo "no 'ARG CUDA_IMAGE=' line in $dockerfile" >&2; exit 1; }
tag=${ref%%@*}
manifest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest}}')
digest=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["digest"])' "$manifest")
if [[ ! $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "the registry gave no digest for $tag: $digest" >&2
  exit 1
fi
sed -i "s|^ARG CUDA_IMAGE=.*|ARG CUDA_IMAGE=${tag}@${digest}|" "$dockerfile"
echo "$tag@$digest"
