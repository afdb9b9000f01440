#!/usr/bin/env bash
# Set up .venv (and the Debian libraries, when run as root), then run the demo or the tests.
#   ./bootstrap.sh demo    replay the bundled clips through the daemon and show what a subscriber gets
#   ./bootstrap.sh test    lint (ruff), build the docs (mkdocs --strict), then run the test suite
#   ./bootstrap.sh setup   only set up
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins mosquitto tmux chromium chromium-driver espeak-ng)  # PortAudio; for the tests a virtual microphone, an MQTT broker, a terminal and a browser; for training speech negatives
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: warning: missing Debian packages ${missing[*]} (microphone capture and its tests need them); install them as root" >&2
  fi
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating .venv and installing streamdet with its dependencies (torch is large: a few minutes the first time)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

case "${1:-setup}" in
  demo) shift; exec .venv/bin/streamdet demo "$@" ;;
  test) shift
    .venv/bin/ruff check streamdet train tests
    # A broken link or anchor between pages fails here (--quiet would hide the warnings strict counts).
    docs=$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)" 2>&1) || { echo "$docs" >&2; exit 1; }
    exec .venv/bin/python -m pytest -q "$@" ;;
  setup) echo "bootstrap: ready: .venv/bin/streamdet and .venv/bin/python -m train" ;;
  *) echo "usage: ./bootstrap.sh [setup|demo|test] [args...]" >&2; exit 2 ;;
esac
