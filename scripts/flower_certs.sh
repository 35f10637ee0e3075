#!/usr/bin/env bash
# Certificates and keys for a Flower deployment of raflora (docs/flower.md), into one folder:
#   ca.crt / ca.key          a certificate authority (give ca.crt to every SuperNode and to `flwr`)
#   server.pem / server.key  the SuperLink's TLS certificate, signed by the CA, valid for the names
#                            and addresses the nodes will dial (SAN), 127.0.0.1 and localhost always
#   <node> / <node>.pub      one ECDSA key pair per SuperNode for node authentication (OpenSSH
#                            format, as flower-supernode --auth-supernode-private-key and
#                            `flwr supernode register` read them)
# Usage: scripts/flower_certs.sh OUT_DIR [--san HOST_OR_IP]... [NODE_NAME]...
#   scripts/flower_certs.sh certs --san 10.0.0.5 --san server.example.org alice bob
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: $0 OUT_DIR [--san HOST_OR_IP]... [NODE_NAME]..." >&2
    exit 2
fi
out=$1; shift
sans=("IP:127.0.0.1" "DNS:localhost")
nodes=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --san)
            [[ $# -ge 2 ]] || { echo "error: --san needs a host name or an IP address" >&2; exit 2; }
            if [[ $2 =~ ^[0-9.]+$ || $2 == *:* ]]; then sans+=("IP:$2"); else sans+=("DNS:$2"); fi
            shift 2 ;;
        *) nodes+=("$1"); shift ;;
    esac
done

mkdir -p "$out"
cd "$out"
days=${FLOWER_CERT_DAYS:-365}
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=raflora-flower-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=raflora-superlink" 2>/dev/null
san=$(IFS=,; echo "${sans[*]}")
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
    "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.pem -days "$days" \
    -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
for node in "${nodes[@]}"; do
    rm -f "$node" "$node.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$node" -f "$node"
done
chmod 600 ca.key server.key
echo "wrote $(pwd): ca.crt server.pem server.key (SAN $san)${nodes:+ and keys for ${nodes[*]}}"
