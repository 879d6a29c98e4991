#!/bin/sh
# Create or upgrade Temporal's schema in PostgreSQL, before the server starts.
#
# Run by the temporal-schema service of docker-compose.yml (temporalio/admin-tools image, which
# ships temporal-sql-tool and the versioned schema files of its server release). Both steps are
# idempotent: setup-schema -v 0.0 only creates the version table when it is missing, and
# update-schema applies the versions newer than the one recorded. So the same job sets up an
# empty database on the first boot and upgrades it when the image tags are bumped.
#
# The databases themselves exist already (deploy/postgres/init.sql, owned by the temporal role),
# so this never needs superuser rights.
#
#   POSTGRES_SEEDS  host      (default postgresql)
#   DB_PORT         port      (default 5432)
#   POSTGRES_USER   role      (default temporal)
#   SQL_PASSWORD    password  (read by temporal-sql-tool from the environment, so it stays out
#                              of the process list)
#   SCHEMA_DIR      versioned schema root (default: the image's PostgreSQL 12+ schema)
set -eu

: "${POSTGRES_SEEDS:=postgresql}"
: "${DB_PORT:=5432}"
: "${POSTGRES_USER:=temporal}"
: "${SCHEMA_DIR:=/etc/temporal/schema/postgresql/v12}"

if [ -z "${SQL_PASSWORD:-}" ]; then
    echo "setup-schema.sh: SQL_PASSWORD is not set" >&2
    exit 1
fi
export SQL_PASSWORD

sql_tool() {
    temporal-sql-tool --plugin postgres12 --endpoint "$POSTGRES_SEEDS" --port "$DB_PORT" \
        --user "$POSTGRES_USER" "$@"
}

# database  schema directory under $SCHEMA_DIR
for pair in temporal:temporal temporal_visibility:visibility; do
    database=${pair%%:*}
    schema=${pair#*:}
    echo "schema of $database: setting up"
    sql_tool --database "$database" setup-schema -v 0.0
    echo "schema of $database: updating from $SCHEMA_DIR/$schema/versioned"
    sql_tool --database "$database" update-schema -d "$SCHEMA_DIR/$schema/versioned"
done
echo "Temporal schema ready"
