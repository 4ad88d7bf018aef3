# Helpers shared by the scripts: `source` it, do not run it.

_lib_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The buf to run, one rule for every script: $BUF when set, else the one the `test` extra installs
# into .venv (PyPI buf-bin, the version the contract checks are written for), else buf on PATH.
buf_bin() {
  if [ -n "${BUF:-}" ]; then
    printf '%s\n' "$BUF"
  elif [ -x "$_lib_root/.venv/bin/buf" ]; then
    printf '%s\n' "$_lib_root/.venv/bin/buf"
  elif command -v buf; then
    :
  else
    echo "buf not found: pip install -e '.[test]' installs it into .venv (or set BUF)" >&2
    return 1
  fi
}
