#!/bin/bash
# healthcheck.sh of the MariaDB stand-in image: exit 0 once the server (not the initialising
# one, which has no network) answers a query on InnoDB; the upstream options (--connect,
# --innodb_initialized) are accepted and this is what they check together.
exec mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -uroot -p"${MARIADB_ROOT_PASSWORD:-}" -N -e \
    "SELECT 1 FROM information_schema.ENGINES WHERE ENGINE = 'InnoDB' AND SUPPORT IN ('YES', 'DEFAULT')" \
    >/dev/null 2>&1
