#!/bin/sh
# Nightly backup of the clinic CRM's database (README: Backups). Run as a user whose
# ~/.pgpass holds the OWNER role's password, e.g. from cron:
#   15 2 * * *  /opt/clinic-crm/deploy/backup.sh postgres://crm_owner@dbhost/crm /var/backups/crm
# Keeps KEEP_DAYS days (default 35) of custom-format dumps. The dump holds patient data only
# encrypted, but it is still the clinic's records: keep it on encrypted storage, off this host.
# The keys are NOT in it: without FIELD_ENCRYPTION_KEYS and BLIND_INDEX_KEY a dump is useless,
# so keep the keys (separately) in the clinic's safe.
set -eu
url="$1"
dir="$2"
keep="${KEEP_DAYS:-35}"
mkdir -p "$dir"
file="$dir/crm-$(date -u +%Y%m%dT%H%M%SZ).dump"
pg_dump --format=custom --file="$file.part" "$url"
mv "$file.part" "$file"
find "$dir" -name 'crm-*.dump' -mtime +"$keep" -delete
echo "$file"
