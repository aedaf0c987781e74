#!/usr/bin/env bash
# System packages the test suite needs: a Vulkan loader and Mesa's software Vulkan driver
# (lavapipe), so the wgpu backend runs without a GPU. Idempotent: installs only what is missing.
set -euo pipefail
need=()
# iproute2 (ip netns, tc) for the split test between two network namespaces.
for p in libvulkan1 mesa-vulkan-drivers iproute2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "system deps: present (libvulkan1 mesa-vulkan-drivers iproute2)"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system deps: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
