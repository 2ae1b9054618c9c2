#!/usr/bin/env bash
# Two "hosts" on one machine: a multi-node mpirun over TCP, and a link cut mid-run.
#
#   tests/launch/multihost_test.sh build/bin/distributed_pde
#
# Makes two network namespaces (mt-a-PID, mt-b-PID) joined by a veth pair with addresses
# 10.213.X.1/24 and 10.213.X.2/24 that exist only inside them. Each namespace gets its own
# hosts file through ip-netns's /etc/netns/NAME/hosts convention (the machine's /etc/hosts is
# never touched) naming the two hosts nodeA and nodeB, and each "host" runs in its own UTS
# namespace with that hostname, so Open MPI sees two nodes. An rsh agent script stands in for
# ssh: it runs the daemon's command in the namespace of the host it is given.
#
# 1. `mpirun -H nodeA:1,nodeB:1 -np 2` (pml ob1, btl tcp,self on the veth subnet) must succeed
#    with "Devices used: 2" and the same "Initial loss:" and "Final loss:" as the single-host
#    `launch/mpirun.sh -np 2`.
# 2. A long run (--epochs 200000: minutes over this link) whose link is taken down about 1 s
#    into training must end, non-zero, within 60 s, leaving no process in either namespace.
#    Open MPI's TCP BTL alone does not notice: with Open MPI's defaults the ranks wait in the
#    all-reduce (measured: still hanging 90 s after the cut, and mpirun then needed SIGKILL).
#    What ends the job is the run-time's out-of-band TCP keepalive between mpirun and the
#    remote orted: oob_tcp_keepalive_time/intvl/probes = 1/1/3 (defaults 300/20/9, about
#    8 minutes) make both daemons notice the dead connection about 4 s after the cut; the
#    remote orted kills its rank and exits, and mpirun ends the job, saying either "ORTE has
#    lost communication with a remote daemon" or, when the remote daemon's exit reaches it
#    first through the rsh agent, "ORTE was unable to reliably start one or more daemons"
#    (exit 205 or 1).
#    MESHTRAIN_LINKCUT_KEEPALIVE=0 runs case 2 with Open MPI's defaults instead: it then
#    fails, the job still hanging at the 60 s bound.
#
# Needs root (namespaces). Not root: prints why and exits 77 (CTest SKIP_RETURN_CODE).
# The EXIT trap kills every process left in the two namespaces, deletes them (and with them
# the veth pair), and removes their /etc/netns entries and the temporary directory, on
# failure too.
set -euo pipefail

say() { echo "multihost_test: $*"; }
fail() { echo "multihost_test: FAIL: $*" >&2; exit 1; }

