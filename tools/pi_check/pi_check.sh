#!/usr/bin/env bash
# Raspberry Pi userland check: install the DEVICE package in a Debian arm64 (bookworm) userland under qemu-user,
# replay a NASA log with the shipped model and compare its SoH with the same replay on this host, then run the agent
# against a mosquitto on the host for a few samples.  Run as root (debootstrap, chroot, mounts, binfmt).
#
#   tools/pi_check/pi_check.sh            (or: make pi-check)
#
# Environment (all optional):
#   PI_CHECK_ROOT    the arm64 userland, reused when complete   (default /var/tmp/battwin-pi-check/bookworm-arm64)
#   PI_CHECK_LOG     NASA log to replay                          (default /work/shared/data/bms-logs/nasa_pcoe/B0047.csv.gz)
#   PI_CHECK_MIRROR  Debian mirror for debootstrap               (default: the host's own apt mirror)
#   PI_CHECK_TOL     largest allowed |SoH(host) - SoH(arm64)|    (default 1e-4)
#   PYTHON           host Python with the dev dependencies      (default python3)
#   MOSQUITTO        mosquitto binary                            (default: from PATH or /usr/sbin/mosquitto)
#
# Needs on the host: debootstrap, qemu-user-static >= 8 (bookworm's 7.2 segfaults when LiteRT creates its
# interpreter; install 10.x with `apt-get install -t bookworm-backports qemu-user-static`), mosquitto,
# mosquitto-clients.  Exits non-zero with a "pi-check: FAILED ..." line naming the step that failed.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROOT="${PI_CHECK_ROOT:-/var/tmp/battwin-pi-check/bookworm-arm64}"
LOG_FILE="${PI_CHECK_LOG:-/work/shared/data/bms-logs/nasa_pcoe/B0047.csv.gz}"
# the host's own Debian mirror (the first URIs: of its deb822 sources, else of sources.list)
host_mirror() {
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    [[ -n "$uri" ]] || uri="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    echo "$uri"
}
MIRROR="${PI_CHECK_MIRROR:-$(host_mirror)}"
TOL="${PI_CHECK_TOL:-1e-4}"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" # host-side Python runs this checkout's code
MOSQUITTO="${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}"
SUITE=bookworm
APP_IN=/opt/battwin-app          # the "unpacked agent artifact" inside the chroot
VENV_IN=/opt/battwin-venv
WORK="$(mktemp -d /tmp/battwin-pi-check.XXXXXX)"
MOUNTS=()
BROKER_PID=""
SUB_PID=""
CURRENT_STEP="setup"
T0=$SECONDS

say() { printf 'pi-check: %s\n' "$*" >&2; }
REPORTED=""
fail() {
    say "FAILED in step '$CURRENT_STEP': $*"
    REPORTED=1
    exit 1
}

