# Shared by .ci/run and .ci/lock (sourced, not run).

# The interpreter of Python $1 (e.g. 3.12): `python3.12` if it runs, else the newest $1.x that
# pyenv has. Prints its path; fails when there is none.
find_python() {
  local want=$1 candidate version
  if candidate=$(command -v "python$want") && "$candidate" -c "" >/dev/null 2>&1; then
    echo "$candidate"
    return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    version=$(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}(\.[0-9]+)?$" \
              | sort -V | tail -n 1)
    if [ -n "$version" ] && [ -x "$(pyenv root)/versions/$version/bin/python" ]; then
      echo "$(pyenv root)/versions/$version/bin/python"
      return
    fi
  fi
  echo "no Python $want found (neither a working python$want on PATH nor a $want.x under" \
       "pyenv); install one, e.g. 'pyenv install $want'" >&2
  return 1
}

# A brand-new virtual environment of interpreter $1 at $2 (no system site-packages).
new_venv() {
  "$1" -m venv "$2"
}

# A temporary folder for this run, removed when the script exits; a fresh home directory in it.
# pip's download cache is the one thing kept from earlier runs.
start_from_nothing() {
  CI_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/mopoe-ci.XXXXXX")
  trap 'rm -rf "$CI_ROOT"' EXIT
  export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
  export HOME="$CI_ROOT/home"
  mkdir -p "$HOME"
  unset PYTHONPATH TFDS_DATA_DIR MOPOE_TEST_XLA_CACHE VIRTUAL_ENV
}
