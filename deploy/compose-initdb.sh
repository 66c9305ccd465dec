#!/bin/sh
# Run once by the postgres image on an empty data directory: the database and its two roles.
set -eu
psql -v ON_ERROR_STOP=1 -U postgres -d postgres \
  -v db=crm -v owner=crm_owner -v app=crm_app \
  -v owner_password="$CRM_OWNER_PASSWORD" -v app_password="$CRM_APP_PASSWORD" \
  -f /deploy/postgres-roles.sql