cleanup() {
    local rc=$?
    [[ -n "$SUB_PID" ]] && kill "$SUB_PID" 2>/dev/null || true
    [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null || true
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" 2>/dev/null || say "could not unmount ${MOUNTS[i]}"
    done
    rm -rf "$WORK"
    if [[ $rc -ne 0 && -z "$REPORTED" ]]; then
        say "FAILED in step '$CURRENT_STEP' (exit $rc); see the output above"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# step NAME: start a timed step; the previous one's time is printed
declare -A TIMES=()
STEP_T0=$SECONDS
step() {
    if [[ "$CURRENT_STEP" != "setup" ]]; then TIMES[$CURRENT_STEP]=$((SECONDS - STEP_T0)); fi
    CURRENT_STEP="$1"
    STEP_T0=$SECONDS
    say "== $1"
}

in_chroot() {
    # the chroot gets the host's pip configuration through the environment: every PIP_* variable, plus the config
    # files and CA bundle copied in by prepare_chroot
    local envs=(HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8)
    local v
    while IFS='=' read -r v _; do envs+=("$v=${!v}"); done < <(env | grep -E '^PIP_[A-Z_]+=' || true)
    chroot "$ROOT" /usr/bin/env -i "${envs[@]}" "$@"
}

umount_under() { # unmount everything below $1, deepest first (a failed debootstrap can leave /proc mounted)
    local m
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done < <(
        awk -v root="$1/" 'index($2 "/", root) == 1 { print $2 }' /proc/self/mounts | sort -r
    )
}

mount_once() { # mount_once TARGET mount-args...
    local target="$1"
    shift
    mountpoint -q "$target" && return 0
    mount "$@" "$target"
    MOUNTS+=("$target")
}

main() {
    # ---------------------------------------------------------------------------------------------------------------
    step preflight
    [[ $(id -u) -eq 0 ]] || fail "must run as root (debootstrap, chroot and mounts need it)"
    command -v debootstrap >/dev/null || fail "debootstrap not found: apt-get install debootstrap"
    [[ -n "$MIRROR" ]] || fail "no Debian mirror in the host's apt sources: set PI_CHECK_MIRROR"
    QEMU="$(command -v qemu-aarch64-static || true)"
    [[ -n "$QEMU" ]] || fail "qemu-aarch64-static not found: apt-get install -t bookworm-backports qemu-user-static"
    QEMU_VERSION="$("$QEMU" --version | head -1 | sed -E 's/.*version ([0-9.]+).*/\1/')"
    [[ "${QEMU_VERSION%%.*}" -ge 8 ]] ||
        fail "qemu $QEMU_VERSION segfaults when LiteRT creates its interpreter; need >= 8: apt-get install -t bookworm-backports qemu-user-static"
    [[ -x "$MOSQUITTO" ]] || fail "mosquitto not found: apt-get install mosquitto"
    command -v mosquitto_sub >/dev/null || fail "mosquitto_sub not found: apt-get install mosquitto-clients"
    [[ -f "$LOG_FILE" ]] || fail "NASA log not found: $LOG_FILE (set PI_CHECK_LOG)"
    # the model shipped in the package: the arm64 side must find it inside the installed wheel (no --model-dir)
    MODEL_DIR="$REPO/device_agent/health/shipped_model"
    [[ -f "$MODEL_DIR/model.tflite" ]] || fail "shipped model not found in $MODEL_DIR"
    say "qemu $QEMU_VERSION ($QEMU); userland $ROOT; log $LOG_FILE"

    # binfmt_misc: run aarch64 ELF files through qemu; the F flag opens the interpreter now, so the chroot needs no copy
    step binfmt
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        fail "cannot mount binfmt_misc"
    BINFMT=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [[ -f "$BINFMT" ]]; then
        registered="$(sed -n 's/^interpreter //p' "$BINFMT")"
        reg_version="$("$registered" --version 2>/dev/null | head -1 | sed -E 's/.*version ([0-9.]+).*/\1/')"
        if [[ "${reg_version%%.*}" -lt 8 ]] || ! grep -q '^flags: .*F' "$BINFMT"; then
            say "re-registering qemu-aarch64 (was $registered, qemu ${reg_version:-?})"
            echo -1 >"$BINFMT"
        fi
    fi
    if [[ ! -f "$BINFMT" ]]; then
        # magic and mask as in Debian's /usr/lib/binfmt.d/qemu-aarch64.conf
        printf '%s' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$(readlink -f "$QEMU")"':OCF' \
            >/proc/sys/fs/binfmt_misc/register || fail "cannot register qemu-aarch64 with binfmt_misc"
    fi
    grep -q '^enabled' "$BINFMT" || fail "binfmt qemu-aarch64 is registered but disabled"

    # ---------------------------------------------------------------------------------------------------------------
    step debootstrap
    if [[ -f "$ROOT/.battwin-debootstrap-done" ]]; then
        say "reusing $ROOT"
    else
        umount_under "$ROOT"
        rm -rf --one-file-system "$ROOT"
        mkdir -p "$(dirname "$ROOT")"
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
            { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap $SUITE arm64 from $MIRROR"; }
        touch "$ROOT/.battwin-debootstrap-done"
    fi
    [[ "$(in_chroot uname -m)" == aarch64 ]] || fail "the chroot does not run as aarch64"

    step prepare
    mount_once "$ROOT/proc" -t proc proc
    mount_once "$ROOT/dev" --bind /dev
    mount_once "$ROOT/sys" -t sysfs sysfs # LiteRT/XNNPACK reads the CPU list from /sys
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # the host's pip configuration and CA bundle (the package index may sit behind a TLS-inspecting proxy)
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    [[ -f /etc/pip.conf ]] && cp -L /etc/pip.conf "$ROOT/etc/pip.conf"
    if [[ -d /etc/xdg/pip ]]; then
        rm -rf "$ROOT/etc/xdg/pip"
        mkdir -p "$ROOT/etc/xdg"
        cp -rL /etc/xdg/pip "$ROOT/etc/xdg/pip"
    fi
    # the device package exactly as shipped: a wheel of this repo (pure Python), its locks, the model, the log
    rm -rf "$ROOT$APP_IN" "$ROOT/opt/battwin-check"
    mkdir -p "$ROOT$APP_IN/requirements" "$ROOT$APP_IN/device_agent" "$ROOT/opt/battwin-check"
    (cd "$REPO" && "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/dist" .) ||
        fail "pip wheel --no-deps of $REPO"
    WHEEL="$(ls "$WORK"/dist/battwin-*.whl)"
    cp "$WHEEL" "$ROOT/opt/battwin-check/"
    cp "$REPO"/requirements/device.lock "$REPO"/requirements/device-32bit.lock "$ROOT$APP_IN/requirements/"
    cp "$REPO/device_agent/bootstrap.py" "$ROOT$APP_IN/device_agent/"
    cp "$LOG_FILE" "$ROOT/opt/battwin-check/"
    LOG_IN="/opt/battwin-check/$(basename "$LOG_FILE")"

    # ---------------------------------------------------------------------------------------------------------------
    step install
    # the device install path (interface 1): bootstrap.py picks device.lock on a 64-bit interpreter and installs it with
    # --require-hashes --only-binary=:all: (idempotent: an unchanged lock is not reinstalled); then the battwin wheel
    in_chroot python3 --version
    in_chroot python3 "$APP_IN/device_agent/bootstrap.py" --app "$APP_IN" --venv "$VENV_IN" ||
        fail "device_agent/bootstrap.py in the arm64 userland"
    in_chroot "$VENV_IN/bin/pip" install --quiet --no-deps --only-binary=:all: --force-reinstall \
        "/opt/battwin-check/$(basename "$WHEEL")" || fail "pip install of $(basename "$WHEEL")"
    in_chroot "$VENV_IN/bin/python" -c 'import platform, struct, ai_edge_litert; print("arm64 venv:", platform.machine(), 8 * struct.calcsize("P"), "bit")' ||
        fail "the installed venv cannot import ai_edge_litert"

    # ---------------------------------------------------------------------------------------------------------------
    step replay-arm64
    in_chroot "$VENV_IN/bin/battwin" replay "$LOG_IN" --out /opt/battwin-check/arm64.jsonl ||
        fail "battwin replay in the arm64 userland (the model shipped in the wheel)"
    cp "$ROOT/opt/battwin-check/arm64.jsonl" "$WORK/arm64.jsonl"

    step replay-host
    (
        cd "$REPO"
        "$PYTHON" -m device_agent.cli replay "$LOG_FILE" --out "$WORK/host.jsonl" --model-dir "$MODEL_DIR"
    ) || fail "battwin replay on the host"

    step compare
    "$PYTHON" "$REPO/tools/pi_check/compare_soh.py" "$WORK/host.jsonl" "$WORK/arm64.jsonl" --tolerance "$TOL" ||
        fail "the arm64 replay does not reproduce the host's SoH"

    # ---------------------------------------------------------------------------------------------------------------
    step run-mqtt
    PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
EOF
    chmod 755 "$WORK"
    "$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 100); do
        mosquitto_pub -h 127.0.0.1 -p "$PORT" -t battwin-pi-check/probe -m up 2>/dev/null && break
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/mosquitto.log" >&2; fail "mosquitto did not start"; }
        sleep 0.2
    done
    mosquitto_pub -h 127.0.0.1 -p "$PORT" -t battwin-pi-check/probe -m up || fail "mosquitto on 127.0.0.1:$PORT does not answer"
    THING=pi-check-arm64
    SAMPLES=200
    # every message the agent publishes, with its topic
    mosquitto_sub -h 127.0.0.1 -p "$PORT" -t "battwin/$THING/#" -v >"$WORK/received.txt" 2>"$WORK/sub.err" &
    SUB_PID=$!
    in_chroot "$VENV_IN/bin/battwin" run --thing "$THING" --source "replay:$LOG_IN" --sample-interval 0.01 \
        --broker "mqtt://127.0.0.1:$PORT" --spool /opt/battwin-check/spool.db --max-samples "$SAMPLES" \
        --set telemetry.batch_max_samples=20 --log-level INFO \
        >"$WORK/run.log" 2>&1 || { tail -30 "$WORK/run.log" >&2; fail "battwin run in the arm64 userland"; }
    # the agent has stopped after flushing; give the subscriber until it has the telemetry (bounded wait on a condition)
    for _ in $(seq 1 150); do
        grep -q "^battwin/$THING/telemetry" "$WORK/received.txt" && break
        sleep 0.2
    done
    kill "$SUB_PID" 2>/dev/null || true
    wait "$SUB_PID" 2>/dev/null || true
    SUB_PID=""
    "$PYTHON" "$REPO/tools/pi_check/count_telemetry.py" "$WORK/received.txt" --thing "$THING" --min-samples "$SAMPLES" ||
        { tail -30 "$WORK/run.log" >&2; fail "the host broker did not get the agent's telemetry"; }

    step done
    TOTAL=$((SECONDS - T0))
    for s in preflight binfmt debootstrap prepare install replay-arm64 replay-host compare run-mqtt; do
        say "$(printf '%-14s %4ss' "$s" "${TIMES[$s]:-0}")"
    done
    say "$(printf '%-14s %4ss' total "$TOTAL") — PASSED (qemu $QEMU_VERSION)"
}

# all of it parsed before anything runs, and exit before bash reads on: editing this file cannot break a run
main "$@"; exit $?
