#!/usr/bin/env bash
# Applies wisp's least-privilege RabbitMQ setup (ops/rabbitmq/definitions.json) to a local broker:
# the shared topology, one user per role (wisp-scheduler, wisp-verifier, wisp-client) and one user
# per edge fleet (named by the fleet id; its devices are <fleet>-0, <fleet>-1, ...), each with
# only the permissions its role uses. Passwords come from the environment, never from files in
# the repository, and reach rabbitmqctl on stdin (not on its command line).
#
#   WISP_RMQ_SCHEDULER_PASSWORD=... WISP_RMQ_VERIFIER_PASSWORD=... \
#   WISP_RMQ_CLIENT_PASSWORD=... WISP_RMQ_FLEET_PASSWORD=... \
#   ops/rabbitmq/apply-permissions.sh [--vhost NAME] [--fleet ID]...
#
# Without --fleet the template fleet of definitions.json (fleet-1) is created. Run the roles with
# amqp://<user>:<password>@host/<vhost> URLs (WISP_AMQP_URL) and `wisp edge --fleet-id <fleet>`.
# The guest user is left as it is: delete it on a real deployment (rabbitmqctl delete_user guest).
#
# rabbitmqctl import_definitions has the broker read the file, so it is written where the broker
# can read it: WISP_RMQ_SHARED_DIR (default /tmp; docker-compose.yml shares a volume between the
# broker and its one-shot rabbitmq-users service, whose image has no Node: the default vhost and
# the template fleet need no rendering).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
vhost="/"
fleets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --vhost) vhost="$2"; shift 2 ;;
    --fleet) fleets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "apply-permissions: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for f in "${fleets[@]}"; do
  # Fleet ids go into permission regexes unescaped: keep them to letters, digits, '_' and '-'.
  [[ "$f" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || { echo "apply-permissions: fleet id \"$f\" must match [A-Za-z0-9_-]{1,64}" >&2; exit 2; }
done
for var in WISP_RMQ_SCHEDULER_PASSWORD WISP_RMQ_VERIFIER_PASSWORD WISP_RMQ_CLIENT_PASSWORD WISP_RMQ_FLEET_PASSWORD; do
  [ -n "${!var:-}" ] || { echo "apply-permissions: $var is not set (passwords come from the environment)" >&2; exit 2; }
done

# Render: the vhost, and the template fleet (fleet-1) expanded once per --fleet.
render() {
  if [ "$vhost" = "/" ] && [ ${#fleets[@]} -eq 0 ]; then cat "$here/definitions.json"; return; fi
  WISP_VHOST="$vhost" WISP_FLEETS="${fleets[*]:-}" node - "$here/definitions.json" <<'EOF'
const fs = require('node:fs');
const defs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const vhost = process.env.WISP_VHOST;
const fleets = (process.env.WISP_FLEETS || '').split(' ').filter(Boolean);
const TEMPLATE = 'fleet-1';
const retarget = (x) => ({ ...x, ...(x.vhost !== undefined ? { vhost } : {}) });
const expand = (list, key) => list.flatMap((x) => (x[key] !== TEMPLATE || fleets.length === 0 ? [x] : fleets.map((f) => JSON.parse(JSON.stringify(x).split(TEMPLATE).join(f)))));
defs.vhosts = [{ name: vhost }];
defs.users = expand(defs.users, 'name');
for (const k of ['permissions', 'topic_permissions']) defs[k] = expand(defs[k], 'user').map(retarget);
for (const k of ['exchanges', 'queues', 'bindings']) defs[k] = defs[k].map(retarget);
process.stdout.write(JSON.stringify(defs));
EOF
}

rabbitmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || true
# The broker process reads the file itself: a world-readable temporary file (it holds no secret).
defs_file="$(mktemp "${WISP_RMQ_SHARED_DIR:-/tmp}/wisp-definitions.XXXXXX.json")"
trap 'rm -f "$defs_file"' EXIT
render >"$defs_file"
chmod 644 "$defs_file"
rabbitmqctl -q import_definitions "$defs_file" >/dev/null
users=(wisp-scheduler wisp-verifier wisp-client)
if [ ${#fleets[@]} -eq 0 ]; then users+=(fleet-1); else users+=("${fleets[@]}"); fi
# The import is asynchronous: wait until every user exists before setting passwords.
for _ in $(seq 1 50); do
  listed="$(rabbitmqctl -q list_users 2>/dev/null | awk '{print $1}')"
  missing=0
  for u in "${users[@]}"; do grep -qx -- "$u" <<<"$listed" || missing=1; done
  [ $missing -eq 0 ] && break
  sleep 0.2
done
password_of() {
  case "$1" in
    wisp-scheduler) printf '%s' "$WISP_RMQ_SCHEDULER_PASSWORD" ;;
    wisp-verifier) printf '%s' "$WISP_RMQ_VERIFIER_PASSWORD" ;;
    wisp-client) printf '%s' "$WISP_RMQ_CLIENT_PASSWORD" ;;
    *) printf '%s' "$WISP_RMQ_FLEET_PASSWORD" ;;
  esac
}
for u in "${users[@]}"; do
  password_of "$u" | rabbitmqctl -q change_password "$u" >/dev/null
done
echo "apply-permissions: vhost $vhost: users ${users[*]} with least-privilege permissions"
