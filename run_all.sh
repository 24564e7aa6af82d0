#!/usr/bin/env bash
# Regenerate every table, figure and REPORT.md at one profile (default: quick; profiles in README.md).
#   bash run_all.sh [--profile smoke|quick|paper] [--datasets cifar10,imagenette] [--jobs N]
#                   [--from data|train|notebooks|report] [--data-dir DIR] [--device auto|cpu|cuda]
#                   [--amp auto|on|off] [--notebooks DIR] [--force]
# Stages: data (decode and fix the evaluation indices), train (the method's chain), notebooks
# (papermill per dataset into outputs/<profile>/<dataset>/, progress bars as text and outputs tidied
# for committing; records to results/<profile>/, figures to figures/<profile>/), report
# (tables/<profile>/ and REPORT.md). A notebook whose executed copy
# is newer than it and than atop_core/ is skipped (--force reruns it); evaluations resume from
# their records anyway. Stops at the first failing notebook, naming it and its log. --amp sets
# ATOP_AMP: bf16 autocast for attacks and training (auto: on for CUDA; atop_core/precision.py).
set -euo pipefail
cd "$(dirname "$0")"

profile=quick
datasets=""
jobs=1
from=data
device=auto
notebooks=notebooks
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --datasets) datasets="${2//,/ }"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --notebooks) notebooks="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --data-dir) export ATOP_DATA_DIR="$(cd "$2" && pwd)"; shift 2 ;;
    --amp) export ATOP_AMP="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_all: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$from" in data|train|notebooks|report) ;; *)
  echo "run_all: --from must be data, train, notebooks or report, got '$from'" >&2; exit 2 ;;
esac
case "${ATOP_AMP:-auto}" in auto|on|off) ;; *)
  echo "run_all: --amp (or ATOP_AMP) must be auto, on or off, got '$ATOP_AMP'" >&2; exit 2 ;;
esac

source scripts/bootstrap_env.sh
start=$SECONDS
home="${ATOP_HOME:-$PWD}"
echo "run_all: profile=$profile jobs=$jobs from=$from ATOP_DATA_DIR=${ATOP_DATA_DIR:-unset}"
selection=()
[ -n "$datasets" ] && selection=(--datasets $datasets)

stage_index() { case "$1" in data) echo 0 ;; train) echo 1 ;; notebooks) echo 2 ;; *) echo 3 ;; esac; }
stage_reached() { [ "$(stage_index "$1")" -ge "$(stage_index "$from")" ]; }

stage_reached data && python -m atop_core prepare-data --profile "$profile" "${selection[@]}"
# The datasets that can run here (CIFAR-100 has no offline copy: prepare-data says why).
ready=$(python -m atop_core ready-datasets --profile "$profile" "${selection[@]}")
echo "run_all: datasets ready here: ${ready:-none}"
stage_reached train && python -m atop_core train --profile "$profile" --device "$device" \
  "${selection[@]}"

