#!/bin/sh
# Prepare the namespace stead runs in: create it when missing, then register the search
# attributes stead sets on every run, so the Web UI and `temporal workflow list --query ...`
# can filter on them (e.g. SteadAwaitingApproval = true).
#
# Run once by the temporal-admin-tools service of docker-compose.yml; safe to run again: an
# existing namespace is left as it is, an attribute that already exists with the right type is
# left alone, one with another type fails the run (stead would write values the cluster cannot
# index).
#
#   TEMPORAL_ADDRESS     frontend host:port                 (default temporal:7233)
#   TEMPORAL_NAMESPACE   namespace                          (default default)
#   NAMESPACE_RETENTION  how long closed runs are kept,
#                        when the namespace is created here (default 168h)
#   WAIT_SECONDS         how long to wait for the server    (default 180)
set -eu

: "${TEMPORAL_ADDRESS:=temporal:7233}"
: "${TEMPORAL_NAMESPACE:=default}"
: "${NAMESPACE_RETENTION:=168h}"
: "${WAIT_SECONDS:=180}"
export TEMPORAL_ADDRESS TEMPORAL_NAMESPACE

# name type, one per line: the contract in DESIGN.md ("Search attributes on every run").
ATTRIBUTES='
SteadAgent Keyword
SteadTenant Keyword
SteadAwaitingApproval Bool
SteadRisk Double
'

wait_for() {
    what=$1
    shift
    waited=0
    until "$@" >/dev/null 2>&1; do
        if [ "$waited" -ge "$WAIT_SECONDS" ]; then
            echo "gave up after ${WAIT_SECONDS}s waiting for $what at $TEMPORAL_ADDRESS" >&2
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
}

is_registered() {
    temporal operator search-attribute list --namespace "$TEMPORAL_NAMESPACE" |
        awk -v name="$1" -v type="$2" '$1 == name && $2 == type { found = 1 } END { exit !found }'
}

echo "waiting for Temporal at $TEMPORAL_ADDRESS"
wait_for "a healthy frontend" temporal operator cluster health

if temporal operator namespace describe --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
    echo "namespace $TEMPORAL_NAMESPACE exists"
else
    temporal operator namespace create --namespace "$TEMPORAL_NAMESPACE" \
        --retention "$NAMESPACE_RETENTION"
    echo "created namespace $TEMPORAL_NAMESPACE (retention $NAMESPACE_RETENTION)"
fi
# The frontend's namespace cache takes a moment to see a new namespace: listing its search
# attributes succeeds once it does.
wait_for "namespace $TEMPORAL_NAMESPACE" \
    temporal operator search-attribute list --namespace "$TEMPORAL_NAMESPACE"

echo "$ATTRIBUTES" | while read -r name type; do
    [ -n "$name" ] || continue
    if temporal operator search-attribute create --namespace "$TEMPORAL_NAMESPACE" \
        --name "$name" --type "$type"; then
        echo "registered $name ($type)"
    elif is_registered "$name" "$type"; then
        # Older servers refuse to re-create an attribute instead of treating it as a no-op.
        echo "already registered: $name ($type)"
    else
        echo "could not register $name as $type (does it exist with another type?)" >&2
        exit 1
    fi
done

echo "$ATTRIBUTES" | while read -r name type; do
    [ -n "$name" ] || continue
    if ! is_registered "$name" "$type"; then
        echo "missing after registration: $name ($type)" >&2
        exit 1
    fi
done
echo "search attributes ready in namespace $TEMPORAL_NAMESPACE"
