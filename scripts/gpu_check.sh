#!/usr/bin/env bash
# The one command to run whenever a GPU is at hand: the CUDA tests and the speed figures of
# docs/BENCHMARKS.md, in under 8 minutes on one H100 or H200.
#
#   scripts/gpu_check.sh [--out FILE] [--python PY] [--budget SECONDS] [--cpu-dry-run]
#
# Runs from the repository root with the machine's own python (torch, torchvision, tensorboard;
# no venv, no internet) and PYTHONPATH=. Steps, most important first:
#   the CUDA tests (pytest -m "cuda or two_gpus");
#   bench train --compare torchvision [--compare no_lrn] at batch 512 and 128 for fp32, bf16,
#     bf16 + channels_last and bf16 + channels_last + compile (the goal: the faithful net at
#     1.0x torchvision or better at batch 512, bf16, channels_last, compile);
#   the two-device form on one GPU (parallel.devices=[cuda:0, cuda:0]);
#   bench data on the built-in set (generated and prepared here: gpu loader against cpu);
#   two epochs of the demo config; then bench lrn, bench eval and CUDA graphs
#   (runtime.compile_mode=reduce-overhead) while time is left.
# Each step has a time limit and the whole run a budget (--budget, default 450 s); a failing,
# timed-out or skipped step is reported in the table and the rest still run. Prints one
# markdown table and writes it to --out (default gpu_check.md); logs and the generated data
# stay in a new folder under ${TMPDIR:-/tmp}, named at the end.
#
# --cpu-dry-run runs every step on the CPU with tiny sizes (no budget), so a typo is found
# before a GPU session is spent on it.
set -u

OUT=gpu_check.md
PY=python3
BUDGET=450
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --cpu-dry-run) DRY=1; BUDGET=100000; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
MANIFEST="$WORK/steps.tsv"
: > "$MANIFEST"
START=$SECONDS

if [ "$DRY" = 1 ]; then
  BIG=8; SMALL=4; DEV=cpu; TWO="[cpu,cpu]"; EVAL_BATCH=2; LRN_SHAPE=4,96,27,27
  TIMING=(--steps 1 --rounds 1 --warmup 1)
  DATA=(--classes 2 --train-per-class 8 --val-per-class 2)
  LOADERS=(--batch-size 4 --steps 2 --format-images 8 --workers 1)
  DEMO=(--set train.steps_per_epoch=2 --set train.batch_size=4 --set eval.batch_size=4
    --set model.num_classes=2)
else
  BIG=512; SMALL=128; DEV=cuda; TWO="[cuda:0,cuda:0]"; EVAL_BATCH=128; LRN_SHAPE=512,96,55,55
  TIMING=(--steps 10 --rounds 5 --warmup 3)
  DATA=()
  LOADERS=(--steps 20)
  DEMO=()
fi

# step NAME KIND SETTING LIMIT COMMAND...: run it with a time limit, log it, record the outcome.
# KIND tells the summary how to read the result: text (last log line), json (bench figures),
# loaders (bench data's table), epoch (the last epoch line of a training run).
step() {
  local name=$1 kind=$2 setting=$3 limit=$4
  shift 4
  local n log json left status begin rc
  n=$(printf '%02d' "$(($(wc -l < "$MANIFEST") + 1))")
  log="$WORK/$n-$name.log"
  json="$WORK/$n-$name.json"
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$setting" "skipped: time budget" 0 \
      "$log" "$json" >> "$MANIFEST"
    echo "[$n] $name: skipped (time budget)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  [ "$kind" = json ] && set -- "$@" --json "$json"
  echo "[$n] $name ($setting): $*"
  begin=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timeout after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$setting" "$status" \
    "$((SECONDS - begin))" "$log" "$json" >> "$MANIFEST"
  echo "     $status in $((SECONDS - begin)) s"
}

train() {  # train NAME SETTING LIMIT [--compare ...] [--set ...]
  local name=$1 setting=$2 limit=$3
  shift 3
  step "$name" json "$setting" "$limit" "$PY" -m alexnet.bench train "${TIMING[@]}" \
    --compare torchvision "$@"
}

BF16=(--set runtime.dtype=bfloat16)
CL=(--set runtime.channels_last=true)
COMPILE=(--set runtime.compile=true)

step environment text "versions" 60 "$PY" -c "import torch, torchvision; \
print(torch.__version__, torchvision.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
if [ "$DRY" = 1 ]; then
  step tests text "pytest, CUDA tests (collected only)" 120 "$PY" -m pytest -q \
    -p no:cacheprovider -m "cuda or two_gpus" --collect-only
else
  step tests text "pytest -m 'cuda or two_gpus'" 150 "$PY" -m pytest -q -p no:cacheprovider \
    -m "cuda or two_gpus"
fi
train "train-b$BIG-bf16-cl-compile" "batch $BIG, bf16, channels_last, compile" 200 \
  --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}" "${COMPILE[@]}"