newest_source=$(find atop_core -name '*.py' -printf '%T@\n' | sort -n | tail -1)
run_notebook() {  # run_notebook NAME DATASET [papermill -p pairs...]: execute one notebook
  local name="$1" dataset="$2"; shift 2
  local suffix="" args=(-p profile "$profile" -p device "$device")
  [ -n "$dataset" ] && args+=(-p dataset "$dataset")
  while [ $# -gt 0 ]; do args+=(-p "$1" "$2"); suffix="${suffix}_$2"; shift 2; done
  local out_dir="$home/outputs/$profile/${dataset:-all}"
  local out="$out_dir/${name%.ipynb}$suffix.ipynb" log="$out_dir/${name%.ipynb}$suffix.log"
  mkdir -p "$out_dir"
  if [ "$force" = 0 ] && [ -f "$out" ] && [ "$out" -nt "$notebooks/$name" ] \
     && [ "$(stat -c %Y "$out")" -ge "${newest_source%.*}" ]; then
    echo "run_all: up to date, skipped: $out"; return 0
  fi
  echo "run_all: running $notebooks/$name ${args[*]} -> $out"
  local began=$SECONDS
  if ! ATOP_PROGRESS=text python -m papermill "$notebooks/$name" "$out" "${args[@]}" -k python3 \
       --log-level WARNING >"$log" 2>&1 || ! python -m atop_core.jupyter "$out" >>"$log" 2>&1; then
    echo "run_all: FAILED: notebook $notebooks/$name (dataset ${dataset:-all}); log: $log" >&2
    tail -n 20 "$log" | tr '\r' '\n' | grep -v 'it/s\|s/it' | tail -n 12 >&2
    return 1
  fi
  echo "run_all: finished $out in $((SECONDS - began)) s"
}

run_group() {  # run_group "NAME DATASET [k v ...]" ...: up to --jobs at a time, stop on failure
  local pids=() specs=() spec failed=0
  for spec in "$@"; do
    # shellcheck disable=SC2086
    run_notebook $spec & pids+=($!); specs+=("$spec")
    if [ ${#pids[@]} -ge "$jobs" ]; then
      wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}")
      [ "$failed" = 1 ] && break
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || { echo "run_all: stopped at the first failing notebook (above)" >&2; exit 1; }
}

# The attack-suite notebook runs every attack in the registry on three defenses: at quick, 16
# images bound its cost on 2 CPU cores (0: the profile's table size). At quick CIFAR-10's ablation
# runs the whole-model protocol only: its classifier-only half (32 images a cell) decides nothing
# that the claims' C5 (512 images) does not; ImageNette's runs both (Table 8 has no other
# classifier-only numbers at that scale). At quick, ImageNette (64 px: four times CIFAR's pixels
# per image) runs the chain, Table 8 and the claims its scale decides (the profile's per_dataset),
# not the attack suite, the missing-rate and the generalization notebooks.
suite_n=0
ablation_protocols=classifier-only,whole-model
if [ "$profile" = quick ]; then suite_n=16; ablation_protocols=whole-model; fi
dataset_notebooks() {  # dataset_notebooks DATASET: its evaluation notebooks, one spec a line
  echo "80_claims.ipynb $1 purifier ae"
  if [ "$profile" = quick ] && [ "$1" = imagenette ]; then
    echo "50_rt_ablation.ipynb $1 purifier gan protocols classifier-only,whole-model"
    return
  fi
  echo "50_rt_ablation.ipynb $1 purifier gan protocols $ablation_protocols"
  echo "60_missing_rate_mix_number.ipynb $1"
  echo "70_generalization.ipynb $1"
  echo "40_evaluate_attacks.ipynb $1 purifier ae n $suite_n"
}
if stage_reached notebooks; then
  shopt -s nullglob
  custom=("$notebooks"/*.ipynb)
  if [ "$notebooks" != notebooks ]; then  # a user's folder: run each notebook once per dataset
    for dataset in $ready; do
      for nb in "${custom[@]}"; do run_group "$(basename "$nb") $dataset"; done
    done
  else
    for dataset in $ready; do
      began_dataset=$SECONDS
      run_group "10_train_classifier.ipynb $dataset"
      run_group "20_pretrain_purifier.ipynb $dataset purifier gan" \
                "20_pretrain_purifier.ipynb $dataset purifier ae"
      run_group "30_atop_finetune.ipynb $dataset purifier gan" \
                "30_atop_finetune.ipynb $dataset purifier ae"
      mapfile -t specs < <(dataset_notebooks "$dataset")
      run_group "${specs[@]}"
      echo "run_all: $dataset notebooks done in $((SECONDS - began_dataset)) s"
    done
  fi
fi
if stage_reached report && [ "$notebooks" = notebooks ]; then
  first=$(echo "$ready" | awk '{print $1}')
  run_group "90_tables_and_figures.ipynb ${first:-cifar10}"
fi
echo "run_all: records in results/$profile/, figures in figures/$profile/, tables in tables/$profile/"
echo "run_all: executed notebooks in outputs/$profile/; done in $((SECONDS - start)) s"
