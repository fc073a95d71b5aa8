#!/usr/bin/env bash
# Make an environment's activate script export SPARK_CONF_DIR=CONF_DIR, so that a bare
# `spark-submit jobs/...` reads CONF_DIR/spark-defaults.conf (and log4j2.properties); a
# SPARK_CONF_DIR already set when activating (a cluster's own conf) is kept. Idempotent: the
# block is replaced, never repeated. scripts/setup.sh runs it on .venv/bin/activate.
# Usage: scripts/activate_spark_conf.sh ACTIVATE_SCRIPT CONF_DIR
set -euo pipefail
activate=${1:?usage: $0 ACTIVATE_SCRIPT CONF_DIR}
conf=$(cd "${2:?usage: $0 ACTIVATE_SCRIPT CONF_DIR}" && pwd)
[ -f "$activate" ] || { echo "$0: $activate is not a file" >&2; exit 2; }
[ -f "$conf/spark-defaults.conf" ] || { echo "$0: $conf has no spark-defaults.conf" >&2; exit 2; }
begin="# >>> recoder-dist: Spark settings >>>"
end="# <<< recoder-dist: Spark settings <<<"
sed -i "/^$begin\$/,/^$end\$/d" "$activate"
cat >>"$activate" <<BLOCK
$begin
if [ -z "\${SPARK_CONF_DIR:-}" ]; then
    export SPARK_CONF_DIR='$conf'
fi
$end
BLOCK
