#!/bin/bash
# Instructions the server executes per guarded `createTask`, counted by callgrind: unlike req/s
# or CPU time they do not drift with what else the machine does, so two builds can be compared
# to a per cent or so (see BENCHMARKS.md, "Issue 14: the longer PostgreSQL A/B").
#
#   bench/callgrind-ab.sh BIN [REQUESTS] [TENANTS]
#   CG_DATABASE=sqlite bench/callgrind-ab.sh BIN [REQUESTS] [TENANTS]
#   CG_CLIENTS=32 bench/callgrind-ab.sh BIN [REQUESTS] [TENANTS]
#   CG_WORKLOAD=consume bench/callgrind-ab.sh BIN [REQUESTS] [TENANTS]
#
# Starts BIN under `valgrind --tool=callgrind` on a fresh PostgreSQL database (127.0.0.1:5432,
# user postgres) — or, with CG_DATABASE=sqlite, a fresh SQLite file, whose work is then counted
# with the server's — signs up, makes TENANTS tenants (default 1) with a project each, warms up
# (every tenant's counter row made), zeroes the counts, sends REQUESTS (default 1000)
# `createTask`s round-robin over the tenants one after the other (or from CG_CLIENTS clients
# at once, so that the guard writer batches them as under load), and prints the instructions
# per request. CG_WORKLOAD=keyed sends each `createTask` with a new idempotency key (in
# variables); CG_WORKLOAD=consume sends `consumeCredits` of 1 with a tenant API key and a new
# idempotency key each, as the throughput bench does. On PostgreSQL it also prints the CPU time all `postgres` processes spent per
# request meanwhile (clock ticks from /proc: coarser, and moved by anything else PostgreSQL
# serves). Needs valgrind, curl, psql and python3.
set -euo pipefail
BIN=$1; N=${2:-1000}; TENANTS=${3:-1}
PORT=$((20000 + RANDOM % 20000))
DB="tollgate_callgrind_$$"
DIR=$(mktemp -d)
trap 'kill "$(cat "$DIR/pid" 2>/dev/null)" 2>/dev/null || true; sleep 2; psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
if [ "${CG_DATABASE:-postgres}" = sqlite ]; then
  URL="sqlite://$DIR/callgrind.db?mode=rwc"
else
  psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB" >/dev/null
  URL="postgres://postgres@127.0.0.1:5432/$DB"
fi
# The built-in configuration; new tenants on its UNLIMITED plan, as many as asked for.
DATABASE_URL="$URL" TOLLGATE_JWT_SECRET=callgrind-secret-callgrind-secret-0 \
  TOLLGATE_DEFAULT_PLAN=enterprise TOLLGATE_TENANTS__MAX_PER_USER=$((TENANTS + 1)) \
  TOLLGATE_RATE_LIMIT__ENABLED=false RUST_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.%p.out" "$BIN" serve \
  --addr "127.0.0.1:$PORT" > "$DIR/server.log" 2>&1 &
echo $! > "$DIR/pid"
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.5; done
python3 - "$PORT" "$N" "$TENANTS" "$URL" "${CG_CLIENTS:-1}" "${CG_WORKLOAD:-task}" <<'P'
import http.client, json, os, subprocess, sys, threading
port, n, tenants = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
clients, workload = int(sys.argv[5]), sys.argv[6]
postgres = sys.argv[4].startswith("postgres:")
def postgres_ticks():
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/comm").read().strip() != "postgres":
                continue
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks
local = threading.local()
token = None
def gql(query, variables=None, bearer=None):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection("127.0.0.1", port)
    conn = local.conn
    headers = {"content-type": "application/json"}
    if bearer or token:
        headers["authorization"] = "Bearer " + (bearer or token)
    body = {"query": query}
    if variables is not None:
        body["variables"] = variables
    conn.request("POST", "/graphql", json.dumps(body), headers)
    body = json.loads(conn.getresponse().read())
    assert "errors" not in body, body
    return body["data"]
token = gql('mutation { signUp(input: {email: "cg@example.com", password: "callgrind", name: "C"}) { token } }')["signUp"]["token"]
projects, keys = [], []
for t in range(tenants):
    tenant = gql('mutation { createTenant(input: {name: "t%d", slug: "t%d"}) { id } }' % (t, t))["createTenant"]["id"]
    projects.append((tenant, gql('mutation { createProject(tenantId: "%s", input: {name: "p"}) { id } }' % tenant)["createProject"]["id"]))
    if workload == "consume":
        keys.append(gql('mutation { createApiKey(tenantId: "%s", name: "cg", scopes: [CREDITS_CONSUME]) { secret } }' % tenant)["createApiKey"]["secret"])
def task(i):
    tenant, project = projects[i % len(projects)]
    if workload == "consume":
        gql("mutation($i: ConsumeCreditsInput!) { consumeCredits(input: $i) { credit { id } } }",
            {"i": {"tenantId": tenant, "amount": 1, "objectId": "job", "idempotencyKey": "k%d" % i}},
            keys[i % len(keys)])
    elif workload == "keyed":
        gql('mutation($p: ID!, $k: String) { createTask(projectId: $p, input: {title: "bench"}, idempotencyKey: $k) { id } }',
            {"p": project, "k": "k%d" % i})
    else:
        gql('mutation { createTask(projectId: "%s", input: {title: "bench"}) { id } }' % project)
for i in range(max(50, 2 * tenants)):
    task(n + i)  # keys the timed requests do not use
subprocess.run(["callgrind_control", "-z"], check=True, capture_output=True)
before = postgres_ticks()
def client(c):
    for i in range(c, n, clients):
        task(i)
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
spent = postgres_ticks() - before
subprocess.run(["callgrind_control", "-d"], check=True, capture_output=True)
if postgres:
    hz = int(subprocess.run(["getconf", "CLK_TCK"], capture_output=True, text=True).stdout)
    print(f"{spent * 1e6 / hz / n:.0f} µs PostgreSQL CPU per request")
P
# CG_KEEP=DIR keeps the profile (for callgrind_annotate).
if [ -n "${CG_KEEP:-}" ]; then mkdir -p "$CG_KEEP"; cp "$DIR"/cg.*.out.1 "$CG_KEEP"/; fi
python3 - "$DIR" "$N" <<'P'
import glob, re, sys
for f in glob.glob(sys.argv[1] + "/cg.*.out.1"):
    total = int(re.search(r"^summary: (\d+)", open(f, errors="replace").read(), re.M).group(1))
    print(f"{total / int(sys.argv[2]) / 1000:.1f}k instructions per request")
P
