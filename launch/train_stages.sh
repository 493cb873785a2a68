#!/usr/bin/env bash
# Run the paper's recipe through the deepspeed CLI on a hostfile: stage `layout`, then stage `mixed` from
# layout's final weights. Extra arguments are Hydra overrides for both stages.
#
#   launch/train_stages.sh launch/hostfile model=kosmos-2.5 data=full tokenizer=/data/tokenizer deepspeed=zero2
#
# A stage that was interrupted resumes from its latest checkpoint when the script runs again; a finished
# stage (its model.pt exists) is skipped.
set -euo pipefail
HOSTFILE=${1:?usage: train_stages.sh <hostfile> [hydra overrides...]}
shift
cd "$(dirname "$0")/.."
DS=${DEEPSPEED:-.venv/bin/deepspeed}
PRESET=$(printf '%s\n' "$@" | sed -n 's/^model=//p' | tail -1)
PRESET=${PRESET:-tiny}
for STAGE in layout mixed; do
  if [ -f "runs/${STAGE}-${PRESET}/model.pt" ]; then
    echo "stage ${STAGE}: finished already (runs/${STAGE}-${PRESET}/model.pt)"
    continue
  fi
  "$DS" --hostfile "$HOSTFILE" --no_local_rank --module train.pretrain stage="$STAGE" "$@"
done