for batch in $BIG $SMALL; do
  train "train-b$batch-fp32" "batch $batch, fp32" 60 --compare no_lrn \
    --set train.batch_size=$batch
  train "train-b$batch-bf16" "batch $batch, bf16" 60 --compare no_lrn \
    --set train.batch_size=$batch "${BF16[@]}"
  train "train-b$batch-bf16-cl" "batch $batch, bf16, channels_last" 60 --compare no_lrn \
    --compare former_lrn --set train.batch_size=$batch "${BF16[@]}" "${CL[@]}"
done
train "train-b$SMALL-bf16-cl-compile" "batch $SMALL, bf16, channels_last, compile" 150 \
  --set train.batch_size=$SMALL "${BF16[@]}" "${CL[@]}" "${COMPILE[@]}"
train "train-two-device" "two_device on one GPU, batch $SMALL, bf16" 60 \
  --set parallel.mode=two_device --set "parallel.devices=$TWO" --set train.batch_size=$SMALL \
  "${BF16[@]}"
step data-prepare text "built-in set: generate + prepare" 150 bash -c \
  "'$PY' -m alexnet.synthetic '$WORK/synthetic' ${DATA[*]} && \
   '$PY' -m alexnet.prepare '$WORK/synthetic' '$WORK/prepared'"
step bench-data loaders "built-in set, loaders (gpu vs cpu)" 90 "$PY" -m alexnet.bench data \
  --data "$WORK/prepared" --raw "$WORK/synthetic" "${LOADERS[@]}"
step demo epoch "configs/demo.yaml, 2 epochs" 180 "$PY" -m alexnet.train --config configs/demo.yaml \
  --no-progress --set "data.root=$WORK/prepared" --set "run.dir=$WORK/demo-run" \
  --set train.epochs=2 "${DEMO[@]}"
step lrn json "LRN fwd+bwd, ${LRN_SHAPE}, bf16, channels_last" 60 "$PY" -m alexnet.bench lrn \
  --device $DEV --dtype bfloat16 --channels-last --shape $LRN_SHAPE
step eval json "10 views, eval batch $EVAL_BATCH, bf16, channels_last" 60 "$PY" -m alexnet.bench \
  eval "${TIMING[@]}" --compare torchvision --set eval.batch_size=$EVAL_BATCH \
  --set runtime.eval_dtype=bfloat16 "${CL[@]}"
train "train-b$BIG-cudagraphs" "batch $BIG, bf16, channels_last, compile reduce-overhead" 200 \
  --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}" "${COMPILE[@]}" \
  --set runtime.compile_mode=reduce-overhead

# One markdown table from the manifest: figures from the JSON files, else the log's last line.
"$PY" - "$MANIFEST" "$OUT" "$((SECONDS - START))" "$WORK" <<'EOF'
import json, os, sys
manifest, out, seconds, work = sys.argv[1:]

def result(kind, log, path):
    if kind == "json" and os.path.exists(path):
        fig = json.load(open(path))
        if "ratio_to_torchvision" in fig:
            med, ratio = fig["median"], fig["ratio_to_torchvision"]
            parts = [f"{n} {med[n]:,.0f} img/s" + (f" ({ratio[n]:.2f}x)" if n in ratio else "")
                     for n in med]
            return "; ".join(parts)
        if "ms" in fig:
            return "; ".join(f"{n} {v:.2f} ms" for n, v in fig["median"].items())
    if not os.path.exists(log):
        return ""
    lines = [l.strip() for l in open(log, errors="replace") if l.strip()]
    if kind == "epoch" and any(l.startswith("epoch ") for l in lines):
        lines = [l for l in lines if l.startswith("epoch ")]
    if kind == "loaders":  # "name  workers  device  images/s" rows of bench data's table
        rows = [l.rsplit(None, 3) for l in lines if l.startswith(("packed,", "ImageFolder"))]
        rows = [r for r in rows if len(r) == 4 and r[3].replace(".", "", 1).isdigit()]
        if rows:
            return "; ".join(f"{r[0]} {float(r[3]):,.0f} img/s" for r in rows)
    return lines[-1][:160].replace("|", "/") if lines else ""

rows = ["| step | setting | result | status | s |", "|---|---|---|---|---|"]
for line in open(manifest):
    name, kind, setting, status, secs, log, path = line.rstrip("\n").split("\t")
    try:
        text = result(kind, log, path)
    except (OSError, ValueError, KeyError) as err:  # a half-written log must not hide the rest
        text = f"(unreadable: {err})"
    rows.append(f"| {name} | {setting} | {text} | {status} | {secs} |")
table = "\n".join(rows)
head = f"scripts/gpu_check.sh: {seconds} s; logs in {work}\n\n"
print("\n" + head + table)
with open(out + ".tmp", "w") as f:
    f.write(head + table + "\n")
os.replace(out + ".tmp", out)
EOF

# Exit 1 when a step failed or timed out (skipped steps do not count).
! cut -f4 "$MANIFEST" | grep -qE '^(failed|timeout)'
