#!/usr/bin/env bash
# The one command to run whenever a GPU is at hand: the CUDA tests and the speed figures of
# docs/BENCHMARKS.md, in about 6 minutes on one H100 or H200, so that one GPU window has room
# to run it twice.
#
#   scripts/gpu_check.sh [--out FILE] [--python PY] [--budget SECONDS] [--cpu-dry-run]
#
# Runs from the repository root with the machine's own python (torch, torchvision, tensorboard;
# no venv, no internet) and PYTHONPATH=. Steps, most valuable first:
#   the CUDA tests (pytest -m "cuda or two_gpus");
#   bench train at batch 512, bf16, channels_last, compile against torchvision (the goal: the
#     faithful net at 0.8x torchvision or better);
#   end to end from real JPEG shards (.gpu_data/photos, made here by scripts/gpu_data.py and
#     carried; else the built-in set, generated and prepared on the spot): the training step
#     fed by the gpu loader and by the cpu loader, each beside synthetic input at the same
#     settings, with the projected hours for 90 ImageNet epochs;
#   bench lrn (each kernel against its traffic floor); eager bf16 + channels_last against
#     torchvision, without LRN and with the former LRN, and with each form of the tower-local
#     convolutions; fp32; 10-view evaluation; CUDA graphs (compile reduce-overhead, batch 128);
#     the two-device form on one GPU.
# Each step has a time limit and the whole run a budget (--budget, default 360 s); a failing,
# timed-out or skipped step is reported in the table and the rest still run. Prints one
# markdown table and writes it to --out (default gpu_check.md); logs and generated data stay in
# a new folder under ${TMPDIR:-/tmp}, named at the end.
#
# --cpu-dry-run runs every step on the CPU with tiny sizes (no budget), so a typo is found
# before a GPU session is spent on it.
set -u

OUT=gpu_check.md
PY=python3
BUDGET=360
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --cpu-dry-run) DRY=1; BUDGET=100000; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
  BIG=8; SMALL=4; DEV=cpu; TWO="[cpu,cpu]"; EVAL_BATCH=2
  LRN_SHAPES=(--shape 4,96,27,27 --shape 4,256,13,13)
  TIMING=(--steps 1 --rounds 1 --warmup 1)
  DATA=(--classes 2 --train-per-class 8 --val-per-class 2)
  WORKERS=1
else
  BIG=512; SMALL=128; DEV=cuda; TWO="[cuda:0,cuda:0]"; EVAL_BATCH=128
  LRN_SHAPES=(--shape 512,96,55,55 --shape 512,256,27,27)  # LRN1 and LRN2 at batch 512
  TIMING=(--steps 8 --rounds 3 --warmup 2)
  DATA=(--classes 10 --train-per-class 60 --val-per-class 2)
  WORKERS=$(nproc)
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
  step "$name" json "$setting" "$limit" "$PY" -m alexnet.bench train "${TIMING[@]}" "$@"
}

BF16=(--set runtime.dtype=bfloat16)
CL=(--set runtime.channels_last=true)
COMPILE=(--set runtime.compile=true)

step environment text "versions" 30 "$PY" -c "import torch, torchvision; \
print(torch.__version__, torchvision.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
if [ "$DRY" = 1 ]; then
  step tests text "pytest, CUDA tests (collected only)" 120 "$PY" -m pytest -q \
    -p no:cacheprovider -m "cuda or two_gpus" --collect-only
else
  step tests text "pytest -m 'cuda or two_gpus'" 100 "$PY" -m pytest -q -p no:cacheprovider \
    -m "cuda or two_gpus"
fi
train "train-b$BIG-bf16-cl-compile" "batch $BIG, bf16, channels_last, compile" 120 \
  --compare torchvision --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}" "${COMPILE[@]}"

# Real photos: carried (scripts/gpu_data.py) or, without them, the built-in set made here.
PHOTOS=.gpu_data/photos
if [ ! -f "$PHOTOS/meta.json" ]; then
  PHOTOS="$WORK/prepared"
  step data-prepare text "built-in set: generate + prepare (no .gpu_data/photos)" 60 bash -c \
    "'$PY' -m alexnet.synthetic '$WORK/synthetic' ${DATA[*]} && \
     '$PY' -m alexnet.prepare '$WORK/synthetic' '$PHOTOS' --workers $WORKERS"
