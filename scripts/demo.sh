#!/usr/bin/env bash
# The main job on the embedded default (SQLite records, SQLite broker, one local worker,
# the API on 127.0.0.1): the sample end to end through the REST API, then everything stops.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
gistnet demo "$@"
