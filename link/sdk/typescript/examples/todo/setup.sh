#!/usr/bin/env bash
# Creates the example's table on a running server and a user for the browser.
#   ./setup.sh [server URL, default http://127.0.0.1:8080] [user, default todo-user]
# Prints the page address with the user's API key (a user that exists gets a new key: keys
# are stored hashed and cannot be read back).
set -euo pipefail
cd "$(dirname "$0")"
url=${1:-http://127.0.0.1:8080}
user=${2:-todo-user}
kalam --host "$url" -c "SELECT 1" >/dev/null || { echo "no KalamDB at $url" >&2; exit 1; }
kalam --host "$url" --file todo-app.sql >/dev/null
exists=$(kalam --host "$url" --csv -c "SELECT count(*) AS n FROM system.users WHERE user_id = '$user'" | sed -n 2p)
if [ "$exists" = "0" ]; then
  sql="CREATE USER '$user' WITH ROLE user"
else
  sql="ALTER USER '$user' RESET APIKEY"
fi
key=$(kalam --host "$url" --json -c "$sql" | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["apikey"])')
echo "Serve the package:  node examples/todo/serve.mjs   (from link/sdk/typescript)"
echo "Then open:          http://127.0.0.1:5173/examples/todo/?url=$url&key=$key"
