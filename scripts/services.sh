#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379), PostgreSQL (127.0.0.1:5432, role root, trust on
# loopback) and MariaDB (127.0.0.1:3306, root without password over TCP) answer, for the
# test runs against real servers; and that mysqlclient can be built (libmariadb-dev). Starts what is installed but
# stopped; on Debian/Ubuntu, run as root, installs what is missing first.
#   scripts/services.sh start     start (and install) what is missing
#   scripts/services.sh standby   also a streaming standby of that PostgreSQL on 127.0.0.1:5433
#   scripts/services.sh status    exit 1 unless all three answer
#   scripts/services.sh bench     install what the benchmarks run besides Python: wrk (the
#                                 load generator), redis-server (their private Redis), valgrind
#   scripts/services.sh browser   install headless Chromium and its driver, for the admin's
#                                 browser tests (tests/test_admin_browser.py); start does it too
set -euo pipefail

answers() {  # host port
    python3 - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

wait_for() {  # name host port
    for _ in $(seq 1 60); do answers "$2" "$3" && return 0; sleep 0.5; done
    echo "services: $1 does not answer on $2:$3" >&2
    return 1
}

apt_install() {
    if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
        echo "services: install $* yourself (or run this as root on Debian/Ubuntu)" >&2
        return 1
    fi
    [ -n "${_apt_updated:-}" ] || { apt-get update -qq; _apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
    answers 127.0.0.1 6379 && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p /tmp/drf-llm-keys-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp/drf-llm-keys-redis --logfile /tmp/drf-llm-keys-redis/redis.log
    wait_for Redis 127.0.0.1 6379
}

start_postgres() {
    if ! answers 127.0.0.1 5432; then
        command -v pg_ctlcluster >/dev/null || apt_install postgresql
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
            || pg_ctlcluster "$version" main start
        wait_for PostgreSQL 127.0.0.1 5432
    fi
    # The tests connect as root without a password; a fresh install knows only "postgres".
    command -v psql >/dev/null || return 0
    if ! psql -h 127.0.0.1 -U root -d postgres -Atc "select 1" >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            echo "services: PostgreSQL does not accept role root on 127.0.0.1 (see README)" >&2
            return 1
        fi
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        hba=/etc/postgresql/$version/main/pg_hba.conf
        grep -q "drf-llm-keys" "$hba" || sed -i '1i host all root 127.0.0.1/32 trust # drf-llm-keys tests' "$hba"
        su postgres -c "psql -qc 'CREATE ROLE root SUPERUSER LOGIN'" 2>/dev/null || true
        su postgres -c "psql -qc 'SELECT pg_reload_conf()'" >/dev/null
        psql -h 127.0.0.1 -U root -d postgres -Atc "select 1" >/dev/null
    fi
}

start_mariadb() {
    # mysqlclient, the driver Django documents, has no Linux wheels: pip compiles it, which
    # takes the MariaDB client headers, a C compiler and Python's headers.
    pkg-config --exists libmariadb 2>/dev/null || apt_install libmariadb-dev pkg-config
    command -v cc >/dev/null || apt_install gcc
    python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
        || apt_install python3-dev
    if ! answers 127.0.0.1 3306; then
        command -v mariadbd >/dev/null || apt_install mariadb-server
        service mariadb start >/dev/null
        wait_for MariaDB 127.0.0.1 3306
    fi
    # The tests connect as root over TCP without a password; a fresh Debian install lets
    # root in only through the unix socket.
    command -v mariadb >/dev/null || return 0
    if ! mariadb -h 127.0.0.1 -u root -e "select 1" >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            echo "services: MariaDB does not accept root without a password on 127.0.0.1" >&2
            return 1
        fi
        mariadb -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
            GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; -- drf-llm-keys tests"
        mariadb -h 127.0.0.1 -u root -e "select 1" >/dev/null
    fi
}

# A PostgreSQL streaming standby of the server on 5432, for tests/test_replicas.py: a
# physical copy (pg_basebackup -R) in $STANDBY_DIR, run by the postgres OS user on
# 127.0.0.1:5433. It replays each commit no sooner than recovery_min_apply_delay after the
# primary made it (0 here); a test sets the lag it wants, as superuser on the standby:
#   psql -h 127.0.0.1 -p 5433 -U root -d postgres \
#       -c "ALTER SYSTEM SET recovery_min_apply_delay = '500ms'" -c "SELECT pg_reload_conf()"
STANDBY_DIR=/tmp/drf-llm-keys-standby
STANDBY_PORT=5433

as_postgres() {  # command...: as the postgres OS user, the owner of the data directories
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_standby() {
    start_postgres
    if answers 127.0.0.1 "$STANDBY_PORT"; then
        if [ "$(psql -h 127.0.0.1 -p "$STANDBY_PORT" -U root -d postgres -Atc 'select pg_is_in_recovery()')" = t ]; then
            return 0
        fi
        echo "services: port $STANDBY_PORT answers, but not as a standby" >&2
        return 1
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    bin=/usr/lib/postgresql/$version/bin
    primary="psql -h 127.0.0.1 -U root -d postgres -Atc"
    # Replication connections match only "replication" lines of pg_hba.conf.
    hba=$($primary "show hba_file")
    if ! grep -q "^host *replication .*drf-llm-keys" "$hba"; then
        if [ "$(id -u)" != 0 ]; then
            echo "services: add 'host replication root 127.0.0.1/32 trust' to $hba (as root)" >&2
            return 1
        fi
        sed -i '1i host replication root 127.0.0.1/32 trust # drf-llm-keys standby' "$hba"
        $primary "select pg_reload_conf()" >/dev/null
    fi
    # Not running: a new copy, since the primary may have recycled the WAL an old one needs.
    rm -rf "$STANDBY_DIR"
    install -d -m 700 -o postgres -g postgres "$STANDBY_DIR"
    as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p 5432 -U root -D "$STANDBY_DIR/data" -R -X stream -c fast
    # Debian keeps the primary's configuration outside its data directory: the copy gets its
    # own. A hot standby needs at least the primary's values of these settings.
    {
        echo "port = $STANDBY_PORT"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$STANDBY_DIR'"
        echo "hot_standby = on"
        echo "shared_buffers = 32MB"
        for name in max_connections max_worker_processes max_wal_senders max_prepared_transactions \
            max_locks_per_transaction; do
            echo "$name = $($primary "show $name")"
        done
    } | as_postgres tee "$STANDBY_DIR/data/postgresql.conf" >/dev/null
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' \
        | as_postgres tee "$STANDBY_DIR/data/pg_hba.conf" >/dev/null
    as_postgres "$bin/pg_ctl" -D "$STANDBY_DIR/data" -l "$STANDBY_DIR/standby.log" -w start >/dev/null
    wait_for "PostgreSQL standby" 127.0.0.1 "$STANDBY_PORT"
}

install_bench_tools() {
    # Elsewhere: brew install wrk redis (valgrind: Linux only), or build wrk from
    # https://github.com/wg/wrk with make.
    command -v wrk >/dev/null || apt_install wrk
    command -v redis-server >/dev/null || apt_install redis-server
    command -v valgrind >/dev/null || apt_install valgrind
}

install_browser() {
    # Debian's packages; elsewhere a Chrome or Chromium with the chromedriver of its version.
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
    apt_install chromium chromium-driver
}

case "${1:-start}" in
    start) start_redis; start_postgres; start_mariadb; install_browser
        echo "services: Redis, PostgreSQL and MariaDB are up; Chromium is installed" ;;
    browser) install_browser; echo "services: chromium and chromedriver are installed" ;;
    standby) start_standby; echo "services: PostgreSQL standby of 127.0.0.1:5432 is up on 127.0.0.1:$STANDBY_PORT" ;;
    bench) install_bench_tools; echo "services: wrk, redis-server and valgrind are installed" ;;
    status) answers 127.0.0.1 6379 && answers 127.0.0.1 5432 && answers 127.0.0.1 3306 ;;
    *) echo "usage: $0 start|standby|bench|browser|status" >&2; exit 2 ;;
esac