fi
REAL=(--data --set "data.root=$PHOTOS" --set "data.workers=$WORKERS")
for loader in gpu cpu; do
  train "end-to-end-$loader" "batch $BIG, bf16, channels_last, $loader loader vs synthetic" 60 \
    "${REAL[@]}" --set data.loader=$loader --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}"
done
step lrn json "LRN1 + LRN2 kernels, batch $BIG, bf16, channels_last" 40 "$PY" -m alexnet.bench \
  lrn --device $DEV --dtype bfloat16 --channels-last "${LRN_SHAPES[@]}"
train "train-b$BIG-bf16-cl" "batch $BIG, bf16, channels_last, eager" 40 --compare torchvision \
  --compare no_lrn --compare former_lrn --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}"
for form in grouped block_diagonal per_tower; do
  train "tower-conv-$form" "batch $BIG, bf16, channels_last, runtime.tower_conv=$form" 30 \
    --set runtime.tower_conv=$form --set train.batch_size=$BIG "${BF16[@]}" "${CL[@]}"
done
train "train-b$BIG-fp32" "batch $BIG, fp32" 30 --compare torchvision --set train.batch_size=$BIG
step eval json "10 views, eval batch $EVAL_BATCH, bf16, channels_last" 40 "$PY" -m alexnet.bench \
  eval "${TIMING[@]}" --compare torchvision --set eval.batch_size=$EVAL_BATCH \
  --set runtime.eval_dtype=bfloat16 "${CL[@]}"
train "train-b$SMALL-cudagraphs" "batch $SMALL, bf16, channels_last, compile reduce-overhead" \
  100 --compare torchvision --set train.batch_size=$SMALL "${BF16[@]}" "${CL[@]}" \
  "${COMPILE[@]}" --set runtime.compile_mode=reduce-overhead
train "train-two-device" "two_device on one GPU, batch $SMALL, bf16" 30 \
  --set parallel.mode=two_device --set "parallel.devices=$TWO" --set train.batch_size=$SMALL \
  "${BF16[@]}"

# One markdown table from the manifest: figures from the JSON files, else the log's last line.
"$PY" - "$MANIFEST" "$OUT" "$((SECONDS - START))" "$WORK" <<'EOF'
import json, os, sys, time
manifest, out, seconds, work = sys.argv[1:]
EPOCHS, IMAGENET_TRAIN = 90, 1_281_167  # the paper's run, at the measured end-to-end rate

def result(kind, log, path):
    if kind == "json" and os.path.exists(path):
        fig = json.load(open(path))
        if "ratio_to_torchvision" in fig:
            med, ratio = fig["median"], fig["ratio_to_torchvision"]
            parts = [f"{n} {med[n]:,.0f} img/s" + (f" ({ratio[n]:.2f}x)" if n in ratio else "")
                     for n in med]
            if "real_data" in fig:  # end to end: the loader feeding the step, projected
                real, synthetic = fig["real_data"], med["configured"]
                hours = EPOCHS * IMAGENET_TRAIN / real / 3600
                parts = [f"real JPEGs {real:,.0f} img/s ({real / synthetic:.2f}x synthetic "
                         f"{synthetic:,.0f}); 90 ImageNet epochs: {hours:.1f} h"]
            return "; ".join(parts)
        if "floor_ratio" in fig:  # bench lrn: the fused op and what it replaces, vs the floor
            shown = [n for n in fig["median"] if n.startswith(("LRN+pool op", "LRN op + max"))]
            return "; ".join(f"{n} {fig['median'][n]:.2f} ms ({fig['floor_ratio'][n]:.1f}x "
                             "floor)" for n in shown)
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
head = (f"scripts/gpu_check.sh, {time.strftime('%Y-%m-%d')}: {seconds} s; logs in {work}\n"
        "(the environment row names the versions and the GPU)\n\n")
print("\n" + head + table)
with open(out + ".tmp", "w") as f:
    f.write(head + table + "\n")
os.replace(out + ".tmp", out)
EOF

# Exit 1 when a step failed or timed out (skipped steps do not count).
! cut -f4 "$MANIFEST" | grep -qE '^(failed|timeout)'
