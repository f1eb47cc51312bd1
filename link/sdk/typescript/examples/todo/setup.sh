#!/usr/bin/env bash
# Creates the example's table on a running server and a user for the browser.
#   ./setup.sh [server URL, default http://127.0.0.1:8080] [user, default todo-user]
# Prints the page address with the user's API key. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
url=${1:-http://127.0.0.1:8080}
user=${2:-todo-user}
kalam --host "$url" -c "SELECT 1" >/dev/null || { echo "no KalamDB at $url" >&2; exit 1; }
kalam --host "$url" --file todo-app.sql >/dev/null
key=$(kalam --host "$url" --csv -c "SELECT apikey FROM system.users WHERE user_id = '$user'" | sed -n 2p)
if [ -z "$key" ]; then
  key=$(kalam --host "$url" --csv -c "CREATE USER '$user' WITH ROLE user" | awk -F, 'NR==1 {for (i=1;i<=NF;i++) if ($i=="apikey") c=i} NR==2 {print $c}')
fi
echo "Serve the package:  node examples/todo/serve.mjs   (from link/sdk/typescript)"
echo "Then open:          http://127.0.0.1:5173/examples/todo/?url=$url&key=$key"
