# Sourced by scripts/oci-engines.sh and benches/oci.sh: start_containerd DIR starts a
# containerd whose root, state, socket and config are in DIR (never the machine's
# own), sets ctd_pid and waits for its socket, DIR/containerd.sock.
start_containerd() {
  mkdir -p "$1"
  cat > "$1/config.toml" << EOT
version = 2
root = "$1/root"
state = "$1/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$1/containerd.sock"
EOT
  containerd --config "$1/config.toml" > "$1/log" 2>&1 &
  ctd_pid=$!
  i=0
  while [ ! -S "$1/containerd.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
