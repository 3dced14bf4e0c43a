#!/usr/bin/env bash
# How midline's default model is made: every midline-train stage, with the choices its card records.
#
#   training/default_model.sh WORK [OUT]     WORK: scratch space; OUT: the exported model (default model/default)
#
# 1. corpus and tokenizer (the Python files of this environment, a 16k byte-level BPE);
# 2. an ablation, unless ABLATE=0: three short runs side by side on the same GPU (uniform FIM spans vs
#    line spans, AdamW vs Muon), each evaluated on the same held-out infilling tasks; the recipe with the
#    best mean exact match over single-line, multi-line and random-span holes wins;
# 3. the long run with the winning recipe, its evaluation, and the export (the ablation table goes
#    into the model card).
# Every stage resumes where it stopped: after a kill, run the same command again.
set -euo pipefail
work=${1:?usage: training/default_model.sh WORK [OUT]}
out=${2:-model/default}
PRESET=${PRESET:-28m}           # model shape (training/train.py PRESETS)
TOKENS=${TOKENS:-5e8}           # tokens seen by the long run
VOCAB=${VOCAB:-16384}
ABLATE=${ABLATE:-1}
ABLATION_PRESET=${ABLATION_PRESET:-20m}
ABLATION_TOKENS=${ABLATION_TOKENS:-5e7}
ABLATION_ARGS=${ABLATION_ARGS:---warmup-steps 60}
LINE_SPAN_RATE=${LINE_SPAN_RATE:-0.5}  # used when ABLATE=0
OPTIMIZER=${OPTIMIZER:-adamw}          # used when ABLATE=0
SOURCES=${SOURCES:-}             # corpus sources (default: this Python's stdlib and site-packages)
PER_KIND=${PER_KIND:-100}       # evaluation tasks per kind
TRAIN_ARGS=${TRAIN_ARGS:-}      # extra flags for every training run (smoke tests: a small batch)
DATA_ARGS=${DATA_ARGS:-}        # extra flags for the data stage (smoke tests: a short --seq-len)
EVAL="--per-kind $PER_KIND --max-new-tokens 128"
mkdir -p "$work"
stage() { echo "== $(date +%T) $*" >&2; }

stage corpus
midline-train corpus --out "$work/corpus" ${SOURCES:+--sources $SOURCES}
stage tokenizer
midline-train tokenizer --corpus "$work/corpus" --vocab-size "$VOCAB" --out "$work/tokenizer"

data() {  # data DIR LINE_SPAN_RATE
  [ -f "$1/meta.json" ] && grep -q '"complete": true' "$1/meta.json" && return
  midline-train data --corpus "$work/corpus" --tokenizer "$work/tokenizer" --out "$1" --line-span-rate "$2" $DATA_ARGS >"$1.log" 2>&1
}
run() {  # run NAME PRESET TOKENS LINE_SPAN_RATE OPTIMIZER [TRAIN FLAGS]: train, then evaluate on the shared task file
  local dir="$work/$1"
  data "$work/data-span$4" "$4"
  midline-train train --data "$work/data-span$4" --out "$dir" --preset "$2" --tokens "$3" --optimizer "$5" $TRAIN_ARGS ${6:-} >"$dir.log" 2>&1
  midline-train evaluate --model "$dir/model" --corpus "$work/corpus" --tasks "$work/tasks.jsonl" $EVAL --out "$dir/eval.json" >"$dir.eval.log" 2>&1
}
score() {  # mean exact match over the editor-like hole kinds
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["metrics"]; print(sum(m[k]["exact_match"] for k in ("single_line","multi_line","random_span"))/3)' "$1"
}

if [ "$ABLATE" = 1 ]; then
  stage ablation data
  data "$work/data-span0" 0 & data "$work/data-span0.5" 0.5 & wait
  stage "ablation runs ($ABLATION_PRESET, $ABLATION_TOKENS tokens each, side by side)"
  midline-train evaluate --corpus "$work/corpus" --tasks "$work/tasks.jsonl" $EVAL --tasks-only
  run ablate-uniform-adamw "$ABLATION_PRESET" "$ABLATION_TOKENS" 0 adamw "$ABLATION_ARGS" &
  run ablate-lines-adamw "$ABLATION_PRESET" "$ABLATION_TOKENS" 0.5 adamw "$ABLATION_ARGS" &
  run ablate-lines-muon "$ABLATION_PRESET" "$ABLATION_TOKENS" 0.5 muon "$ABLATION_ARGS" &
  wait
  {
    echo "| run | FIM middles | optimizer | exact match (single / multi / span) | edit similarity | val nats/token |"
    echo "|---|---|---|---|---|---|"
    for name in uniform-adamw lines-adamw lines-muon; do
      python3 - "$work/ablate-$name/eval.json" "$name" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); m = r["metrics"]; name = sys.argv[2]
spans, opt = name.split("-")
em = " / ".join(f"{m[k]['exact_match']:.3f}" for k in ("single_line", "multi_line", "random_span"))
loss = r["loss"]["nats_per_token"] if r.get("loss") else float("nan")
print(f"| {name} | {'uniform' if spans == 'uniform' else 'half line spans'} | {opt} | {em} | {m['overall']['edit_similarity']:.3f} | {loss:.3f} |")
EOF
    done
  } >"$work/ablation.md"
  cat "$work/ablation.md" >&2
  best() { for name in "$@"; do echo "$(score "$work/ablate-$name/eval.json") $name"; done | sort -g | tail -1 | cut -d' ' -f2; }
  [ "$(best uniform-adamw lines-adamw)" = lines-adamw ] && LINE_SPAN_RATE=0.5 || LINE_SPAN_RATE=0
  [ "$(best lines-adamw lines-muon)" = lines-muon ] && OPTIMIZER=muon || OPTIMIZER=adamw
fi

name="run-$PRESET-span$LINE_SPAN_RATE-$OPTIMIZER"
stage "long run $name: $TOKENS tokens"
run "$name" "$PRESET" "$TOKENS" "$LINE_SPAN_RATE" "$OPTIMIZER"
stage export
midline-train export --run "$work/$name" --out "$out" --corpus "$work/corpus" --data "$work/data-span$LINE_SPAN_RATE" \
  --eval "$work/$name/eval.json" --command "PRESET=$PRESET TOKENS=$TOKENS ABLATE=$ABLATE training/default_model.sh WORK"
if [ -f "$work/ablation.md" ]; then
  printf '\n## Recipe choices, measured\n\nShort runs side by side (%s, %s tokens each), the same held-out tasks:\n\n' \
    "$ABLATION_PRESET" "$ABLATION_TOKENS" >>"$out/README.md"
  cat "$work/ablation.md" >>"$out/README.md"
  printf '\nChosen: line-span rate %s, %s.\n' "$LINE_SPAN_RATE" "$OPTIMIZER" >>"$out/README.md"
fi
stage done
