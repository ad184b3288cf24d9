#!/bin/bash
# Mutual-TLS handshake rate of a sidecar's inbound listener (openssl s_time: full handshakes,
# one request each) and the delay from a certificate renewal to its use on a new connection.
# Usage: benches/handshake.sh [dir of release binaries]   (cargo build --release --workspace first)
set -e
BIN=$(realpath "${1:-$(dirname "$0")/../target/release}")
W=$(mktemp -d); cd $W
$BIN/ferrule-bench upstream --listen 127.0.0.1:0 > up.out 2>&1 & UP=$!
for i in $(seq 50); do grep -q listening up.out && break; sleep 0.1; done
UPADDR=$(grep -oE '127\.0\.0\.1:[0-9]+' up.out | head -1)
$BIN/ferrule-control --listen 127.0.0.1:0 --data-dir $W/cp --plaintext --cert-ttl 1m > cp.out 2> cp.err & CP=$!
for i in $(seq 50); do grep -q listening cp.out && break; sleep 0.1; done
CPURL=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' cp.out | head -1)
printf "kind: Service\nname: up\nprotocol: http\n" > p.yaml
$BIN/ferrulectl --server $CPURL apply -f p.yaml > /dev/null
$BIN/ferrulectl --server $CPURL token create --service up 2>/dev/null > up.token
$BIN/ferrulectl --server $CPURL token create --service client 2>/dev/null > client.token
$BIN/ferrule-proxy --control-plane $CPURL --service up --data-dir $W/s --inbound 127.0.0.1:0 --outbound 127.0.0.1:0 --admin 127.0.0.1:0 --app $UPADDR --token-file up.token --cert-ttl 1m > s.out 2> s.err & S=$!
for i in $(seq 50); do grep -q listening s.out && break; sleep 0.1; done
IN=$(grep -oE 'inbound=127\.0\.0\.1:[0-9]+' s.out | cut -d= -f2)
ADMIN=$(grep -oE 'admin=127\.0\.0\.1:[0-9]+' s.out | cut -d= -f2)
for i in $(seq 100); do curl -sf http://$ADMIN/ready > /dev/null && break; sleep 0.1; done
# A client certificate of the mesh, the way a sidecar gets one (key and CSR by openssl).
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout c.key -subj /CN=x -out c.csr 2>/dev/null
python3 - "$CPURL" <<'PY'
import json, sys, urllib.request
csr = open("c.csr").read(); tok = open("client.token").read().strip()
req = urllib.request.Request(sys.argv[1] + "/v1/certificates", data=json.dumps({"csr": csr}).encode(),
    headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
a = json.load(urllib.request.urlopen(req))
open("c.pem", "w").write(a["certificateChain"]); open("bundle.pem", "w").write(a["trustBundle"])
PY
echo "== full mutual-TLS handshakes + one request each, 10 s (openssl s_time -new, one client process):"
openssl s_time -connect $IN -new -time 10 -cert c.pem -key c.key -CAfile bundle.pem -www / 2>&1 | grep -E "connections in|connections/user" || true
echo "CPU of the sidecar during it: $(ps -o times= -p $S) s total so far"
# Renewal to use: poll the served serial and /identity's serial.
serial() { echo | openssl s_client -connect $IN -cert c.pem -key c.key -CAfile bundle.pem 2>/dev/null | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2 | tr 'A-F' 'a-f'; }
first=$(curl -s http://$ADMIN/identity | python3 -c "import json,sys;print(json.load(sys.stdin)['serial'].replace(':',''))")
echo "== waiting for a renewal (1-minute certificates renew after ~42 s)"
while true; do
  now=$(curl -s http://$ADMIN/identity | python3 -c "import json,sys;print(json.load(sys.stdin)['serial'].replace(':',''))")
  [ "$now" != "$first" ] && break; sleep 0.01
done
t0=$(date +%s.%N)
for i in $(seq 1000); do s=$(serial); [ "$s" = "$now" ] && break; done
t1=$(date +%s.%N)
echo "renewal seen at /identity; first new connection presenting it after $(echo "($t1 - $t0)*1000" | bc) ms (tries: $i)"
kill $S $CP $UP; wait 2>/dev/null; rm -rf $W