if [ $# -lt 1 ]; then echo "usage: $0 PATH/TO/distributed_pde" >&2; exit 2; fi
if [ "$(id -u)" != "0" ]; then
  say "SKIP: needs root (creates network namespaces and a veth pair)"
  exit 77
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=$(readlink -f "$1")
[ -x "$binary" ] || fail "binary '$1' is not an executable file"
start_time=$SECONDS

# --- packages (ip from iproute2, unshare from util-linux, mpirun from openmpi-bin) ----------
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v mpirun >/dev/null || need+=(openmpi-bin)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq || fail "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null || fail "apt-get install ${need[*]} failed"
fi
for cmd in ip unshare mpirun timeout; do
  command -v "$cmd" >/dev/null || fail "'$cmd' not found"
done

# --- names and cleanup --------------------------------------------------------------------
id=$$
ns_a="mt-a-$id"; ns_b="mt-b-$id"
veth_a="mta$id"; veth_b="mtb$id"          # interface names: at most 15 characters
subnet_prefix="10.213.$(( id % 250 + 1 ))"  # only ever configured inside the namespaces
subnet="$subnet_prefix.0/24"
tmp=$(mktemp -d /tmp/meshtrain-multihost.XXXXXX)
made_netns_dir=0
[ -d /etc/netns ] || made_netns_dir=1
ok=0

kill_ns_procs() {  # kill_ns_procs NS: TERM every process in the namespace, then KILL
  local ns=$1 pids
  ip netns list 2>/dev/null | grep -qw -- "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 30); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    sleep 0.1
  done
  kill -KILL $pids 2>/dev/null
  sleep 0.2
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for ns in "$ns_a" "$ns_b"; do
    kill_ns_procs "$ns"
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  ip link del "$veth_a" 2>/dev/null   # only still here if setup stopped before moving it
  if [ "$made_netns_dir" = "1" ]; then rmdir /etc/netns 2>/dev/null; fi
  if [ "${MESHTRAIN_TEST_KEEP:-0}" = "1" ] && [ "$ok" != "1" ]; then
    echo "multihost_test: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the reference, on one host -----------------------------------------------------------
field() { sed -n "s/^$1[[:space:]]*//p" "$2" | head -n 1; }
timeout 120 "$root/launch/mpirun.sh" -np 2 "$binary" >"$tmp/reference.out" 2>&1 \
  || { cat "$tmp/reference.out" >&2; fail "reference run launch/mpirun.sh -np 2 failed"; }
ref_initial=$(field "Initial loss:" "$tmp/reference.out")
ref_final=$(field "Final loss:" "$tmp/reference.out")
[ -n "$ref_final" ] || { cat "$tmp/reference.out" >&2; fail "no 'Final loss:' in the reference run"; }
say "reference (launch/mpirun.sh -np 2): Initial loss $ref_initial, Final loss $ref_final"

# --- two hosts ----------------------------------------------------------------------------
ip netns add "$ns_a" || fail "ip netns add failed (no network namespaces here?)"
ip netns add "$ns_b" || fail "ip netns add $ns_b failed"
ip link add "$veth_a" type veth peer name "$veth_b" || fail "cannot create a veth pair"
ip link set "$veth_a" netns "$ns_a"
ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add "$subnet_prefix.1/24" dev "$veth_a"
ip -n "$ns_b" addr add "$subnet_prefix.2/24" dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do
  ip -n "$ns" link set lo up
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1\tlocalhost\n%s.1\tnodeA\n%s.2\tnodeB\n' "$subnet_prefix" "$subnet_prefix" \
    >"/etc/netns/$ns/hosts"
done
ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" link set "$veth_b" up
# The link is up when B answers a TCP connect from A (refused is an answer; ping is absent).
reachable=0
for _ in $(seq 50); do
  msg=$(ip netns exec "$ns_a" timeout 2 bash -c 'exec 3<>/dev/tcp/nodeB/9' 2>&1) \
    && { reachable=1; break; }
  case "$msg" in *[Rr]efused*) reachable=1; break ;; esac
  sleep 0.1
done
[ "$reachable" = "1" ] || fail "nodeB ($subnet_prefix.2) unreachable from nodeA"

agent="$tmp/rsh-agent"
cat >"$agent" <<EOF
#!/bin/sh
# rsh agent for mpirun: "\$1" is the host, the rest the command for its shell.
host=\$1; shift
case "\$host" in
  nodeA) ns=$ns_a ;;
  nodeB) ns=$ns_b ;;
  *) echo "rsh-agent: unknown host '\$host'" >&2; exit 255 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$host && \$*"
EOF
chmod 755 "$agent"

# mpi_yield_when_idle: both "hosts" share this machine's cores, and ranks that spin while
# waiting starve the kernel's softirq work that moves packets across the veth pair (about
# 10 ms per step instead of 0.25 ms on 2 cores). Real hosts do not need it.
# shellcheck disable=SC2054  # the commas belong to -H's host list
mpirun_flags=(--allow-run-as-root -H nodeA:1,nodeB:1 -np 2
  --mca plm_rsh_agent "$agent" --mca pml ob1 --mca btl tcp,self
  --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet"
  --mca mpi_yield_when_idle 1 --mca odls_base_sigkill_timeout 0
  -x OPENBLAS_NUM_THREADS=1 -x OMP_NUM_THREADS=1)
# on_a CMD...: run CMD on host nodeA (its namespace, hostname nodeA).
on_a=(ip netns exec "$ns_a" unshare --uts sh -c 'hostname nodeA && exec "$@"' sh)

# --- case 1: a two-host run gives the single-host numbers ---------------------------------
t0=$SECONDS
rc=0
timeout -k 5 120 "${on_a[@]}" mpirun "${mpirun_flags[@]}" "$binary" >"$tmp/two-hosts.out" 2>&1 || rc=$?
[ "$rc" = "124" ] && { cat "$tmp/two-hosts.out" >&2; fail "two-host run did not end within 120 s"; }
[ "$rc" = "0" ] || { cat "$tmp/two-hosts.out" >&2; fail "two-host run failed (exit $rc)"; }
devices=$(field "Devices used:" "$tmp/two-hosts.out")
initial=$(field "Initial loss:" "$tmp/two-hosts.out")
final=$(field "Final loss:" "$tmp/two-hosts.out")
[ "$devices" = "2" ] || { cat "$tmp/two-hosts.out" >&2; fail "'Devices used: $devices', expected 2"; }
grep -q "^Devices: .*1 per node" "$tmp/two-hosts.out" \
  || { cat "$tmp/two-hosts.out" >&2; fail "the ranks did not run on two nodes"; }
[ "$final" = "$ref_final" ] || { cat "$tmp/two-hosts.out" >&2; fail "Final loss '$final' differs from the single-host '$ref_final'"; }
[ "$initial" = "$ref_initial" ] || { cat "$tmp/two-hosts.out" >&2; fail "Initial loss '$initial' differs from the single-host '$ref_initial'"; }
say "case 1 ok in $((SECONDS - t0)) s: 2 ranks on nodeA and nodeB, Final loss $final," \
    "$(field "Training time:" "$tmp/two-hosts.out")"
for ns in "$ns_a" "$ns_b"; do
  [ -z "$(ip netns pids "$ns")" ] || fail "processes left in $ns after a successful run"
done

# --- case 2: cutting the link mid-run ends the job ----------------------------------------
cut_flags=()
if [ "${MESHTRAIN_LINKCUT_KEEPALIVE:-1}" = "1" ]; then
  cut_flags=(--mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1
             --mca oob_tcp_keepalive_probes 3)
fi
bound=60
out="$tmp/link-cut.out"
t0=$SECONDS
timeout -k 5 $((bound + 60)) "${on_a[@]}" mpirun "${mpirun_flags[@]}" "${cut_flags[@]}" "$binary" --epochs 200000 --samples 256 \
  >"$out" 2>&1 &
job=$!
started=0
for _ in $(seq 300); do   # at most 30 s for the start (the header is printed before training)
  if grep -q '^Epochs:' "$out" 2>/dev/null; then started=1; break; fi
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
if [ "$started" != "1" ]; then
  wait "$job" || true
  cat "$out" >&2; fail "the long run did not start training within 30 s"
fi
sleep 1
kill -0 "$job" 2>/dev/null || { cat "$out" >&2; fail "the long run ended before the link was cut"; }
ip -n "$ns_a" link set "$veth_a" down || fail "could not take $veth_a down"
cut_at=$SECONDS
ended=0
for _ in $(seq $((bound * 10))); do
  if ! kill -0 "$job" 2>/dev/null; then ended=1; break; fi
  sleep 0.1
done
took=$((SECONDS - cut_at))
if [ "$ended" != "1" ]; then
  kill -TERM "$job" 2>/dev/null
  kill_ns_procs "$ns_a"; kill_ns_procs "$ns_b"
  wait "$job" 2>/dev/null || true
  cat "$out" >&2
  fail "the job still ran ${bound} s after the link was cut (keepalive flags: ${cut_flags[*]:-none})"
fi
rc=0; wait "$job" || rc=$?
[ "$rc" != "0" ] || { cat "$out" >&2; fail "the job exited 0 after its link was cut"; }
! grep -q '^RESULTS' "$out" || { cat "$out" >&2; fail "the job finished training despite the cut"; }
# The far side's daemon must have ended its rank too (it sees the same dead connection).
left=""
for _ in $(seq 100); do
  left=$(ip netns pids "$ns_a"; ip netns pids "$ns_b")
  [ -z "$left" ] && break
  sleep 0.1
done
[ -z "$left" ] || { ps -o pid,args -p "$(echo $left | tr ' ' ,)" >&2; fail "processes still running in the namespaces 10 s after the job ended"; }
reason=$(sed -n '/^-----/{n;p;q}' "$out")   # the first line of Open MPI's message box
say "case 2 ok: link cut $((cut_at - t0)) s after start, job ended ${took} s later with exit $rc" \
    "(${reason:-no message}), no process left on either host"

ok=1
say "PASS in $((SECONDS - start_time)) s"
